"""Content addressing of upstream stages: runs that agree on what a stage trains share its checkpoint.

A sweep over MLLM settings should not retrain the tokenizer in every run, and a sweep over
tokenizers should train their common semantic teacher once. The rule that makes this safe is
content addressing, the same idea as the run ids:

1. The *shared* stages of a run are a prefix of its stage list: ``shared: auto`` takes the leading
   ``teacher``/``tokenizer`` stages (always leaving the run at least one stage of its own);
   ``shared: [names]`` names them; ``mllm`` stages are never shared (the projectors they train
   are not a recipe component that another recipe could load).
2. Each shared stage becomes a *unit*: the run's recipe with only that stage. Its key hashes what
   the stage depends on and nothing else: the recipe sections its target reads (``teacher`` +
   ``data`` for a teacher; ``tokenizer`` + ``data`` for a tokenizer; ``tokenizer`` +
   ``detokenizer`` + ``data`` for a detokenizer, each with preset params expanded), ``run.seed``
   (unless ``share_across_seeds``), the stage definition itself and the keys of the units before
   it. A backbone, an eval setting or an MLLM stage is not in the key, so changing them reuses it.
3. A unit trains once, under ``SWEEP_DIR/shared/<key>/`` (its own frozen ``recipe.yaml``).
4. What comes after a unit is pointed at its output instead of training it: a teacher unit's
   ``<output_dir>/teacher`` paths (e.g. ``tokenizer.params.teacher.pretrained``) become
   ``shared/<key>/teacher``; a tokenizer (detokenizer) unit sets ``tokenizer.weights``
   (``detokenizer.weights``) to ``shared/<key>/checkpoint``. The run's frozen recipe keeps only
   its own stages, so ``illume-kit train SWEEP_DIR/<run>/recipe.yaml`` alone reproduces the run
   from the shared checkpoints.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from illume_kit.core import yamlio
from illume_kit.core.recipe import Problem, RecipeError, ResolvedRecipe, load_recipe
from illume_kit.core.schema import Stage

SHAREABLE = ("teacher", "tokenizer", "detokenizer")
AUTO = ("teacher", "tokenizer")
DEPENDS = {
    "teacher": ("teacher", "data"),
    "tokenizer": ("tokenizer", "data"),
    "detokenizer": ("tokenizer", "detokenizer", "data"),
}
TEACHER_DIR = "teacher"  # where a teacher stage saves (train/stages.py)
CHECKPOINT_DIR = "checkpoint"  # where every other stage saves the model (train/stages.py)
PLACEHOLDER = "@UNIT"
KEY_LEN = 10


@dataclass
class SharedUnit:
    key: str
    stage: str
    target: str
    folder: Path
    recipe_yaml: str
    upstream: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "key": self.key,
            "stage": self.stage,
            "target": self.target,
            "upstream": self.upstream,
            "runs": self.runs,
            "folder": str(self.folder),
        }


def yaml_value(value: Any) -> str:
    """A value as override text that ``parse_overrides`` reads back unchanged (YAML flow style)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def split_stages(stages: Sequence[Stage], shared: str | Sequence[str]) -> tuple[list[Stage], list[Stage], list[str]]:
    """(shared prefix, own stages, problems) of one run's stage list."""
    if shared == "auto":
        n = 0
        while n < len(stages) - 1 and stages[n].target in AUTO:
            n += 1
        return list(stages[:n]), list(stages[n:]), []
    names = set(shared)
    picked = [i for i, s in enumerate(stages) if s.name in names]
    problems = []
    if picked and picked != list(range(len(picked))):
        problems.append(f"shared stages must come first (stage order: {', '.join(s.name for s in stages)})")
    for i in picked:
        if stages[i].target not in SHAREABLE:
            problems.append(
                f"stage {stages[i].name!r} trains {stages[i].target!r}, which cannot be shared "
                f"(shareable targets: {', '.join(SHAREABLE)})"
            )
    if stages and len(picked) == len(stages):
        problems.append("every stage would be shared; a run needs at least one stage of its own")
    n = len(picked)
    return list(stages[:n]), list(stages[n:]), problems


def _string_leaves(node: Any, prefix: str = "") -> Iterable[tuple[str, str]]:
    if isinstance(node, Mapping):
        for k, v in node.items():
            yield from _string_leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(node, str) and prefix:
        yield prefix, node


def redirects(data: Mapping[str, Any], own_out: str, upstream: Sequence[SharedUnit]) -> list[str]:
    """Overrides that point a recipe (written to ``own_out``) at the outputs of ``upstream`` units."""
    out: list[str] = []
    for unit in upstream:
        if unit.target == "teacher":
            mine, theirs = f"{own_out}/{TEACHER_DIR}", str(unit.folder / TEACHER_DIR)
            for key, value in _string_leaves(data):
                if key != "run.output_dir" and (value == mine or value.startswith(mine + "/")):
                    out.append(f"{key}={yaml_value(theirs + value[len(mine) :])}")
        else:
            out.append(f"{unit.target}.weights={yaml_value(str(unit.folder / CHECKPOINT_DIR))}")
    return out


def stages_override(stages: Sequence[Stage]) -> str:
    return "train.stages=" + yaml_value([s.model_dump(mode="json") for s in stages])


def _section(resolved: ResolvedRecipe, sec: str) -> Any:
    rc = resolved.components.get(sec)
    if rc is None:
        return None
    return {"name": rc.spec.name, "params": rc.params_dict, "weights": rc.weights}


def unit_key(
    resolved: ResolvedRecipe, stage: Stage, upstream: Sequence[str], shared_dir: Path, with_seed: bool = True
) -> str:
    content = {
        "format": 1,
        "target": stage.target,
        "stage": stage.model_dump(mode="json"),
        "sections": {sec: _section(resolved, sec) for sec in DEPENDS[stage.target]},
        "seed": resolved.recipe.run.seed if with_seed else None,
        "upstream": list(upstream),
    }
    # upstream units' folders enter as paths; keyed relative to the store, a key is the same in any sweep
    text = json.dumps(content, sort_keys=True, default=str).replace(str(shared_dir), "@SWEEP/shared")
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LEN]


class UnitPlanner:
    """Turns each run's shared stages into units (deduplicated by key) and the run's final overrides."""

    def __init__(
        self,
        base: Path,
        sweep_dir: Path,
        shared: str | Sequence[str],
        share_across_seeds: bool,
        registry=None,
        shared_dir: Path | None = None,
    ) -> None:
        self.base, self.sweep_dir, self.shared = base, sweep_dir, shared
        self.shared_dir = shared_dir or sweep_dir / "shared"
        self.share_across_seeds, self.registry = share_across_seeds, registry
        self.units: dict[str, SharedUnit] = {}

    def _load(self, overrides: Sequence[str]) -> ResolvedRecipe:
        return load_recipe(self.base, list(overrides), registry=self.registry)

    def plan_run(
        self, run_id: str, overrides: Sequence[str], seed_override: str | None, resolved: ResolvedRecipe, run_dir: Path
    ) -> tuple[list[str], list[str]]:
        """(unit keys, the run's final overrides). ``overrides`` exclude run.seed and run.output_dir."""
        shared, own, problems = split_stages(resolved.recipe.train.stages, self.shared)
        if problems:
            raise RecipeError(f"{self.base} (run {run_id})", [Problem("sweep.shared", p) for p in problems])
        unit_seed = [] if self.share_across_seeds or seed_override is None else [seed_override]
        upstream: list[SharedUnit] = []
        if shared:
            probe = self._load([*overrides, *unit_seed, f"run.output_dir={PLACEHOLDER}"])
            for stage in shared:
                ov = [*overrides, *unit_seed, *redirects(probe.data, PLACEHOLDER, upstream), stages_override([stage])]
                placeholder = self._load([*ov, f"run.output_dir={PLACEHOLDER}"])
                key = unit_key(
                    placeholder,
                    stage,
                    [u.key for u in upstream],
                    self.shared_dir,
                    with_seed=not self.share_across_seeds,
                )
                unit = self.units.get(key)
                if unit is None:
                    folder = self.shared_dir / key
                    frozen = self._load([*ov, f"run.output_dir={yaml_value(str(folder))}"])
                    unit = self.units[key] = SharedUnit(
                        key, stage.name, stage.target, folder, freeze(frozen), [u.key for u in upstream]
                    )
                unit.runs.append(run_id)
                upstream.append(unit)
        final = [
            *overrides,
            *([seed_override] if seed_override else []),
            *redirects(resolved.data, str(run_dir), upstream),
        ]
        if shared:
            final.append(stages_override(own))
        return [u.key for u in upstream], final


def freeze(resolved: ResolvedRecipe) -> str:
    """The resolved recipe as the YAML a run trains from (no sweep block: a run is not a sweep)."""
    data = yamlio.safe_load(resolved.to_yaml())
    data.pop("sweep", None)
    return yaml.safe_dump(data, sort_keys=False)
