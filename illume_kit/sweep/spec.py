"""What a sweep file says: a base recipe and axes of overrides, validated before anything expands.

A sweep is a YAML file (or the ``sweep:`` block of a recipe) whose axes use the same dotted keys as
``illume-kit train recipe.yaml key=value`` overrides, so there is one syntax to learn (wandb's
nested ``parameters:`` is the trap this avoids)::

    base: ../dualvitok_qwen2_mllm_tiny.yaml        # relative to this file
    overrides: {train.stages.0.steps: 50}          # fixed, applied to every run
    grid:      {model.image_input: [continuous, discrete], backbone.params.num_layers: [2, 4]}
    zip:       [{tokenizer.params.pixel_codebook_size: [256, 1024], backbone.params.vocab_size: [512, 2048]}]
    variants:  [{name: vqgan, overrides: {tokenizer: {name: vqgan, preset: tiny}, teacher: null}}]
    seeds:     [0, 1]
    exclude:   [{model.image_input: discrete, backbone.params.num_layers: 4}]
    max_runs:  64
    metrics:   [rec/psnr, {name: und/accuracy, goal: max}]
    shared:    auto                                 # or [teacher, tokenizer], or []
    quick:     {seeds: [0], steps: 0.5, stages: [mllm]}   # what `sweep run --quick` changes

A mapping value is flattened into dotted keys (``tokenizer: {name: vqgan, preset: tiny}`` is
``tokenizer.name=vqgan tokenizer.preset=tiny``, so the new component name drops the old one's
params, as on the command line); lists are whole values; ``SECTION: null`` removes a component
section (``teacher: null``). Every mistake in the file is reported at once (pydantic, unknown keys
rejected), as for recipes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from illume_kit.core import yamlio
from illume_kit.core.schema import COMPONENT_ROLES, check_name

RESERVED = {"variant"}  # exclude entries may name a variant
SEED_KEY = "run.seed"
SWEEP_OWNED = {"run.output_dir"}  # the sweep decides where each run writes


class SweepError(ValueError):
    """A sweep file that cannot be expanded; ``str()`` lists every problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Variant(_Strict):
    name: str = Field(description="a short label for the results table")
    overrides: dict[str, Any] = Field(default_factory=dict, description="dotted key -> value, applied to the base")


class MetricGoal(_Strict):
    name: str = Field(
        description="metric key in metrics.json, e.g. rec/psnr (a prefix such as code/usage "
        "matches code/usage/<codebook>)"
    )
    goal: Literal["max", "min"] | None = Field(None, description="better direction; default from the metric spec")
    fmt: str | None = Field(None, description="format spec, e.g. .3f; default from the metric spec")


class Quick(_Strict):
    """``sweep run --quick``: the same arms on fewer seeds and steps, in ``SWEEP_DIR`` ``sweeps/<name>_quick``."""

    seeds: list[int] | None = Field(None, description="the quick sweep's seeds (default: the first of `seeds`)")
    steps: float = Field(
        0.5, gt=0, le=1, description="fraction of each scaled stage's steps (its warmup and checkpoint_every follow)"
    )
    stages: list[str] = Field(
        default_factory=list, description="names of the stages to scale (default: every stage of every run)"
    )


class SweepSpec(_Strict):
    name: str | None = Field(None, description="sweep name (default: the file's stem); SWEEP_DIR is sweeps/<name>")
    description: str = ""
    base: str | None = Field(
        None,
        description="the recipe every run starts from, relative to this file (omit in a recipe's own `sweep:` block)",
    )
    overrides: dict[str, Any] = Field(default_factory=dict, description="fixed overrides applied to every run")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="key -> values; runs are the product")
    zip: list[dict[str, list[Any]]] = Field(
        default_factory=list, description="groups of equal-length lists that vary together"
    )
    variants: list[Variant] = Field(default_factory=list, description="named override sets, appended to the grid")
    seeds: list[int] = Field(default_factory=list, description="values of run.seed; every run is crossed with them")
    exclude: list[dict[str, Any]] = Field(
        default_factory=list, description="partial overrides; a run matching all of one entry is dropped"
    )
    max_runs: int = Field(64, ge=1, description="refuse to expand past this many runs without --force")
    metrics: list[str | MetricGoal] = Field(
        default_factory=list, description="metrics to report (default: every metric found)"
    )
    stages: list[Literal["train", "eval"]] = Field(
        default_factory=lambda: ["train", "eval"], description="what each run does: train its stages, evaluate"
    )
    shared: Literal["auto"] | list[str] = Field(
        "auto",
        description="stages trained once per distinct content and shared by runs (auto: the leading "
        "teacher/tokenizer stages; []: none)",
    )
    share_across_seeds: bool = Field(
        False,
        description="shared stages ignore the seed axis (trained with the base recipe's seed) instead of once per seed",
    )
    quick: Quick | None = Field(
        None,
        description="what --quick changes: {seeds, steps (a fraction), stages (names)}; a fast check of the "
        "ranking before the full sweep",
    )
    slurm: dict[str, Any] = Field(
        default_factory=dict,
        description="submitit executor parameters for "
        "--launcher slurm, e.g. {slurm_partition: gpu, timeout_min: 120, gpus_per_node: 8}; with gpus_per_node > 1 "
        "a train step runs under torchrun, one process per GPU (the recipe's parallelism)",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return v if v is None else check_name(v, "sweep name")

    @field_validator("grid")
    @classmethod
    def _grid_values(cls, v: dict[str, list]) -> dict[str, list]:
        empty = [k for k, vals in v.items() if not vals]
        if empty:
            raise ValueError(f"grid axes with no values: {', '.join(empty)}")
        return v

    @field_validator("zip")
    @classmethod
    def _zip_lengths(cls, v: list[dict[str, list]]) -> list[dict[str, list]]:
        for i, group in enumerate(v):
            lengths = {k: len(vals) for k, vals in group.items()}
            if not group or len(set(lengths.values())) != 1 or 0 in lengths.values():
                shown = ", ".join(f"{k}: {n}" for k, n in lengths.items()) or "empty"
                raise ValueError(f"zip group {i} needs non-empty lists of equal length ({shown})")
        return v

    @model_validator(mode="after")
    def _axes_disjoint(self) -> SweepSpec:
        owners: dict[str, list[str]] = {}
        sources = [
            ("overrides", list(flatten(self.overrides))),
            ("grid", [_axis_key(k) for k in self.grid]),
            *((f"zip[{i}]", [_axis_key(k) for k in g]) for i, g in enumerate(self.zip)),
        ]
        for where, keys in sources:
            for k in keys:
                owners.setdefault(k, []).append(where)
        problems = [f"{k} is set by {' and '.join(w)}" for k, w in owners.items() if len(w) > 1]
        for k in owners:
            if k == SEED_KEY:
                problems.append("run.seed is swept with `seeds:`, not as an axis or override")
            if k in SWEEP_OWNED:
                problems.append(f"{k} is set by the sweep (SWEEP_DIR/<run_id>); do not override it")
            if k.split(".")[0] in RESERVED:
                problems.append(f"{k}: 'variant' is reserved for exclude entries")
        names = [v.name for v in self.variants]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            problems.append(f"variant names must be unique: {', '.join(dup)}")
        if len(set(self.seeds)) != len(self.seeds):
            problems.append("seeds must be unique")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def metric_names(self) -> list[str]:
        return [m if isinstance(m, str) else m.name for m in self.metrics]


def normalise_key(key: str, value: Any = None) -> str:
    """``tokenizer`` with a plain value means ``tokenizer.name`` (as on the command line)."""
    key = key.strip()
    if key in COMPONENT_ROLES and value is not None and not isinstance(value, dict):
        return f"{key}.name"
    return key


def _axis_key(key: str) -> str:
    key = key.strip()
    return f"{key}.name" if key in COMPONENT_ROLES else key


def flatten(overrides: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Mappings become dotted keys (recursively); lists and scalars are leaf values."""
    out: dict[str, Any] = {}
    for k, v in overrides.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[normalise_key(key, v)] = v
    return out


def _problem_lines(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "<sweep>"
        if err["type"] == "extra_forbidden":
            msg = f"unknown key (valid: {', '.join(SweepSpec.model_fields)})"
        else:
            msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {loc}: {msg}")
    return lines


def load_sweep(path: str | Path) -> tuple[SweepSpec, Path]:
    """Read a sweep file, or a recipe with a ``sweep:`` block; returns (spec, base recipe path).

    A file with an ``illume_kit:`` key is a recipe: its ``sweep:`` block is the spec and the file
    itself is the base. Otherwise the file is the spec (optionally wrapped in one ``sweep:`` key).
    """
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {str(path)!r} does not exist")
    try:
        data = yamlio.safe_load(path.read_text(), str(path)) or {}
    except yamlio.YamlError as exc:
        raise SweepError(str(exc)) from None
    except yaml.YAMLError as exc:
        raise SweepError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SweepError(f"{path} must be a YAML mapping, not a {type(data).__name__}")
    in_recipe = "illume_kit" in data
    if in_recipe:
        block = data.get("sweep")
        if not isinstance(block, dict):
            raise SweepError(f"{path} is a recipe without a `sweep:` block (a mapping of sweep settings)")
    else:
        block = data["sweep"] if set(data) == {"sweep"} and isinstance(data["sweep"], dict) else data
    try:
        spec = SweepSpec.model_validate(block)
    except ValidationError as exc:
        n = exc.error_count()
        raise SweepError("\n".join([f"{path}: {n} problem{'s' if n != 1 else ''}", *_problem_lines(exc)])) from None
    if in_recipe:
        if spec.base is not None:
            raise SweepError(f"{path}: a recipe's own `sweep:` block has no `base:` (the recipe is the base)")
        base = path
    else:
        if spec.base is None:
            raise SweepError(f"{path}: `base:` is missing (the recipe every run starts from, relative to this file)")
        base = path.parent / spec.base
        if not base.is_file() and Path(spec.base).is_file():
            base = Path(spec.base)
        if not base.is_file():
            raise SweepError(f"{path}: base recipe {spec.base!r} not found (looked in {path.parent})")
    if spec.name is None:
        try:
            spec = spec.model_copy(update={"name": check_name(path.stem, "sweep name (the file's stem)")})
        except ValueError as exc:
            raise SweepError(f"{path}: {exc}; give the sweep a `name:`") from None
    return spec, base.resolve()


QUICK_SUFFIX = "_quick"


def quick_spec(spec: SweepSpec, path: str | Path) -> SweepSpec:
    """The spec ``--quick`` runs: the ``quick:`` block's seeds, and a name of its own (its own folder)."""
    if spec.quick is None:
        raise SweepError(
            f"{path}: --quick needs a `quick:` block in the sweep, e.g. quick: {{seeds: [0], steps: 0.5, "
            "stages: [mllm]}"
        )
    seeds = spec.quick.seeds if spec.quick.seeds is not None else spec.seeds[:1]
    return spec.model_copy(update={"seeds": list(seeds), "name": f"{spec.name}{QUICK_SUFFIX}"})
