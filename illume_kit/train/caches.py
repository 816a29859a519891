"""Bounded training caches: dataset items (``cache_data``) and a frozen tokenizer's outputs (``cache_codes``).

Both stay on while the whole training split should fit their recipe-set budget (``cache_data_mb``,
``cache_codes_mb``), estimated before training from the split's length and its first item; a split
over budget, or one that streams, is not cached, and the stage says so in one line. A cache only
keeps what the uncached path computes, so it changes how fast a stage trains, never what.
"""

from __future__ import annotations

from typing import Any

import torch

from illume_kit.model.sequence import EncodeCache, encode_images

MIB = 1 << 20


def size_text(n: float) -> str:
    """``n`` bytes in words: KiB below a MiB, MiB above."""
    return f"{n / 1024:.1f} KiB" if n < MIB else f"{n / MIB:.0f} MiB"


def tensor_bytes(item: Any) -> int:
    """The bytes of the tensors in ``item`` (a tensor, or dicts, lists and tuples of them); the rest counts 0."""
    if isinstance(item, torch.Tensor):
        return item.numel() * item.element_size()
    if isinstance(item, dict):
        return sum(tensor_bytes(v) for v in item.values())
    if isinstance(item, (list, tuple)):
        return sum(tensor_bytes(v) for v in item)
    return 0


class CachedDataset:
    """Keeps items once built: procedural data is rendered once per item, not once per epoch.

    ``max_bytes`` bounds the tensor bytes kept (``tensor_bytes``); once an item would pass it, items are
    built as usual but not kept. A kept item is the one the dataset built, so caching never changes
    what trains."""

    _OWN = frozenset({"dataset", "_items", "max_bytes", "bytes", "hits", "misses"})

    def __init__(self, dataset, max_bytes: int | None = None) -> None:
        self.dataset = dataset
        self._items: dict[int, Any] = {}
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        self.bytes = self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self._items.get(index)
        if item is not None:
            self.hits += 1
            return item
        self.misses += 1
        item = self.dataset[index]
        size = tensor_bytes(item)
        if self.max_bytes is None or self.bytes + size <= self.max_bytes:
            self._items[index] = item
            self.bytes += size
        return item

    def __getattr__(self, name: str):
        if name in CachedDataset._OWN:
            raise AttributeError(name)
        return getattr(self.dataset, name)


def streams(data: Any) -> bool:
    """Whether ``data`` has no random access by index (an iterable dataset), so there is nothing to keep."""
    from torch.utils.data import IterableDataset

    return isinstance(data, IterableDataset) or not (hasattr(data, "__len__") and hasattr(data, "__getitem__"))


def cached_split(data, budget_mb: float, what: str) -> tuple[Any, str | None]:
    """``data`` in a ``CachedDataset`` of ``budget_mb`` MiB when the whole split should fit, else ``data``
    itself and a one-line notice why. The estimate is the split's length x its first item's tensor bytes;
    a dataset without ``len`` and random access (a stream) is not cached."""
    if streams(data):
        return data, f"{what}: cache_data is off: the training split streams (no random access to cache)"
    budget = int(budget_mb * MIB)
    n = len(data)
    one = tensor_bytes(data[0]) if n else 0
    if n * one > budget:
        return data, (
            f"{what}: cache_data is off: the training split needs about {size_text(n * one)} ({n} items x "
            f"{size_text(one)}), over cache_data_mb={budget_mb:g}; raise cache_data_mb to cache it"
        )
    return CachedDataset(data, budget), None


def _images_of(item: Any) -> list[torch.Tensor]:
    """The (3, H, W) images in a dataset item (its image, an edit's target), which the task mix encodes."""
    if isinstance(item, torch.Tensor):
        return [item] if item.dim() == 3 and item.shape[0] == 3 else []
    if isinstance(item, dict):
        return [im for v in item.values() for im in _images_of(v)]
    if isinstance(item, (list, tuple)):
        return [im for v in item for im in _images_of(v)]
    return []


def code_cache(model, data, keep_features: bool, budget_mb: float, what: str) -> tuple[EncodeCache | None, str | None]:
    """An ``EncodeCache`` of ``budget_mb`` MiB when the codes (and features) of every image of ``data``
    should fit, else None and a one-line notice why. The estimate is the split's length x the images of
    its first item x the bytes one image's entry holds, from encoding that image once outside any cache
    (no gradients, the random state left as it was), so the estimate changes nothing that trains."""
    if streams(data):
        return None, f"{what}: cache_codes is off: the training split streams, so each image is met about once"
    n = len(data)
    images = _images_of(data[0]) if n else []
    one = 0
    if any(p.is_meta for p in model.tokenizer.parameters()):
        # parallelism.meta_init: this rank's weights arrive after sharding; the cache's byte budget
        # still bounds it, and rank 0, which holds real weights, reports the estimate
        return EncodeCache(keep_features=keep_features, max_bytes=int(budget_mb * MIB)), None
    if images:
        cache, model.encode_cache = getattr(model, "encode_cache", None), None
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
                entry = encode_images(model, images[:1], need_features=keep_features)[0]
        finally:
            model.encode_cache = cache
        parts = ("codes", "features") if keep_features else ("codes",)
        one = sum(t.numel() * t.element_size() for p in parts for t in entry[p].values())
    need = n * len(images) * one
    budget = int(budget_mb * MIB)
    if need > budget:
        return None, (
            f"{what}: cache_codes is off: the split's {n * len(images)} images need about {size_text(need)} "
            f"of {'codes and features' if keep_features else 'codes'} ({size_text(one)} each), over "
            f"cache_codes_mb={budget_mb:g}; raise cache_codes_mb to cache them"
        )
    return EncodeCache(keep_features=keep_features, max_bytes=budget), None
