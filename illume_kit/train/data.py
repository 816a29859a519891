"""Data order as a pure function of (seed, step): what makes resume exact.

A resumed run must see exactly the batches an uninterrupted run would have seen. Rather than
checkpointing a sampler's internal state, the order is defined over one infinite stream: position
``p`` falls in epoch ``p // N`` whose permutation is drawn from ``seed + epoch``. Step ``s`` on rank
``r`` of ``W`` reads positions ``[(s*W + r) * B, (s*W + r + 1) * B)``, so every step's global batch
is the same whatever the world size splits it into, and ranks never overlap within a step.

A dataset whose items come in more than one size (``ReportsSizes``: ILLUME+'s aspect-ratio buckets,
``sizing: official``) is read in size-grouped batches instead (:class:`SizeBuckets`), still a pure
function of (seed, step): epoch ``e`` shuffles the indices of each size, cuts them into global
batches of ``batch_size * world_size`` (a size's last batch wraps around to its first indices, so
every batch is full and every item is read each epoch), and shuffles the batch order; micro-batch
``m`` reads global batch ``m`` of that endless sequence, rank ``r`` its ``r``-th slice. A batch
never mixes sizes, resume is exact, and a step's global batch is the same however the world size
splits it; unlike the uniform order it changes with ``batch_size * world_size`` (another
``grad_accum_steps`` for the same optimizer batch cuts the epoch into other batches).
"""

from __future__ import annotations

import functools
import math
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler, default_collate

from illume_kit.core.protocols import ReportsSizes

# a loader factory: (start_step, rank, world_size) -> iterator of batches from that step on
LoaderFactory = Callable[[int, int, int], Iterable[Any]]


@functools.lru_cache(maxsize=4)
def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of epoch ``epoch`` (cached: consecutive steps mostly share an epoch)."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g)


def step_indices(
    n: int, batch_size: int, seed: int, step: int, rank: int = 0, world_size: int = 1, shuffle: bool = True
) -> list[int]:
    """Dataset indices of one rank's batch at ``step``."""
    start = (step * world_size + rank) * batch_size
    out, perm, perm_epoch = [], None, -1
    for p in range(start, start + batch_size):
        epoch, i = divmod(p, n)
        if not shuffle:
            out.append(i)
            continue
        if epoch != perm_epoch:
            perm, perm_epoch = epoch_permutation(n, seed, epoch), epoch
        out.append(int(perm[i]))
    return out


class SizeBuckets:
    """Size-grouped global batches as a pure function of (seed, epoch) (module docstring)."""

    def __init__(self, sizes: Sequence[tuple[int, int]], global_batch: int, seed: int):
        if global_batch < 1:
            raise ValueError(f"global batch must be >= 1, got {global_batch}")
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, size in enumerate(sizes):
            groups[tuple(size)].append(i)
        self.sizes = sorted(groups)
        self.groups = [groups[size] for size in self.sizes]
        self.global_batch, self.seed = global_batch, seed
        self.per_epoch = sum(math.ceil(len(g) / global_batch) for g in self.groups)
        self._cached: tuple[int, list[list[int]]] | None = None

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """Epoch ``epoch``'s global batches, in order; each of one size, each ``global_batch`` long."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        rng = random.Random(f"{int(self.seed)}/buckets/{int(epoch)}")
        g, batches = self.global_batch, []
        for group in self.groups:
            idx = list(group)
            rng.shuffle(idx)
            k = math.ceil(len(idx) / g)
            full = [idx[j % len(idx)] for j in range(k * g)]  # the last batch wraps within its size
            batches += [full[b * g : (b + 1) * g] for b in range(k)]
        rng.shuffle(batches)
        self._cached = (epoch, batches)
        return batches

    def indices(self, step: int, rank: int, batch_size: int) -> list[int]:
        """Rank ``rank``'s slice of global batch ``step``."""
        epoch, j = divmod(step, self.per_epoch)
        return self.epoch_batches(epoch)[j][rank * batch_size : (rank + 1) * batch_size]


def size_buckets(dataset: Any, batch_size: int, world_size: int, seed: int) -> SizeBuckets | None:
    """Size-grouped batches for a dataset that reports more than one item size; None otherwise."""
    if not isinstance(dataset, ReportsSizes):
        return None
    sizes = [tuple(dataset.size_of(i)) for i in range(len(dataset))]
    if len(set(sizes)) < 2:
        return None
    return SizeBuckets(sizes, batch_size * world_size, seed)


class StepBatchSampler(Sampler[list[int]]):
    """Yields one index list per step from ``start_step`` to ``steps`` (exclusive)."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        start_step: int,
        steps: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        buckets: SizeBuckets | None = None,
    ):
        if n < 1:
            raise ValueError("dataset is empty")
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.start_step, self.steps, self.rank, self.world_size = start_step, steps, rank, world_size
        self.buckets = buckets

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.steps):
            if self.buckets is not None:
                yield self.buckets.indices(step, self.rank, self.batch_size)
                continue
            yield step_indices(self.n, self.batch_size, self.seed, step, self.rank, self.world_size, self.shuffle)


def make_loader(
    dataset: Any,
    *,
    batch_size: int,
    seed: int,
    start_step: int,
    steps: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    collate_fn: Callable | None = None,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
) -> DataLoader:
    """A DataLoader over a map-style dataset whose batches depend only on (seed, step, rank); batches
    grouped by size when the dataset reports more than one (module docstring).

    The loader gets its own generator so creating it never draws from the global torch RNG (it
    would otherwise shift dropout/noise streams between a resumed and an uninterrupted run).
    Datasets should be deterministic per index; random augmentation inside ``__getitem__`` with
    ``num_workers > 0`` is seeded by DataLoader per iterator and is not resume-exact.
    """
    buckets = size_buckets(dataset, batch_size, world_size, seed)
    sampler = StepBatchSampler(len(dataset), batch_size, seed, start_step, steps, rank, world_size, buckets=buckets)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn or default_collate,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(int(seed)),
        persistent_workers=False,
        prefetch_factor=prefetch_factor if num_workers else None,
    )


def is_map_dataset(data: Any) -> bool:
    return hasattr(data, "__len__") and hasattr(data, "__getitem__") and not callable(data)


def is_stream(data: Any) -> bool:
    """An iterable dataset (no random access): batched by ``make_stream_loader``, its position checkpointed."""
    from torch.utils.data import IterableDataset

    return isinstance(data, IterableDataset)


def make_stream_loader(
    dataset: Any,
    *,
    batch_size: int,
    seed: int,
    num_workers: int = 0,
    prefetch_factor: int | None = None,
    collate_fn: Callable | None = None,
    pin_memory: bool = False,
):
    """A torchdata ``StatefulDataLoader`` over an iterable dataset: its ``state_dict()`` holds each
    worker's dataset state, and ``load_state_dict`` continues the stream where that state stopped.

    Its own generator keeps loader creation off the global torch RNG, as ``make_loader``'s does."""
    import warnings

    from torchdata.stateful_dataloader import StatefulDataLoader

    with warnings.catch_warnings():  # torchdata calls a deprecated torch.set_vital in its constructor
        warnings.filterwarnings("ignore", message=".*set_vital.*")
        return StatefulDataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=num_workers,
            prefetch_factor=prefetch_factor if num_workers else None,
            collate_fn=collate_fn or default_collate,
            pin_memory=pin_memory,
            generator=torch.Generator().manual_seed(int(seed)),
            persistent_workers=False,
        )


def first_items(data: Any, n: int) -> list[Any]:
    """The first ``n`` items of ``data``, the same in every process: indices 0.. of a map-style dataset,
    a stream's ``head(n)`` (its records in storage order, before any sharding or shuffling)."""
    if hasattr(data, "head"):
        return list(data.head(n))
    if is_stream(data):
        raise TypeError(f"{type(data).__name__} streams without a head(n): its first items differ between ranks")
    return [data[i] for i in range(min(len(data), n))]


def sample_ids(batch: Any) -> list[Any]:
    """The ids of a batch's samples (``file`` with ``line`` when present, else ``key``, else None)."""

    def one(item: Any) -> Any:
        if not isinstance(item, dict):
            return None
        if "file" in item:
            return f"{item['file']}:{item['line']}" if "line" in item else item["file"]
        return item.get("key")

    if isinstance(batch, list):
        return [one(it) for it in batch]
    if isinstance(batch, dict) and isinstance(batch.get("file"), (list, tuple)):
        lines = batch.get("line")
        return [
            one({"file": f} | ({"line": int(lines[i])} if lines is not None else {}))
            for i, f in enumerate(batch["file"])
        ]
    return []


def _worker_message(exc: BaseException) -> str:
    """The message of an exception a DataLoader worker raised: torch re-raises it as the same type with
    the worker's traceback as its message, whose last line is ``module.Type: message``."""
    text = str(exc)
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.splitlines() if line.strip()][-1]
    for name in (f"{type(exc).__module__}.{type(exc).__qualname__}", type(exc).__qualname__):
        if last.startswith(name + ": "):
            return last[len(name) + 2 :]
    return last


def batches_of(loader: Any) -> Iterator[Any]:
    """``iter(loader)``, with a data error from a worker (a bad record) raised with its own one-line
    message rather than the worker's traceback."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except (ValueError, OSError) as exc:
            message = _worker_message(exc)
            if message == str(exc):
                raise
            try:
                clean = type(exc)(message)
            except Exception:
                raise exc from None
            raise clean from None
        yield batch
