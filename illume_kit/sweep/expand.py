"""Expansion: a sweep spec -> the list of runs, each a flat dict of overrides with a content id.

Semantics (the same as the design card, so a reader can predict the run count):

- runs = product(grid axes) x product(zip groups) x seeds; a zip group is one axis whose points
  are the i-th values of each of its lists;
- each variant is appended (crossed with the seeds, not with the grid); with variants and no
  grid/zip axis there is no implicit base run (add a variant with empty overrides for one);
- fixed ``overrides`` are under every run; an ``exclude`` entry drops the runs that match all of
  its (flattened) keys, and may name ``variant``;
- a run's id is a short hash of its sorted, normalised overrides (``tokenizer=vqgan`` and
  ``tokenizer.name=vqgan`` give one id): the same content gets the same folder in every plan, so a
  rerun finds its finished runs. Two expansions with the same content are one run.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any

from illume_kit.sweep.spec import SEED_KEY, SweepSpec, flatten

ID_LEN = 8


@dataclass
class ExpandedRun:
    run_id: str
    overrides: dict[str, Any]  # flattened, normalised, sorted by key; includes run.seed when swept
    variant: str | None = None
    axes: dict[str, Any] = field(default_factory=dict)  # the swept values that made this run (no fixed ones)
    seed: int | None = None

    @property
    def group(self) -> dict[str, Any]:
        """The overrides minus the seed: runs that differ only by seed share a group (one table row)."""
        return {k: v for k, v in self.overrides.items() if k != SEED_KEY}

    @property
    def label(self) -> str:
        if self.variant is not None:
            return self.variant
        return " ".join(f"{_short(k)}={_show(v)}" for k, v in self.axes.items()) or "base"


def _short(key: str) -> str:
    """``tokenizer.name`` -> ``tokenizer``; ``backbone.params.num_layers`` -> ``num_layers``."""
    parts = key.split(".")
    if parts[-1] == "name" and len(parts) == 2:
        return parts[0]
    return parts[-1] if not parts[-1].isdigit() else ".".join(parts[-2:])


def _show(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, default=str)


def canonical(overrides: dict[str, Any]) -> str:
    return json.dumps(sorted(overrides.items()), sort_keys=True, default=str, separators=(",", ":"))


def content_id(overrides: dict[str, Any], length: int = ID_LEN) -> str:
    return hashlib.sha256(canonical(overrides).encode()).hexdigest()[:length]


def _axis_points(spec: SweepSpec) -> list[list[dict[str, Any]]]:
    """One list of points per axis; a point is a (possibly multi-key) override dict."""
    axes = [[{k: v} for v in values] for k, values in spec.grid.items()]
    for group in spec.zip:
        keys = list(group)
        n = len(group[keys[0]])
        axes.append([{k: group[k][i] for k in keys} for i in range(n)])
    return axes


def _matches(entry: dict[str, Any], run: ExpandedRun) -> bool:
    for k, v in flatten(entry).items():
        if k == "variant":
            if run.variant != v:
                return False
        elif k not in run.overrides or run.overrides[k] != v:
            return False
    return True


def count_runs(spec: SweepSpec) -> int:
    """How many runs ``expand`` would list before excludes and duplicates drop any: computed from
    the axis lengths, so a sweep too large to expand is refused without building its product."""
    lengths = [len(v) for v in spec.grid.values()] + [len(next(iter(g.values()))) for g in spec.zip]
    combos = (math.prod(lengths) if lengths or not spec.variants else 0) + len(spec.variants)
    return combos * max(1, len(spec.seeds))


def expand(spec: SweepSpec) -> tuple[list[ExpandedRun], list[str]]:
    """All runs of ``spec`` in a stable order, and warnings (duplicates, excludes that match nothing)."""
    fixed = flatten(spec.overrides)
    seeds: list[int | None] = list(spec.seeds) or [None]
    combos: list[tuple[str | None, dict[str, Any]]] = []
    axes = _axis_points(spec)
    if axes or not spec.variants:
        for points in itertools.product(*axes):
            point: dict[str, Any] = {}
            for p in points:
                point.update(flatten(p))
            combos.append((None, point))
    for variant in spec.variants:
        combos.append((variant.name, flatten(variant.overrides)))

    runs: list[ExpandedRun] = []
    for variant, point in combos:
        for seed in seeds:
            ov = {**fixed, **point}
            if seed is not None:
                ov[SEED_KEY] = seed
            ov = dict(sorted(ov.items()))
            runs.append(ExpandedRun(content_id(ov), ov, variant, point, seed))

    warnings: list[str] = []
    used = [False] * len(spec.exclude)
    kept: list[ExpandedRun] = []
    for run in runs:
        hit = [i for i, e in enumerate(spec.exclude) if _matches(e, run)]
        for i in hit:
            used[i] = True
        if not hit:
            kept.append(run)
    for i, u in enumerate(used):
        if not u:
            warnings.append(f"exclude[{i}] {spec.exclude[i]} matches no run (a typo in a key or value?)")

    seen: dict[str, ExpandedRun] = {}
    unique: list[ExpandedRun] = []
    for run in kept:
        first = seen.get(run.run_id)
        if first is not None:
            warnings.append(
                f"{run.label} (seed {run.seed}) has the same overrides as {first.label}: one run ({run.run_id})"
            )
            continue
        seen[run.run_id] = run
        unique.append(run)
    return unique, warnings
