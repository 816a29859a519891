"""Real data for the three tasks of a unified model, read from a JSON-lines file and an image root.

The task kinds (``conversations``, ``captions``, ``edits``: their record keys, checks and items) are
``illume_kit.data.records``; this module is the jsonl source: record keys are mapped by role in
``params.fields``, image paths are relative to ``image_root``. Every record of the chosen split is
checked when the dataset is built (its fields, its conversation, its image files exist and their
headers read), so a bad record stops the run before training starts, with a message naming the file
and line; ``skip_bad: N`` goes past at most N of them and counts them in one warning. Images are
sized as ``params.sizing`` says (``illume_kit.data.records``); the first image's header size is kept
at check time, so ``size_of`` reports the served size without decoding. Splits are assigned by the
crc32 of each line's text, as image-folder does with file names.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from illume_kit.data.folder import _split_of
from illume_kit.data.images import load_rgb, open_image
from illume_kit.data.params import CaptionsParams, ConversationsParams, EditsParams, JsonlParams
from illume_kit.data.records import READERS, BadRecord, Unusable

__all__ = ["BadRecord", "CaptionsDataset", "ConversationsDataset", "EditsDataset", "JsonlDataset", "Unusable"]


class JsonlDataset(Dataset):
    """A jsonl file and image root read, checked and split; a subclass names its task kind (``records.READERS``)."""

    kind = "jsonl"
    Params = JsonlParams

    def __init__(self, params: JsonlParams):
        self.params = p = params
        self.reader = READERS[self.kind](p)
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

    def _image(self, rel: Any, n: int, sizes: list | None = None) -> str:
        if not isinstance(rel, str):
            raise BadRecord(f"{self._where(n)}: image {rel!r} is not a path (relative to image_root)")
        path = self.root / rel
        if not path.is_file():
            raise BadRecord(f"{self._where(n)}: image {rel!r} not found (looked for {path})")
        try:
            with open_image(path) as img:
                if sizes is not None:
                    sizes.append((img.height, img.width))  # the header's: what size_of serves from
                img.verify()  # structure and checksums, without decoding the pixels
        except ValueError as e:
            raise BadRecord(f"{self._where(n)}: image {rel!r} is unreadable: {e}") from None
        except Exception as e:  # PIL's verify raises several kinds for a damaged file
            raise BadRecord(f"{self._where(n)}: image {rel!r} is corrupt ({type(e).__name__}: {e})") from None
        return rel

    def _entry(self, rec: dict[str, Any], n: int) -> dict[str, Any]:
        sizes: list[tuple[int, int]] = []
        entry = self.reader.entry(rec, self._where(n), lambda rel: self._image(rel, n, sizes))
        # the first image checked is the item's image (an edit's source): it decides the served size
        return {**entry, "size": self.reader.size(*sizes[0])}

    # -- serving ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    def size_of(self, index: int) -> tuple[int, int]:
        """(H, W) item ``index`` is served at, from the header read when it was checked."""
        return self.entries[index]["size"]

    def task_counts(self) -> dict[str, dict[str, int]]:
        return {self.kind: {self.reader.task: len(self.entries)}}

    def _load(self, rel: str, n: int):
        try:
            return load_rgb(self.root / rel)
        except ValueError as e:
            raise BadRecord(f"{self._where(n)}: image {rel!r}: {e}") from None

    def __getitem__(self, index: int) -> dict[str, Any]:
        e = self.entries[index]
        n = e["line"]
        item = self.reader.item(e, self._where(n), lambda rel: self._load(rel, n))
        first = e["image"] if "image" in e else e["source"]
        return {**item, "file": first, "line": n}


class ConversationsDataset(JsonlDataset):
    """Items: ``image`` (3,H,W) in [0,1], ``qa`` [(question, answer), ...], ``file``, ``line``."""

    kind = "conversations"
    Params = ConversationsParams


class CaptionsDataset(JsonlDataset):
    """Items: ``image`` (3,H,W) in [0,1], ``caption``, ``file``, ``line``."""

    kind = "captions"
    Params = CaptionsParams


class EditsDataset(JsonlDataset):
    """Items: ``image`` (the source), ``edit`` {``instruction``, ``image`` (the target)}, ``file``, ``line``."""

    kind = "edits"
    Params = EditsParams
