"""A mixture of registered datasets, as ILLUME+'s meta-config mixes its data.

Each part names a registered dataset and its params; the mixture's ``split`` and ``image_size`` apply
to every part whose params do not set their own. How much of the mixture a part makes:

- ``samples: N`` (the meta-config's per-dataset count): fewer than the dataset holds takes a seeded
  subset of it, more repeats it whole and adds a seeded subset for the remainder;
- ``weight: w``: a share of what the parts with ``samples`` leave of ``num_samples`` (by default the
  weighted parts' own lengths added up), split in proportion to the weights;
- neither: the dataset once.

With ``num_samples`` set and no weighted part, the counts are scaled to add up to it. Splits other
than ``train`` never repeat an item: each count is capped at the part's length.

Map-style parts make a map-style :class:`Mixture`: ``len`` is the total count, index ``i`` falls in
one part's block and names one of its items through a table fixed by the seed; ``size_of`` is the
part's. When any part streams (an ``IterableDataset``), the mixture is a :class:`MixtureStream`
interleaving the parts: draw ``k`` picks a part by a weighted choice seeded by (seed, k), the counts
above serving as the weights; a part that runs out starts again (its ``set_epoch`` when it has one).
Its ``state_dict`` holds the draw count and each part's own ``state_dict``, so a resumable loader
(``torchdata``'s ``StatefulDataLoader``) resumes it exactly when its streaming parts are resumable.

Every item says which part it came from: ``source`` (the part's dataset name; ``name[i]`` when two
parts share a name).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch.utils.data import Dataset, IterableDataset

from illume_kit.core.build import build_component
from illume_kit.core.protocols import ReportsSizes, ServesTasks
from illume_kit.core.registry import UnknownComponent
from illume_kit.data.params import MixtureParams, MixturePart
from illume_kit.data.records import TASK_OF_KIND

# the mixture's params every part takes unless it sets its own
SHARED = ("split", "image_size")


def streams(dataset: Any) -> bool:
    return isinstance(dataset, IterableDataset) or not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"))


def served_tasks(dataset: Any, name: str) -> dict[str, dict[str, int | None]]:
    """{source: {task: items serving it (None: unknown, a stream)}} of a dataset, without decoding:
    ``ServesTasks`` when it has it, else its task kind (``kind``: conversations, captions, edits);
    {} when neither says."""
    if isinstance(dataset, ServesTasks):
        return {src: dict(counts) for src, counts in dataset.task_counts().items()}
    task = TASK_OF_KIND.get(getattr(dataset, "kind", None) or "")
    if task:
        return {name: {task: None if streams(dataset) else len(dataset)}}
    return {}


def _labels(parts: list[MixturePart]) -> list[str]:
    names = [p.name for p in parts]
    return [n if names.count(n) == 1 else f"{n}[{i}]" for i, n in enumerate(names)]


def build_part(part: MixturePart, i: int, params: MixtureParams) -> Any:
    """Part ``i``'s dataset, its params validated with its own params class through the registry."""
    from illume_kit.core.plugins import get_registry
    from illume_kit.core.recipe import pydantic_problems

    try:
        spec = get_registry().get("dataset", part.name)
    except UnknownComponent as exc:
        raise ValueError(f"mixture parts[{i}].name: {exc}") from None
    cls = spec.load_params()
    shared = {k: getattr(params, k) for k in SHARED if k in cls.model_fields}
    try:
        part_params = cls.model_validate({**shared, **part.params})
    except ValidationError as exc:
        problems = pydantic_problems(exc, cls, f"mixture parts[{i}].params", {})
        raise ValueError("; ".join(str(p) for p in problems)) from None
    return build_component(spec, part_params)


def _shares(total: int, weights: list[float]) -> list[int]:
    """``total`` split in proportion to ``weights``, the rounding left to the largest remainders."""
    exact = [total * w / sum(weights) for w in weights]
    out = [int(x) for x in exact]
    for j in sorted(range(len(weights)), key=lambda j: (out[j] - exact[j], j))[: total - sum(out)]:
        out[j] += 1
    return out


def plan_counts(parts: list[MixturePart], lengths: list[int | None], num_samples: int | None, split: str) -> list[int]:
    """Items each part contributes (module docstring); ``lengths`` None for a part that streams."""
    labels = _labels(parts)
    fixed: dict[int, int] = {}
    weighted = [j for j, p in enumerate(parts) if p.weight is not None]
    for j, p in enumerate(parts):
        if p.weight is not None:
            continue
        if p.samples is None and lengths[j] is None:
            raise ValueError(f"mixture part {labels[j]!r} streams (no length): set its samples or weight")
        fixed[j] = p.samples if p.samples is not None else lengths[j]
    counts = [0] * len(parts)
    if weighted:
        if num_samples is None:
            unsized = [labels[j] for j in weighted if lengths[j] is None]
            if unsized:
                raise ValueError(
                    f"mixture: the weighted part(s) {', '.join(map(repr, unsized))} stream (no length): set the "
                    "mixture's num_samples for the weighted parts to share"
                )
            num_samples = sum(fixed.values()) + sum(lengths[j] for j in weighted)
        rest = num_samples - sum(fixed.values())
        if rest < 1:
            raise ValueError(
                f"mixture num_samples {num_samples} leaves nothing for the weighted parts "
                f"(the parts with samples take {sum(fixed.values())})"
            )
        for j, c in zip(weighted, _shares(rest, [parts[j].weight for j in weighted]), strict=True):
            counts[j] = c
        for j, c in fixed.items():
            counts[j] = c
    else:
        order = sorted(fixed)
        amounts = [fixed[j] for j in order]
        if num_samples is not None:
            amounts = _shares(num_samples, [float(a) for a in amounts])
        for j, c in zip(order, amounts, strict=True):
            counts[j] = c
    if split != "train":
        counts = [c if n is None else min(c, n) for c, n in zip(counts, lengths, strict=True)]
    return counts


def index_table(length: int, count: int, seed: int, part: int) -> np.ndarray:
    """The part's item indices behind its ``count`` places: whole passes, then a seeded subset."""
    reps, rem = divmod(count, length)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, part])
    rest = np.sort(rng.choice(length, rem, replace=False)) if rem else np.zeros(0, dtype=np.int64)
    return np.concatenate([np.tile(np.arange(length, dtype=np.int64), reps), rest.astype(np.int64)])


def tag(item: Mapping[str, Any], label: str) -> dict[str, Any]:
    return {**item, "source": label}


def _task_counts(labels, datasets, counts) -> dict[str, dict[str, int | None]]:
    out: dict[str, dict[str, int | None]] = {}
    for label, ds, count in zip(labels, datasets, counts, strict=True):
        length = None if streams(ds) else len(ds)
        merged: dict[str, int | None] = {}
        for served in served_tasks(ds, label).values():
            for task, n in served.items():
                # the part's share of the items serving a task, in the mixture's count
                k = None if n is None or not length else round(count * n / length)
                merged[task] = None if k is None or merged.get(task, 0) is None else merged.get(task, 0) + k
        out[label] = merged
    return out


class Mixture(Dataset):
    """Map-style parts mixed: items ``{**part item, "source": part label}``."""

    Params = MixtureParams

    def __init__(self, params: MixtureParams, datasets: list[Any] | None = None):
        self.params = p = params
        self.labels = _labels(p.parts)
        self.datasets = datasets if datasets is not None else [build_part(q, i, p) for i, q in enumerate(p.parts)]
        lengths = [len(d) for d in self.datasets]
        for label, n in zip(self.labels, lengths, strict=True):
            if n < 1:
                raise ValueError(f"mixture part {label!r} is empty")
        self.counts = plan_counts(p.parts, lengths, p.num_samples, p.split)
        self.tables = [index_table(n, c, p.seed, j) for j, (n, c) in enumerate(zip(lengths, self.counts, strict=True))]
        self.offsets = np.cumsum([0, *self.counts]).tolist()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(part, the part's item index) behind mixture index ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"mixture index {index} out of range [0, {len(self)})")
        j = bisect.bisect_right(self.offsets, index) - 1
        return j, int(self.tables[j][index - self.offsets[j]])

    def __getitem__(self, index: int) -> dict[str, Any]:
        j, k = self.locate(index)
        return tag(self.datasets[j][k], self.labels[j])

    def size_of(self, index: int) -> tuple[int, int]:
        j, k = self.locate(index)
        ds = self.datasets[j]
        if isinstance(ds, ReportsSizes):
            return tuple(ds.size_of(k))
        return tuple(ds[k]["image"].shape[-2:])

    def task_counts(self) -> dict[str, dict[str, int | None]]:
        return _task_counts(self.labels, self.datasets, self.counts)


class IndexStream(IterableDataset):
    """A map-style dataset read as a stream: a seeded permutation per epoch, sharded over ranks and
    loader workers; resumable (``state_dict``: epoch and position)."""

    def __init__(self, dataset: Any, seed: int):
        self.dataset, self.seed, self.epoch, self.position = dataset, seed, 0, 0
        self._pending: dict[str, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self._pending = dict(state)

    def __iter__(self) -> Iterator[Any]:
        start = 0
        if self._pending is not None:
            self.epoch, start, self._pending = int(self._pending["epoch"]), int(self._pending["position"]), None
        shard, shards = _shard()
        n = len(self.dataset)
        g = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + self.epoch)
        perm = torch.randperm(n, generator=g).tolist()
        for k in range(start, n):
            self.position = k + 1
            if k % shards == shard:
                yield self.dataset[perm[k]]
        self.position = 0


def _shard() -> tuple[int, int]:
    """(this reader's shard, number of shards) over distributed ranks and loader workers."""
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    info = torch.utils.data.get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * workers + worker, world * workers


class MixtureStream(IterableDataset):
    """Parts interleaved by a seeded weighted choice; endless unless ``num_samples`` bounds it."""

    Params = MixtureParams

    def __init__(self, params: MixtureParams, datasets: list[Any], labels: list[str], weights: list[float]):
        if not any(w > 0 for w in weights):
            raise ValueError("mixture: every part's share is 0")
        self.params, self.labels, self.weights = params, labels, weights
        self.datasets = datasets
        self.parts = [d if streams(d) else IndexStream(d, params.seed + j) for j, d in enumerate(datasets)]
        self.cumulative = np.cumsum(weights).tolist()
        self.draws, self.epochs = 0, [0] * len(self.parts)
        self._pending: dict[str, Any] | None = None

    def choose(self, draw: int) -> int:
        """The part draw number ``draw`` reads from: a function of (seed, draw) alone."""
        u = random.Random(f"{self.params.seed}/mixture/{int(draw)}").random() * self.cumulative[-1]
        return min(bisect.bisect_right(self.cumulative, u), len(self.parts) - 1)

    def state_dict(self) -> dict[str, Any]:
        parts = [p.state_dict() if hasattr(p, "state_dict") else None for p in self.parts]
        return {"draws": self.draws, "epochs": list(self.epochs), "parts": parts}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._pending = dict(state)

    def _start(self, j: int) -> Iterator[Any]:
        part = self.parts[j]
        if hasattr(part, "set_epoch"):
            part.set_epoch(self.epochs[j])
        return iter(part)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        state, self._pending = self._pending, None
        self.draws, self.epochs = 0, [0] * len(self.parts)
        if state is not None:
            self.draws, self.epochs = int(state["draws"]), [int(e) for e in state["epochs"]]
        iters = []
        for j, part in enumerate(self.parts):
            if hasattr(part, "set_epoch"):
                part.set_epoch(self.epochs[j])
            if state is not None and state["parts"][j] is not None and hasattr(part, "load_state_dict"):
                part.load_state_dict(state["parts"][j])
            iters.append(iter(part))
        end = object()
        limit = self.params.num_samples
        while limit is None or self.draws < limit:
            j = self.choose(self.draws)
            item = next(iters[j], end)
            if item is end:
                self.epochs[j] += 1
                iters[j] = self._start(j)
                item = next(iters[j], end)
                if item is end:
                    raise ValueError(f"mixture part {self.labels[j]!r} yields no items")
            self.draws += 1
            yield tag(item, self.labels[j])

    def shard_over(self, rank: int, world_size: int) -> None:
        """Read as rank ``rank`` of ``world_size``: passed on to the parts that shard themselves."""
        for part in self.parts:
            if hasattr(part, "shard_over"):
                part.shard_over(rank, world_size)

    def head(self, n: int) -> list[dict[str, Any]]:
        """The first ``n`` draws over the parts' own first items (a stream's ``head``, a map-style
        part's indices 0..): the same in every process, e.g. the texts a tokenizer is trained on."""
        need = [0] * len(self.parts)
        for d in range(n):
            need[self.choose(d)] += 1
        heads = []
        for j, ds in enumerate(self.datasets):
            k = need[j]
            heads.append(list(ds.head(k)) if hasattr(ds, "head") else [ds[i % len(ds)] for i in range(k)])
        taken = [0] * len(self.parts)
        out = []
        for d in range(n):
            j = self.choose(d)
            if taken[j] < len(heads[j]):
                out.append(tag(heads[j][taken[j]], self.labels[j]))
            taken[j] += 1
        return out

    def task_counts(self) -> dict[str, dict[str, int | None]]:
        out = {}
        for label, ds in zip(self.labels, self.datasets, strict=True):
            merged: dict[str, int | None] = {}
            for served in served_tasks(ds, label).values():
                merged.update(dict.fromkeys(served, None))  # a stream's counts are its draws
            out[label] = merged
        return out


def mixture(params: MixtureParams):
    """The registered ``mixture``: map-style when every part is, else an interleaving stream."""
    datasets = [build_part(q, i, params) for i, q in enumerate(params.parts)]
    if not any(streams(d) for d in datasets):
        return Mixture(params, datasets)
    labels = _labels(params.parts)
    lengths = [None if streams(d) else len(d) for d in datasets]
    if all(q.weight is not None for q in params.parts):
        weights = [float(q.weight) for q in params.parts]
    else:
        weights = [float(c) for c in plan_counts(params.parts, lengths, params.num_samples, "train")]
    return MixtureStream(params, datasets, labels, weights)
