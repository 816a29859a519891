"""Any-size batching: batches that never mix image sizes, and a collate that keeps metadata.

ILLUME+ trains its tokenizer at native aspect ratios by bucketing images by (H, W)
(``ImageResolutionGroupedSampler``). Here ``SizeGroupedBatchSampler`` groups indices by the size a
dataset reports (``dataset.size_of(i)``, cheap: no decoding), shuffles inside each size, cuts
batches, then shuffles the batch order; seeded and epoch-aware (``set_epoch``), and shards batches
over DistributedDataParallel ranks. ``collate`` stacks tensors and keeps strings, QA lists and
attribute dicts as lists, so the shapes world's ground truth survives batching.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from illume_kit.core.protocols import ReportsSizes


def dataset_sizes(dataset: Dataset) -> list[tuple[int, int]]:
    """(H, W) per item: ``dataset.size_of(i)`` when provided, else by loading each item."""
    if isinstance(dataset, ReportsSizes):
        return [tuple(dataset.size_of(i)) for i in range(len(dataset))]
    return [tuple(dataset[i]["image"].shape[-2:]) for i in range(len(dataset))]


class SizeGroupedBatchSampler(Sampler[list[int]]):
    """Yields lists of indices whose images all have one size.

    With ``num_replicas > 1`` each rank gets every ``num_replicas``-th batch of the same global
    order (the order is truncated to a multiple of ``num_replicas`` so every rank runs equally many
    steps).
    """

    def __init__(
        self,
        sizes: Sequence[tuple[int, int]],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} out of range for num_replicas {num_replicas}")
        self.groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, s in enumerate(sizes):
            self.groups[tuple(s)].append(i)
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.num_replicas, self.rank, self.epoch = num_replicas, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = random.Random(f"{self.seed}/{self.epoch}")
        batches = []
        for size in sorted(self.groups):
            idx = list(self.groups[size])
            if self.shuffle:
                rng.shuffle(idx)
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                if len(chunk) == self.batch_size or not self.drop_last:
                    batches.append(chunk)
        if self.shuffle:
            rng.shuffle(batches)
        usable = len(batches) - len(batches) % self.num_replicas
        return batches[:usable][self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


def _has_tensor(d: dict) -> bool:
    return any(isinstance(v, torch.Tensor) for v in d.values())


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors (same shape required), ints/floats -> tensors, recurse into dicts holding
    tensors (``edit``); everything else (captions, QA lists, attributes) stays a list."""
    out: dict[str, Any] = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        first = vals[0]
        if isinstance(first, torch.Tensor):
            shapes = {tuple(v.shape) for v in vals}
            if len(shapes) > 1:
                raise ValueError(
                    f"collate: {key!r} mixes shapes {sorted(shapes)}; batch by size with SizeGroupedBatchSampler"
                )
            out[key] = torch.stack(vals)
        elif isinstance(first, dict) and _has_tensor(first):
            out[key] = collate(vals)
        elif isinstance(first, (int, float)) and not isinstance(first, bool):
            out[key] = torch.tensor(vals)
        else:
            out[key] = vals
    return out


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
    num_workers: int = 0,
    num_replicas: int = 1,
    rank: int = 0,
) -> DataLoader:
    """A DataLoader over size-homogeneous batches with ``collate``."""
    sampler = SizeGroupedBatchSampler(dataset_sizes(dataset), batch_size, shuffle, seed, drop_last, num_replicas, rank)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers)
