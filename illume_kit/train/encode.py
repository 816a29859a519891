"""Pre-compute a frozen tokenizer's outputs for a dataset into a code store (``illume-kit encode``).

Every (3, H, W) image of the dataset's items (an item's image, an edit's target) is encoded once and
kept under its content key, so an mllm stage with the option ``codes`` reads them instead of running
the tokenizer (``illume_kit.model.code_store``). The store's manifest records the tokenizer's weights
hash, the dataset section, the split, the image sizes and the shards.

Resumable: shards are written whole and renamed into place, then the manifest; a writer started again
on the same folder keeps every complete shard (listed in the manifest or not) and encodes only the
images they lack. Images are encoded ``batch_size`` at a time per size; 1 (the default) encodes each
alone, as the stage's code cache does, so a stage reading the store trains the very numbers it would
have encoded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from illume_kit.core.atomic import atomic_write_bytes, atomic_write_text, remove_stale_temps
from illume_kit.model.code_store import (
    FEATURE_DTYPES,
    FORMAT,
    MANIFEST,
    SHARD,
    VERSION,
    CodeStoreError,
    _keys_of,
    feature_source,
    read_store_manifest,
    shard_name,
    tensor_name,
    weights_sha256,
)
from illume_kit.model.sequence import EncodeCache, encode_images
from illume_kit.train.caches import _images_of

# what a resumed encode must share with the store it continues
SAME = ("tokenizer", "input_encoder", "features", "data", "split")


class Progress:
    """What ``encode_store`` reports while it runs; the CLI draws a bar from it."""

    def start(self, total: int | None, done_images: int) -> None:
        """The pass starts: ``total`` items (None: a stream of unknown length); the store already holds
        ``done_images`` images."""

    def advance(self, items: int, encoded: int, kept: int) -> None:
        """``items`` more items read; ``encoded`` images encoded so far in this pass, ``kept`` in the store."""

    def close(self) -> None:
        """The pass ended (finished or not)."""


def _iter_items(data: Any, limit: int | None, workers: int) -> Iterable[Any]:
    """The dataset's items in order (a stream: as it yields them), at most ``limit``; ``workers`` > 0
    decodes them in a DataLoader's worker processes."""
    if workers > 0:
        from torch.utils.data import DataLoader

        it: Iterable[Any] = DataLoader(data, batch_size=None, shuffle=False, num_workers=workers)
    elif hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        it = (data[i] for i in range(len(data)))
    else:
        it = iter(data)
    for n, item in enumerate(it):
        if limit is not None and n >= limit:
            return
        yield item


def _existing_shards(out: Path) -> dict[int, tuple[Path, set[bytes]]]:
    """Every complete shard in ``out`` (a killed writer's temporaries never carry a shard's name)."""
    found = {}
    for p in sorted(out.iterdir()):
        m = SHARD.match(p.name)
        if m and p.is_file():
            found[int(m.group(1))] = (p, _keys_of(p))
    return found


def check_store_folder(out: Path) -> dict | None:
    """The manifest of the store ``out`` holds (None: a new or empty folder); ``CodeStoreError`` for a
    folder of other files."""
    if not (out.is_dir() and any(out.iterdir())):
        return None
    if not (out / MANIFEST).is_file():
        raise CodeStoreError(
            f"-o {out}: a folder with files but no {MANIFEST}, so not a code store: pick an empty or new folder"
        )
    return read_store_manifest(out)


def _check_same(out: Path, old: dict, new: dict) -> None:
    for key in SAME:
        if old.get(key) != new.get(key):
            raise CodeStoreError(
                f"-o {out}: holds codes of another {key.replace('_', ' ')} ({json.dumps(old.get(key))}; this "
                f"encode: {json.dumps(new.get(key))}); a store continues only the encode that started it: "
                "pick another folder, or remove this one to start over"
            )


def encode_store(
    model: Any,
    data: Any,
    out: str | Path,
    *,
    tokenizer_name: str,
    data_section: dict,
    split: str,
    source: str,
    features: str | None = None,
    batch_size: int = 1,
    shard_size: int = 256,
    limit: int | None = None,
    workers: int = 0,
    progress: Progress | None = None,
    stop_after_shards: int | None = None,
) -> dict:
    """Encode every image of ``data`` with ``model``'s tokenizer into the store at ``out``; returns the
    manifest. ``features`` ("bf16" or "fp32") keeps the continuous features too (the input encoder's,
    when the model has its own). ``limit`` reads at most that many items; the store is complete only
    when the whole dataset was read. ``stop_after_shards`` stops once that many shards are written in
    this pass (what a killed encode leaves, for tests)."""
    if features is not None and features not in FEATURE_DTYPES:
        raise ValueError(f"features dtype {features!r}: valid are {', '.join(FEATURE_DTYPES)}")
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size} and {shard_size}")
    out = Path(out)
    progress = progress or Progress()
    encoder = feature_source(model) if features else None
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "tokenizer": {"name": tokenizer_name, "sha256": weights_sha256(model.tokenizer)},
        "input_encoder": {"sha256": weights_sha256(encoder)} if encoder is not None else None,
        "features": features,
        "data": data_section,
        "split": split,
        "source": source,
        "levels": [cb.name for cb in model.tokenizer.codebooks],
    }
    old = check_store_folder(out)
    if old is not None:
        _check_same(out, old, manifest)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out, depth=1)
    shards = _existing_shards(out)
    have: set[bytes] = set().union(*(keys for _, keys in shards.values()))
    sizes = {(int(h), int(w)) for h, w in (old or {}).get("image_sizes", [])}
    records = [{"file": p.name, "images": len(keys)} for _, (p, keys) in sorted(shards.items())]
    next_index = max(shards, default=-1) + 1
    dtype = FEATURE_DTYPES.get(features) if features else None

    def write_manifest(complete: bool, items: int) -> None:
        manifest.update(
            images=sum(r["images"] for r in records),
            items=items,
            complete=complete,
            image_sizes=sorted([list(s) for s in sizes]),
            shards=records,
        )
        atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")

    buffer: dict[str, torch.Tensor] = {}
    in_buffer = 0
    pending: list[tuple[bytes, torch.Tensor]] = []
    written = encoded = items = 0
    stopped = False

    def flush_shard() -> None:
        nonlocal buffer, in_buffer, next_index, written
        from safetensors.torch import save

        if not in_buffer:
            return
        name = shard_name(next_index)
        atomic_write_bytes(out / name, save(buffer, metadata={"format": FORMAT}))
        records.append({"file": name, "images": in_buffer})
        next_index += 1
        written += 1
        buffer, in_buffer = {}, 0
        write_manifest(False, items)

    def encode_pending() -> None:
        nonlocal in_buffer, encoded
        if not pending:
            return
        entries = encode_images(model, [im for _, im in pending], need_features=features is not None)
        for (key, _), entry in zip(pending, entries):
            for lv, v in entry["codes"].items():
                buffer[tensor_name(key, "codes", lv)] = v.detach().cpu().contiguous().clone()
            if dtype is not None:
                for lv, v in entry["features"].items():
                    buffer[tensor_name(key, "features", lv)] = v.detach().to("cpu", dtype).contiguous().clone()
            in_buffer += 1
            encoded += 1
        pending.clear()

    saved = getattr(model, "encode_cache", None), getattr(model, "code_store", None)
    model.encode_cache = model.code_store = None  # every image from the tokenizer itself
    length = len(data) if hasattr(data, "__len__") else None
    total = length if limit is None else min(limit, length) if length is not None else limit
    # the manifest comes first: no shard is ever on disk without one saying whose codes it holds
    write_manifest(bool(old and old.get("complete")), int((old or {}).get("items", 0)))
    progress.start(total, len(have))
    try:
        with torch.no_grad():
            for item in _iter_items(data, limit, workers):
                items += 1
                for im in _images_of(item):
                    key = EncodeCache.key(im)
                    if key in have:
                        continue
                    have.add(key)
                    sizes.add((int(im.shape[-2]), int(im.shape[-1])))
                    pending.append((key, im))
                    if len(pending) >= batch_size:
                        encode_pending()
                    if in_buffer + len(pending) >= shard_size:
                        encode_pending()
                        flush_shard()
                        if stop_after_shards is not None and written >= stop_after_shards:
                            stopped = True
                            break
                progress.advance(1, encoded, len(have) - len(pending) - in_buffer)
                if stopped:
                    break
            if not stopped:
                encode_pending()
                flush_shard()
                write_manifest(limit is None or (length is not None and items >= length), items)
    finally:
        model.encode_cache, model.code_store = saved
        progress.close()
    return manifest
