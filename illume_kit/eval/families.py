"""The built-in metric families, each a registered ``metric`` component (see ``core.protocols.Metric``).

The reconstruction families (``rec``, ``rec1x``, ``code``, ``sem``, ``perf``) come from one pass over
the eval set, and the task families (``und``, ``gen``, ``edit``, ``probe``) from one task
evaluation: the first family of a pass to run fills ``ctx.cache`` and the others read it. ``eval``
always runs the reconstruction pass; the task families run when ``eval.metrics`` names them. The
image-distribution families (``rfid``, ``lpips``, ``fid``, ``clip-score``) are in ``image_metrics``.
"""

from __future__ import annotations

from collections.abc import Mapping

from illume_kit.core.params import NoParams
from illume_kit.core.protocols import EvalContext

RECONSTRUCTION = ("rec", "rec1x", "code", "sem", "perf")
TASKS = ("und", "gen", "edit", "probe")


def family_of(name: str) -> str:
    return name.split("/", 1)[0]


class _Family:
    Params = NoParams
    goal = "max"
    family = ""
    also: tuple[str, ...] = ()  # families computed on the way and reported with this one

    def __init__(self, params: NoParams | None = None) -> None:
        self.params = params or NoParams()

    def _pass(self, ctx: EvalContext) -> Mapping[str, float]:
        raise NotImplementedError

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        keep = (self.family, *self.also)
        return {k: v for k, v in self._pass(ctx).items() if family_of(k) in keep}


class _ReconstructionPass(_Family):
    def _pass(self, ctx: EvalContext) -> Mapping[str, float]:
        if "reconstruction" not in ctx.cache:
            from illume_kit.eval.evaluate import reconstruction
            from illume_kit.eval.image_metrics import pair_metrics

            grid = ctx.out_dir / "reconstructions.png" if ctx.out_dir is not None else None
            ctx.cache["reconstruction"] = reconstruction(
                ctx.model,
                ctx.dataset,
                ctx.num_samples,
                quiet=ctx.quiet,
                decode_options=dict(ctx.decode),
                grid_path=grid,
                pairs=pair_metrics(ctx),
            )
        return ctx.cache["reconstruction"]


class Reconstruction(_ReconstructionPass):
    family = "rec"


class Reconstruction1x(_ReconstructionPass):
    family = "rec1x"


class CodebookUsage(_ReconstructionPass):
    family = "code"


class SemanticCosine(_ReconstructionPass):
    family = "sem"


class DecodeTime(_ReconstructionPass):
    family = "perf"
    goal = "min"


class _TaskPass(_Family):
    def _pass(self, ctx: EvalContext) -> Mapping[str, float]:
        if "tasks" not in ctx.cache:
            from illume_kit.eval.tasks import evaluate_tasks

            wanted = [m for m in ctx.metrics if family_of(m) in TASKS]
            ctx.cache["tasks"] = evaluate_tasks(
                ctx.model,
                ctx.resolved,
                wanted,
                ctx.num_samples,
                out_dir=ctx.out_dir,
                quiet=ctx.quiet,
                dataset=ctx.dataset,
                split=ctx.split,
            )
        return ctx.cache["tasks"]


class Understanding(_TaskPass):
    family = "und"


class Generation(_TaskPass):
    family = "gen"
    also = ("probe",)  # the probe's reading of the ground truth and of its reconstructions: the ceilings


class Editing(_TaskPass):
    family = "edit"
    also = ("probe",)


class Probe(_TaskPass):
    family = "probe"
