"""Plan a sweep: expand every run, validate every run's recipe, then freeze them all, or nothing.

Hydra's multirun composes each job's config when the job launches, so an edit made mid-sweep leaks
into the jobs still queued, and a typo in run 17 surfaces hours after run 1 started. Here every
run's recipe goes through ``load_recipe`` before anything is written: all bad runs are reported
together (each with its overrides and problems) and the sweep folder is left untouched. A good plan
writes, under SWEEP_DIR:

- ``sweep.yaml``: the sweep file as given; ``plan.json``: runs, their overrides and shared units;
- ``<run_id>/recipe.yaml``: the run's fully resolved recipe (``run.output_dir`` = that folder);
- ``shared/<key>/recipe.yaml``: one per shared upstream stage (see ``sweep/shared.py``).

A frozen recipe is never silently replaced: when a started run's recipe would change (the base
recipe was edited), planning stops and names the runs; ``--force`` moves their folders aside to
``SWEEP_DIR/.stale/`` and starts them afresh.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from illume_kit.core.recipe import Problem, RecipeError, load_recipe
from illume_kit.core.schema import COMPONENT_ROLES, Stage
from illume_kit.sweep.expand import ExpandedRun, count_runs, expand
from illume_kit.sweep.shared import SharedUnit, UnitPlanner, freeze, stages_override, yaml_value
from illume_kit.sweep.spec import SEED_KEY, Quick, SweepError, SweepSpec, load_sweep, quick_spec

PLAN_FILE = "plan.json"
# the most runs a plan lists: each is validated and frozen to disk, so more is a typo, not a sweep
HARD_MAX_RUNS = 100_000
RUN_FILE = "run.json"
UNIT_FILE = "unit.json"


@dataclass
class PlannedRun:
    run: ExpandedRun
    folder: Path
    recipe_yaml: str = ""
    units: list[str] = field(default_factory=list)
    own_stages: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.run.run_id

    def to_json(self) -> dict:
        r = self.run
        return {
            "id": r.run_id,
            "label": r.label,
            "variant": r.variant,
            "seed": r.seed,
            "overrides": r.overrides,
            "axes": r.axes,
            "group": r.group,
            "units": self.units,
            "stages": self.own_stages,
            "versions": self.versions,
        }


class SweepPlanError(ValueError):
    """Some runs do not validate; ``bad`` holds (run, RecipeError) for every one of them."""

    def __init__(self, name: str, bad: list[tuple[ExpandedRun, RecipeError]], total: int):
        self.bad, self.total = bad, total
        lines = [f"sweep {name}: {len(bad)} of {total} runs are invalid; nothing was written"]
        for run, err in bad:
            ov = " ".join(f"{k}={yaml_value(v)}" for k, v in run.overrides.items()) or "(no overrides)"
            lines.append(f"run {run.run_id} [{run.label}] {ov}")
            lines += [f"    {p}" for p in err.problems]
        super().__init__("\n".join(lines))


@dataclass
class Plan:
    spec: SweepSpec
    sweep_file: Path
    base: Path
    sweep_dir: Path
    runs: list[PlannedRun]
    units: dict[str, SharedUnit]
    warnings: list[str]
    quick: bool = False

    def to_json(self) -> dict:
        metrics = [m if isinstance(m, str) else m.model_dump(exclude_none=True) for m in self.spec.metrics]
        return {
            "format": 1,
            "sweep": self.spec.name,
            "description": self.spec.description,
            "sweep_file": str(self.sweep_file),
            "base": str(self.base),
            "metrics": metrics,
            "stages": self.spec.stages,
            "quick": self.quick,
            "runs": [r.to_json() for r in self.runs],
            "units": {k: u.to_json() for k, u in self.units.items()},
            "warnings": self.warnings,
        }

    def write(self, force: bool = False) -> list[str]:
        """Freeze every recipe (see module docstring); returns the ids of runs/units moved aside."""
        targets = [(r.folder, r.recipe_yaml, RUN_FILE) for r in self.runs]
        targets += [(u.folder, u.recipe_yaml, UNIT_FILE) for u in self.units.values()]
        changed = [
            (f, m)
            for f, text, m in targets
            if (f / "recipe.yaml").is_file() and (f / m).is_file() and (f / "recipe.yaml").read_text() != text
        ]
        if changed and not force:
            names = ", ".join(f.name for f, _ in changed)
            raise SweepError(
                f"{self.sweep_dir}: the frozen recipe of started run(s) {names} would change (was the "
                "base recipe or the sweep edited?). Use another -o SWEEP_DIR, or --force to move "
                "their folders to .stale/ and run them afresh."
            )
        moved = []
        for folder, _ in changed:
            dest = self.sweep_dir / ".stale" / f"{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(folder), str(dest))
            moved.append(folder.name)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        for folder, text, _ in targets:
            folder.mkdir(parents=True, exist_ok=True)
            p = folder / "recipe.yaml"
            if not p.is_file() or p.read_text() != text:
                p.write_text(text)
        (self.sweep_dir / "sweep.yaml").write_text(self.sweep_file.read_text())
        (self.sweep_dir / PLAN_FILE).write_text(json.dumps(self.to_json(), indent=2, default=str))
        return moved


def default_sweep_dir(spec: SweepSpec) -> Path:
    return Path("sweeps") / str(spec.name)


def override_strings(overrides: dict[str, Any], base_sections: set[str]) -> list[str]:
    """``{key: value}`` -> ``key=value`` texts for ``load_recipe``; ``SECTION: null`` removes a section."""
    out = []
    for k, v in overrides.items():
        if v is None and k in COMPONENT_ROLES:
            if k in base_sections:
                out.append(f"~{k}")
        else:
            out.append(f"{k}={yaml_value(v)}")
    return out


def _versions(resolved) -> dict[str, str]:
    dists = {"illume-kit", "torch", "transformers"} | {rc.spec.dist for rc in resolved.components.values()}
    out = {}
    for d in sorted(dists):
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            pass
    return out


def _check_metrics(spec: SweepSpec) -> list[str]:
    from illume_kit.eval.specs import metric_spec

    problems = []
    for m in spec.metrics:
        name, goal = (m, None) if isinstance(m, str) else (m.name, m.goal)
        if goal is None:
            try:
                metric_spec(name)
            except KeyError as exc:
                problems.append(f"metrics: {exc.args[0]} Give its goal: {{name: {name}, goal: max|min}}")
    return problems


def stage_problems(resolved) -> list[Problem]:
    """Stages that would fail at once: a ``teacher``/``detokenizer`` stage with no such section."""
    out = []
    for i, st in enumerate(resolved.recipe.train.stages):
        if st.target in ("teacher", "detokenizer") and st.target not in resolved.components:
            out.append(
                Problem(
                    f"train.stages.{i}",
                    f"stage {st.name!r} trains the {st.target} but the recipe has no `{st.target}:` section",
                )
            )
    return out


def scale_stages(stages: list[Stage], quick: Quick) -> list[Stage]:
    """``quick.stages`` (all when empty) shortened to ``quick.steps`` of their steps; the warmup and
    checkpoint interval shrink with them, so the schedule keeps its shape."""
    out = []
    for st in stages:
        if quick.stages and st.name not in quick.stages:
            out.append(st)
            continue
        steps = max(1, round(st.steps * quick.steps))
        update = {"steps": steps, "warmup_steps": min(steps, round(st.warmup_steps * quick.steps))}
        if st.checkpoint_every:
            update["checkpoint_every"] = max(1, round(st.checkpoint_every * quick.steps))
        out.append(st.model_copy(update=update))
    return out


def plan_sweep(
    sweep_file: str | Path, sweep_dir: str | Path | None = None, force: bool = False, registry=None, quick: bool = False
) -> Plan:
    """Expand and validate every run of a sweep; raise ``SweepPlanError`` listing every invalid run.
    ``quick``: plan the sweep's ``quick:`` variant (its seeds, its stages shortened)."""
    sweep_file = Path(sweep_file)
    spec, base = load_sweep(sweep_file)
    # the quick variant trains its shared stages into the full sweep's store (when both use their
    # default folders): whichever runs second reuses the tokenizers the first trained
    shared_dir = None
    if quick:
        if sweep_dir is None:
            shared_dir = default_sweep_dir(spec).resolve() / "shared"
        spec = quick_spec(spec, sweep_file)
    problems = _check_metrics(spec)
    if problems:
        raise SweepError(f"{sweep_file}: " + "; ".join(problems))
    total = count_runs(spec)  # before anything is expanded
    if total > HARD_MAX_RUNS or (total > spec.max_runs and not force):
        also = (
            f"; a sweep expands to at most {HARD_MAX_RUNS} runs, whatever max_runs or --force say"
            if total > HARD_MAX_RUNS
            else "; raise max_runs or pass --force"
        )
        raise SweepError(f"{sweep_file}: {total} runs exceed max_runs={spec.max_runs}{also}")
    runs, warnings = expand(spec)
    if len(runs) > spec.max_runs and not force:
        raise SweepError(
            f"{sweep_file}: {len(runs)} runs exceed max_runs={spec.max_runs}; raise max_runs or pass --force"
        )
    if not runs:
        raise SweepError(f"{sweep_file}: the sweep expands to no runs (everything excluded?)")
    sweep_dir = Path(sweep_dir or default_sweep_dir(spec)).resolve()
    if registry is None:
        from illume_kit.core.plugins import get_registry

        registry = get_registry()
    base_data = load_recipe(base, registry=registry, components=False).data
    sections = {k for k, v in base_data.items() if v is not None}
    if "sweep" in base_data:
        sections.add("sweep")
    units = UnitPlanner(base, sweep_dir, spec.shared, spec.share_across_seeds, registry, shared_dir)
    planned: list[PlannedRun] = []
    bad: list[tuple[ExpandedRun, RecipeError]] = []
    stage_names: set[str] = set()
    for run in runs:
        folder = sweep_dir / run.run_id
        body = {k: v for k, v in run.overrides.items() if k != SEED_KEY}
        ov = override_strings(body, sections) + (["~sweep"] if "sweep" in sections else [])
        seed = f"{SEED_KEY}={run.seed}" if run.seed is not None else None
        out = f"run.output_dir={yaml_value(str(folder))}"
        try:
            resolved = load_recipe(base, [*ov, *([seed] if seed else []), out], registry=registry)
            stage_names |= {st.name for st in resolved.recipe.train.stages}
            if quick:
                ov.append(stages_override(scale_stages(resolved.recipe.train.stages, spec.quick)))
                resolved = load_recipe(base, [*ov, *([seed] if seed else []), out], registry=registry)
            if stage_problems(resolved):
                raise RecipeError(str(base), stage_problems(resolved))
            keys, final = units.plan_run(run.run_id, ov, seed, resolved, folder)
            frozen = (
                load_recipe(base, [*final, out], registry=registry)
                if final != [*ov, *([seed] if seed else [])]
                else resolved
            )
        except RecipeError as exc:
            bad.append((run, exc))
            continue
        planned.append(
            PlannedRun(
                run, folder, freeze(frozen), keys, [s.name for s in frozen.recipe.train.stages], _versions(frozen)
            )
        )
    if bad:
        raise SweepPlanError(str(spec.name), bad, len(runs))
    unknown = sorted(set(spec.quick.stages) - stage_names) if quick else []
    if unknown:
        raise SweepError(
            f"{sweep_file}: quick.stages names no stage of any run: {', '.join(unknown)} "
            f"(stages: {', '.join(sorted(stage_names))})"
        )
    return Plan(spec, sweep_file.resolve(), base, sweep_dir, planned, units.units, warnings, quick)


def read_plan(sweep_dir: str | Path) -> dict:
    p = Path(sweep_dir) / PLAN_FILE
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: plan the sweep first (illume-kit sweep plan FILE -o {sweep_dir})")
    return json.loads(p.read_text())
