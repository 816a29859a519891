"""Real data for the three tasks of a unified model, read from a JSON-lines file and an image root.

- ``conversations``: LLaVA/ILLUME+-style records ``{"image": "rel/path.jpg", "conversations":
  [{"from": "human", "value": "<image>\\nWhat is ...?"}, {"from": "gpt", "value": "..."}, ...]}``;
  items carry ``image`` and ``qa`` (the human/gpt turn pairs, ``<image>`` removed). The ``mllm``
  stage trains image tasks only, so records without an image (text-only) and records with several
  images are left out, counted in one warning.
- ``captions``: ``{"image": ..., "caption": ...}``; items carry ``image`` and ``caption``.
- ``edits``: ``{"source": ..., "target": ..., "instruction": ...}``; items carry ``image`` (the
  source) and ``edit`` (``instruction`` and the target ``image``).

Record keys are mapped by role in ``params.fields``. Every record of the chosen split is checked when
the dataset is built (its fields, its conversation, its image files exist and their headers read), so
a bad record stops the run before training starts, with a message naming the file and line;
``skip_bad: N`` goes past at most N of them and counts them in one warning. Images are resized to
cover ``image_size`` squared and center-cropped. Splits are assigned by the crc32 of each line's
text, as image-folder does with file names.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from illume_kit.data.folder import _split_of, resize_crop
from illume_kit.data.images import load_rgb, open_image
from illume_kit.data.params import CaptionsParams, ConversationsParams, EditsParams, JsonlParams
from illume_kit.data.shapes import to_tensor

IMAGE_TOKEN = "<image>"
HUMAN = ("human", "user")
ASSISTANT = ("gpt", "assistant")


class BadRecord(ValueError):
    """A record that cannot become an item: its message names the file and line."""


class Unusable(Exception):
    """A well-formed record the ``mllm`` stage has no task for (text-only, several images)."""

    def __init__(self, reason: str):
        self.reason = reason


class JsonlDataset(Dataset):
    """Shared reading, checking, splitting and image loading; subclasses turn a record into an entry."""

    kind = "jsonl"
    Params = JsonlParams

    def __init__(self, params: JsonlParams):
        self.params = p = params
        self.file = Path(p.path).expanduser()
        if not self.file.is_file():
            raise FileNotFoundError(f"{self.kind}: records file {str(self.file)!r} does not exist")
        self.root = Path(p.image_root).expanduser() if p.image_root else self.file.parent
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.kind}: image_root {str(self.root)!r} does not exist")
        lines = [
            (n, line)
            for n, line in enumerate(self.file.read_text(encoding="utf-8").splitlines(), 1)
            if line.strip() and _split_of(line.strip(), p.val_fraction, p.test_fraction) == p.split
        ]
        if p.num_samples is not None and p.num_samples < len(lines):
            keep = np.random.default_rng(p.seed).choice(len(lines), p.num_samples, replace=False)
            lines = [lines[i] for i in sorted(keep)]
        self.entries: list[dict[str, Any]] = []
        bad: list[str] = []
        left_out: dict[str, int] = {}
        for n, line in lines:
            try:
                self.entries.append({**self._entry(self._record(line, n), n), "line": n})
            except Unusable as u:
                left_out[u.reason] = left_out.get(u.reason, 0) + 1
            except BadRecord as e:
                bad.append(str(e))
                if len(bad) > p.skip_bad:
                    more = f" (bad record {len(bad)}, past skip_bad={p.skip_bad})" if p.skip_bad else ""
                    raise BadRecord(f"{e}{more}") from None
        if bad:
            warnings.warn(
                f"{self.kind}: {self.file}: skipped {len(bad)} bad record(s) (skip_bad={p.skip_bad}); first: {bad[0]}",
                stacklevel=2,
            )
        if left_out:
            counts = ", ".join(f"{k} {reason}" for reason, k in sorted(left_out.items()))
            warnings.warn(
                f"{self.kind}: {self.file}: left out {counts} (the mllm stage trains image tasks only)",
                stacklevel=2,
            )
        self.bad, self.left_out = len(bad), left_out
        if not self.entries:
            raise ValueError(
                f"{self.kind}: split {p.split!r} of {str(self.file)!r} has no usable records "
                f"({len(lines)} lines in it; val_fraction={p.val_fraction}, test_fraction={p.test_fraction}: "
                "set data.params.val_fraction or test_fraction to hold records out for evaluation)"
            )

    # -- checking --------------------------------------------------------------------------------
    def _where(self, n: int) -> str:
        return f"{self.kind}: {self.file}:{n}"

    def _record(self, line: str, n: int) -> dict[str, Any]:
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise BadRecord(f"{self._where(n)}: not a JSON record ({e})") from None
        if not isinstance(rec, dict):
            raise BadRecord(f"{self._where(n)}: expected a JSON object, found {type(rec).__name__}")
        return rec

    def _field(self, rec: dict[str, Any], role: str, n: int, kind: type = str) -> Any:
        key = getattr(self.params.fields, role)
        if key not in rec:
            raise BadRecord(
                f"{self._where(n)}: the record has no {key!r} field (fields.{role}; its keys: {', '.join(sorted(rec))})"
            )
        value = rec[key]
        if not isinstance(value, kind) or (kind is str and not value.strip()):
            raise BadRecord(
                f"{self._where(n)}: field {key!r} (fields.{role}) is {value!r}, expected a non-empty {kind.__name__}"
            )
        return value

    def _image(self, rel: str, n: int) -> str:
        path = self.root / rel
        if not path.is_file():
            raise BadRecord(f"{self._where(n)}: image {rel!r} not found (looked for {path})")
        try:
            with open_image(path) as img:
                img.verify()  # structure and checksums, without decoding the pixels
        except ValueError as e:
            raise BadRecord(f"{self._where(n)}: image {rel!r} is unreadable: {e}") from None
        except Exception as e:  # PIL's verify raises several kinds for a damaged file
            raise BadRecord(f"{self._where(n)}: image {rel!r} is corrupt ({type(e).__name__}: {e})") from None
        return rel

    def _entry(self, rec: dict[str, Any], n: int) -> dict[str, Any]:
        raise NotImplementedError

    # -- serving ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    def size_of(self, index: int) -> tuple[int, int]:
        return (self.params.image_size, self.params.image_size)

    def _load(self, rel: str, n: int):
        try:
            img = load_rgb(self.root / rel)
        except ValueError as e:
            raise BadRecord(f"{self._where(n)}: image {rel!r}: {e}") from None
        return to_tensor(resize_crop(img, self.size_of(0)))


class ConversationsDataset(JsonlDataset):
    """Items: ``image`` (3,H,W) in [0,1], ``qa`` [(question, answer), ...], ``file``, ``line``."""

    kind = "conversations"
    Params = ConversationsParams

    def _entry(self, rec: dict[str, Any], n: int) -> dict[str, Any]:
        turns = self._field(rec, "conversations", n, list)
        key = self.params.fields.image
        image = rec.get(key)
        if isinstance(image, list):
            if len(image) > 1:
                raise Unusable("multi-image record(s)")
            image = image[0] if image else None
        if image is None:
            raise Unusable("text-only record(s)")
        if not isinstance(image, str) or not image.strip():
            raise BadRecord(f"{self._where(n)}: field {key!r} (fields.image) is {image!r}, expected an image path")
        qa, question, marked = [], None, False
        for i, turn in enumerate(turns):
            if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
                raise BadRecord(f"{self._where(n)}: turn {i} is {turn!r}, expected {{'from': ..., 'value': str}}")
            who, text = turn.get("from"), turn["value"]
            if who in HUMAN:
                marked = marked or IMAGE_TOKEN in text
                question = text.replace(IMAGE_TOKEN, "").strip()
            elif who in ASSISTANT:
                if question is None:
                    raise BadRecord(
                        f"{self._where(n)}: turn {i} answers no question (a {who!r} turn after no human turn)"
                    )
                qa.append((question, text.strip()))
                question = None
            elif who != "system":
                raise BadRecord(
                    f"{self._where(n)}: turn {i} is from {who!r}; expected one of {', '.join(HUMAN + ASSISTANT)}, system"
                )
        if not marked:
            raise BadRecord(
                f"{self._where(n)}: an image record whose conversation has no {IMAGE_TOKEN} in a human turn"
            )
        if not qa:
            raise BadRecord(f"{self._where(n)}: the conversation has no human turn followed by an answer")
        return {"image": self._image(image, n), "qa": qa}

    def __getitem__(self, index: int) -> dict[str, Any]:
        e = self.entries[index]
        return {"image": self._load(e["image"], e["line"]), "qa": list(e["qa"]), "file": e["image"], "line": e["line"]}


class CaptionsDataset(JsonlDataset):
    """Items: ``image`` (3,H,W) in [0,1], ``caption``, ``file``, ``line``."""

    kind = "captions"
    Params = CaptionsParams

    def _entry(self, rec: dict[str, Any], n: int) -> dict[str, Any]:
        image, caption = self._field(rec, "image", n), self._field(rec, "caption", n)
        return {"image": self._image(image, n), "caption": caption.strip()}

    def __getitem__(self, index: int) -> dict[str, Any]:
        e = self.entries[index]
        image = self._load(e["image"], e["line"])
        return {"image": image, "caption": e["caption"], "file": e["image"], "line": e["line"]}


class EditsDataset(JsonlDataset):
    """Items: ``image`` (the source), ``edit`` {``instruction``, ``image`` (the target)}, ``file``, ``line``."""

    kind = "edits"
    Params = EditsParams

    def _entry(self, rec: dict[str, Any], n: int) -> dict[str, Any]:
        source, target = self._field(rec, "source", n), self._field(rec, "target", n)
        instruction = self._field(rec, "instruction", n)
        return {"source": self._image(source, n), "target": self._image(target, n), "instruction": instruction.strip()}

    def __getitem__(self, index: int) -> dict[str, Any]:
        e = self.entries[index]
        n = e["line"]
        edit = {"instruction": e["instruction"], "image": self._load(e["target"], n)}
        return {"image": self._load(e["source"], n), "edit": edit, "file": e["source"], "line": n}
