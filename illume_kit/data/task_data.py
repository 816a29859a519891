"""The registered task datasets: one name per task kind, the storage chosen by ``params.format``.

``conversations``, ``captions`` and ``edits`` read the same records (``illume_kit.data.records``)
from a jsonl file and an image root (map-style), tar shards (``webdataset``: an iterable stream) or a
Hugging Face ``datasets`` folder / parquet files (map-style, memory-mapped).
"""

from __future__ import annotations

from typing import Any


def _build(kind: str, params: Any):
    if params.format == "jsonl":
        from illume_kit.data import jsonl

        cls = {
            "conversations": jsonl.ConversationsDataset,
            "captions": jsonl.CaptionsDataset,
            "edits": jsonl.EditsDataset,
        }
        return cls[kind](params)
    if params.format == "hf":
        from illume_kit.data.hf import HFTaskDataset

        return HFTaskDataset(kind, params)
    if params.format == "webdataset":
        from illume_kit.data.stream import ShardTaskStream

        return ShardTaskStream(kind, params)
    raise ValueError(f"{kind}: format {params.format!r}: expected jsonl, webdataset or hf")


def conversations(params: Any):
    """LLaVA/ILLUME+-style conversations: image question-answer pairs (understanding)."""
    return _build("conversations", params)


def captions(params: Any):
    """Image-caption pairs (text-to-image)."""
    return _build("captions", params)


def edits(params: Any):
    """Source image, target image, instruction (editing)."""
    return _build("edits", params)
