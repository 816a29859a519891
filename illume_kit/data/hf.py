"""The task kinds read from a Hugging Face ``datasets`` folder or parquet files on disk.

``params.path`` is a folder written by ``Dataset.save_to_disk``, a ``.parquet`` file, a folder of
them or a glob. The folder is memory-mapped as it is; parquet files are converted once into
``datasets``' own Arrow cache (``HF_DATASETS_CACHE``, default ``~/.cache/huggingface/datasets``)
and memory-mapped from there, so a dataset larger than memory reads row by row. Nothing is fetched
from the network: only local files are named.

Each row is a record (the columns by name, mapped by role in ``params.fields``) read by the task
kind's reader (``illume_kit.data.records``). An image column holds a ``datasets.Image()`` value
(``{"bytes", "path"}``: the bytes, or a path when no bytes are stored), raw bytes, or a path
relative to ``image_root``. Rows are read undecoded (Arrow values), and images are decoded one item
at a time with the pixel budget of ``illume_kit.data.images``. Every row of the chosen split is
checked when the dataset is built (its fields, its conversation, its images' headers and
checksums), so a bad row stops the run before training starts with a message naming the file and
row; ``skip_bad: N`` goes past at most N of them. The dataset keeps only the kept rows' numbers, so
its memory does not grow with the rows' contents. Splits are assigned by the crc32 of the row's
``id`` column when there is one, else of the row's values (image bytes by their crc32).
"""

from __future__ import annotations

import glob
import io
import json
import os
import warnings
import zlib
from bisect import bisect_right
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from illume_kit.data.folder import _split_of
from illume_kit.data.images import load_rgb, open_image
from illume_kit.data.records import READERS, BadRecord, Unusable

__all__ = ["BadRecord", "HFTaskDataset", "quiet_datasets", "row_id"]

ID_COLUMN = "id"
BATCH = 64  # rows read at once while checking: a bounded slice of the data in memory


def row_id(rec: dict[str, Any]) -> str:
    """The text a row's split is drawn from: its ``id`` column, else its values as JSON."""
    if ID_COLUMN in rec and rec[ID_COLUMN] is not None:
        return str(rec[ID_COLUMN])
    return json.dumps(rec, sort_keys=True, default=_digest)


def _digest(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"crc32:{zlib.crc32(value):08x}"
    return repr(value)


def _describe(ref: Any) -> str:
    if isinstance(ref, dict):
        name = ref.get("path")
        return repr(name) if name else "(bytes)"
    if isinstance(ref, (bytes, bytearray)):
        return "(bytes)"
    return repr(ref)


class HFTaskDataset(Dataset):
    """One task kind (``conversations``, ``captions``, ``edits``) over a datasets folder or parquet files."""

    def __init__(self, kind: str, params: Any):
        self.kind, self.params = kind, params
        p = params
        self.reader = READERS[kind](p)
        self.path = str(Path(p.path).expanduser())
        self.data, self.files, self.starts = self._open()
        default_root = Path(self.path) if Path(self.path).is_dir() else Path(self.files[0]).parent
        self.root = Path(p.image_root).expanduser() if p.image_root else default_root
        if p.image_root and not self.root.is_dir():
            raise FileNotFoundError(f"{kind}: image_root {str(self.root)!r} does not exist")
        self._check_columns()
        rows = self._split_rows()
        if p.num_samples is not None and p.num_samples < len(rows):
            keep = np.random.default_rng(p.seed).choice(len(rows), p.num_samples, replace=False)
            rows = rows[np.sort(keep)]
        kept: list[int] = []
        bad: list[str] = []
        left_out: dict[str, int] = {}
        for n, rec in self._records(rows):
            where = self._where(n)
            try:
                self.reader.entry(rec, where, lambda ref, w=where: self._check(ref, w))
                kept.append(n)
            except Unusable as u:
                left_out[u.reason] = left_out.get(u.reason, 0) + 1
            except BadRecord as e:
                bad.append(str(e))
                if len(bad) > p.skip_bad:
                    more = f" (bad record {len(bad)}, past skip_bad={p.skip_bad})" if p.skip_bad else ""
                    raise BadRecord(f"{e}{more}") from None
        if bad:
            warnings.warn(
                f"{kind}: {self.path}: skipped {len(bad)} bad record(s) (skip_bad={p.skip_bad}); first: {bad[0]}",
                stacklevel=2,
            )
        if left_out:
            counts = ", ".join(f"{k} {reason}" for reason, k in sorted(left_out.items()))
            warnings.warn(
                f"{kind}: {self.path}: left out {counts} (the mllm stage trains image tasks only)", stacklevel=2
            )
        self.rows = np.asarray(kept, dtype=np.int64)
        self.bad, self.left_out = len(bad), left_out
        if not len(self.rows):
            raise ValueError(
                f"{kind}: split {p.split!r} of {self.path!r} has no usable records "
                f"({len(rows)} rows in it; val_fraction={p.val_fraction}, test_fraction={p.test_fraction}: "
                "set data.params.val_fraction or test_fraction to hold records out for evaluation)"
            )

    # -- opening ---------------------------------------------------------------------------------
    def _open(self):
        """The rows as one ``datasets.Dataset`` in Arrow format (undecoded), the files it came from
        and the first row of each."""
        path = self.path
        folder = Path(path)
        if folder.is_dir() and (folder / "dataset_dict.json").is_file():
            splits = sorted(x.name for x in folder.iterdir() if (x / "state.json").is_file())
            raise ValueError(
                f"{self.kind}: {path} holds several splits (a DatasetDict: {', '.join(splits)}); "
                f"point data.params.path at one of them, e.g. {folder / (splits[0] if splits else 'train')}"
            )
        if folder.is_dir() and (folder / "state.json").is_file():
            ds = self._load(lambda: _datasets().load_from_disk(path), path)
            return ds.with_format("arrow"), [path], [0]
        if folder.is_dir():
            files = sorted(str(f) for f in folder.rglob("*.parquet"))
            if not files:
                raise FileNotFoundError(
                    f"{self.kind}: {path} is neither a datasets folder (written by save_to_disk: it has no "
                    "state.json) nor a folder of .parquet files"
                )
        elif folder.is_file():
            files = [path]
        elif glob.has_magic(path):
            files = sorted(glob.glob(path, recursive=True))
            if not files:
                raise FileNotFoundError(f"{self.kind}: no file matches {path!r}")
        else:
            raise FileNotFoundError(
                f"{self.kind}: {path!r} does not exist (expected a datasets folder, a .parquet file, a folder "
                "of them or a glob)"
            )
        cache = os.environ.get("HF_DATASETS_CACHE") or None
        parts = [
            self._load(lambda f=f: _datasets().Dataset.from_parquet(f, cache_dir=cache, keep_in_memory=False), f)
            for f in files
        ]
        schemas = {tuple(d.column_names) for d in parts}
        if len(schemas) > 1:
            raise ValueError(
                f"{self.kind}: {path}: the parquet files have different columns: "
                + "; ".join(f"{f}: {', '.join(d.column_names)}" for f, d in zip(files, parts))
            )
        starts = list(np.cumsum([0] + [len(d) for d in parts[:-1]]).tolist())
        ds = parts[0] if len(parts) == 1 else _datasets().concatenate_datasets(parts)
        return ds.with_format("arrow"), files, starts

    def _load(self, fn, name: str):
        try:
            with quiet_datasets():
                return fn()
        except (OSError, ValueError) as e:  # a damaged or foreign file: arrow and datasets raise these
            raise ValueError(f"{self.kind}: {name}: cannot be read as a datasets folder or parquet ({e})") from None

    def _check_columns(self) -> None:
        columns = self.data.column_names
        for role in type(self.params.fields).model_fields:
            key = self.reader.key(role)
            if key not in columns:
                raise BadRecord(
                    f"{self.kind}: {self.path}: no column {key!r} (fields.{role}); its columns: {', '.join(columns)}"
                )

    def _where(self, n: int) -> str:
        part = bisect_right(self.starts, n) - 1
        return f"{self.kind}: {self.files[part]} row {n - self.starts[part]}"

    def _split_rows(self) -> np.ndarray:
        p = self.params
        if not p.val_fraction and not p.test_fraction:
            return np.arange(len(self.data), dtype=np.int64) if p.split == "train" else np.zeros(0, np.int64)
        columns = [ID_COLUMN] if ID_COLUMN in self.data.column_names else None
        rows = []
        for start in range(0, len(self.data), BATCH):
            batch = self.data[start : start + BATCH]
            recs = (batch.select(columns) if columns else batch).to_pylist()
            rows += [
                start + i
                for i, rec in enumerate(recs)
                if _split_of(row_id(rec), p.val_fraction, p.test_fraction) == p.split
            ]
        return np.asarray(rows, dtype=np.int64)

    def _records(self, rows: np.ndarray):
        """(row, record) for ``rows`` (sorted), read a batch at a time."""
        for start in range(0, len(rows), BATCH):
            chunk = rows[start : start + BATCH]
            lo, hi = int(chunk[0]), int(chunk[-1]) + 1
            if hi - lo <= 4 * len(chunk):  # nearly contiguous: one slice
                recs = self.data[lo:hi].to_pylist()
                yield from ((int(n), recs[int(n) - lo]) for n in chunk)
            else:
                yield from ((int(n), self._record(int(n))) for n in chunk)

    def _record(self, n: int) -> dict[str, Any]:
        return self.data[n : n + 1].to_pylist()[0]

    # -- images ----------------------------------------------------------------------------------
    def _resolve(self, ref: Any, where: str) -> tuple[bytes | None, Path | None]:
        """The bytes or the file of an image value, or BadRecord."""
        if isinstance(ref, dict) and ("bytes" in ref or "path" in ref):
            if ref.get("bytes") is not None:
                return bytes(ref["bytes"]), None
            ref = ref.get("path")
        if isinstance(ref, (bytes, bytearray, memoryview)):
            return bytes(ref), None
        if not isinstance(ref, str) or not ref.strip():
            raise BadRecord(f"{where}: image {ref!r} is neither image bytes nor a path (relative to image_root)"[:400])
        path = self.root / ref
        if not path.is_file():
            raise BadRecord(f"{where}: image {ref!r} not found (looked for {path})")
        return None, path

    def _check(self, ref: Any, where: str) -> Any:
        data, path = self._resolve(ref, where)
        name = _describe(ref)
        try:
            with open_image(path) if path is not None else open_image(io.BytesIO(data), name=name) as img:
                img.verify()  # structure and checksums, without decoding the pixels
        except ValueError as e:
            raise BadRecord(f"{where}: image {name} is unreadable: {e}") from None
        except Exception as e:  # PIL's verify raises several kinds for damaged data
            raise BadRecord(f"{where}: image {name} is corrupt ({type(e).__name__}: {e})") from None
        return ref

    def _load_image(self, ref: Any, where: str):
        data, path = self._resolve(ref, where)
        try:
            return load_rgb(path) if path is not None else load_rgb(io.BytesIO(data), name=_describe(ref))
        except ValueError as e:
            raise BadRecord(f"{where}: image {_describe(ref)}: {e}") from None

    # -- serving ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    def size_of(self, index: int) -> tuple[int, int]:
        return (self.params.image_size, self.params.image_size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = int(self.rows[index])
        where = self._where(n)
        entry = self.reader.entry(self._record(n), where, lambda ref: ref)
        item = self.reader.item(entry, where, lambda ref: self._load_image(ref, where))
        part = bisect_right(self.starts, n) - 1
        row = n - self.starts[part]
        # "file" names the sample (as a stream's SHARD:KEY does), "row" its row in that file
        return {**item, "file": f"{self.files[part]}:{row}", "row": row}


def _datasets():
    import datasets

    return datasets


@contextmanager
def quiet_datasets():
    """``datasets`` without its progress bars (a stage prints its own progress)."""
    dsets = _datasets()
    shown = dsets.is_progress_bar_enabled()
    dsets.disable_progress_bars()
    try:
        yield dsets
    finally:
        if shown:
            dsets.enable_progress_bars()
