"""What a checkpoint's unified model was trained on: the words of its task texts and its image sizes.

Training writes both with the checkpoint after an ``mllm`` stage: ``vocabulary.json`` (the sorted
words of the task texts the text tokenizer is fitted on) and ``trained_sizes`` in the manifest
(the (H, W) of those items' images). ``illume-kit understand | generate | edit`` read them to warn
when a prompt uses words the model never saw or asks for another size; the model still runs.
Torch-free.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from illume_kit.core.manifest import CheckpointError

VOCABULARY = "vocabulary.json"
TRAINED_SIZES = "trained_sizes"

_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> list[str]:
    """The lower-cased words of ``text`` in order (letters and digits; punctuation splits)."""
    return _WORD.findall(str(text).lower())


def vocabulary_of(texts: Iterable[str]) -> list[str]:
    """The sorted distinct words of ``texts``."""
    return sorted({w for t in texts for w in words(t)})


def vocabulary_json(vocab: Iterable[str]) -> str:
    return json.dumps({"words": sorted(set(vocab))}, indent=0)


def read_vocabulary(folder: str | Path) -> set[str] | None:
    """The words a checkpoint records (``vocabulary.json``), None when it records none."""
    path = Path(folder) / VOCABULARY
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(f'{path} is not valid JSON ({exc}): expected {{"words": ["a", ...]}}') from None
    got = data.get("words") if isinstance(data, dict) else None
    if not isinstance(got, list) or not all(isinstance(w, str) for w in got):
        raise CheckpointError(f'{path}: expected {{"words": ["a", ...]}} (a list of strings under \'words\')')
    return set(got)


def read_trained_sizes(manifest: dict) -> list[tuple[int, int]] | None:
    """The image sizes a checkpoint's manifest records (``trained_sizes``), None when none."""
    got = manifest.get(TRAINED_SIZES) if isinstance(manifest, dict) else None
    if got is None:
        return None
    ok = isinstance(got, list) and all(
        isinstance(s, list) and len(s) == 2 and all(isinstance(v, int) and v > 0 for v in s) for s in got
    )
    if not ok:
        raise CheckpointError(f"manifest '{TRAINED_SIZES}': expected a list of [height, width] pairs, got {got!r}")
    return [(int(h), int(w)) for h, w in got]


def unseen(text: str, vocab: set[str]) -> list[str]:
    """The words of ``text`` not in ``vocab``, each once, in order."""
    return list(dict.fromkeys(w for w in words(text) if w not in vocab))
