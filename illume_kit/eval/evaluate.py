"""Evaluate a checkpoint on held-out data: reconstruction, codebooks, semantics (and the MLLM tasks).

- ``rec/*``: PSNR / SSIM (data_range 1.0) of images decoded from the tokenizer's codes by the
  composed detokenizer (at the detokenizer's ``output_scale``: a x2 detokenizer is compared with
  the x2 ground truth as ``rec/*`` and, downsampled, with the token-resolution input as ``rec1x/*``);
- ``code/usage/<codebook>``, ``code/perplexity/<codebook>`` over the whole eval set;
- ``sem/cosine``: the tokenizer's semantic reconstruction vs its teacher's features, when it has one;
- ``und/*``, ``gen/*``, ``edit/*``: the unified model's task accuracies, when the recipe asks.

Writes ``metrics.json`` and a PNG grid of originals next to reconstructions.

Under ``torchrun`` (a process group initialised by the caller) every rank reconstructs every
``world_size``-th image of the eval set and the sums, counts and code histograms are all-reduced, so
the numbers equal one process's up to float summation order; rank 0 writes the files. The task
families (``und``, ``gen``, ``edit``, ``probe``) sample in seeded batches whose draws depend on the
batch, so rank 0 computes them alone over the whole set while the other ranks wait.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from illume_kit.core.protocols import EvalContext, ImagePairs, SemanticScore
from illume_kit.eval.metrics import CodebookStats, reconstruction_metrics


def _progress(desc: str, quiet: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn(desc), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), disable=quiet, transient=True
    )


def ranks() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sum_across_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each value summed over the ranks (in float64); the same keys on every rank."""
    import torch.distributed as dist

    if ranks()[1] == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return dict(zip(keys, t.cpu().tolist(), strict=True))


@torch.no_grad()
def reconstruction(
    model,
    dataset,
    num_samples: int,
    batch_size: int = 16,
    quiet: bool = False,
    decode_options: dict | None = None,
    grid_path: Path | None = None,
    pairs: Sequence[ImagePairs] = (),
) -> dict[str, float]:
    tok, det = model.tokenizer.eval(), model.detokenizer
    scale = int(getattr(det, "output_scale", 1)) if det is not None else 1
    stats = {cb.name: CodebookStats(cb.size, cb.name) for cb in tok.codebooks}
    sums: dict[str, float] = {}
    count = 0
    sem = tok.semantic_cosine if isinstance(tok, SemanticScore) else None
    shown = None
    n = min(num_samples, len(dataset))
    rank, world = ranks()
    if n < world:
        raise ValueError(f"the eval set has {n} images, fewer than the {world} ranks: evaluate on more samples (-n)")
    mine = range(rank, n, world)  # every world-th image: the shards differ in size by at most one
    t_decode = 0.0
    with _progress("eval", quiet or rank != 0) as prog:
        task = prog.add_task("eval", total=len(mine))
        for start in range(0, len(mine), batch_size):
            hi = torch.stack([dataset[i]["image"] for i in mine[start : start + batch_size]])
            lo = F.interpolate(hi, scale_factor=1 / scale, mode="area") if scale != 1 else hi
            out = tok.encode(lo)
            for name, st in stats.items():
                st.update(out.codes[name])
            vals: dict[str, torch.Tensor] = {}
            if sem is not None:
                vals["sem/cosine"] = sem(lo).reshape(-1)
            if det is not None:
                t0 = time.perf_counter()
                rec = det.decode(out.codes, **(decode_options or {}))
                t_decode += time.perf_counter() - t0
                vals.update(reconstruction_metrics(hi, rec))
                if scale != 1:
                    down = F.interpolate(rec, scale_factor=1 / scale, mode="area")
                    vals.update({k.replace("rec/", "rec1x/"): v for k, v in reconstruction_metrics(lo, down).items()})
                for p in pairs:  # ImagePairs metrics (rfid, lpips): a x2 output at the token resolution
                    p.update(lo, down if scale != 1 else rec)
                if shown is None:
                    shown = (hi[:8], rec[:8])
            for k, v in vals.items():
                sums[k] = sums.get(k, 0.0) + float(v.double().sum())
            count += hi.shape[0]
            prog.update(task, advance=hi.shape[0])
    if world > 1:
        totals = sum_across_ranks({**sums, "#count": count, "#decode_s": t_decode})
        count, t_decode = int(totals.pop("#count")), totals.pop("#decode_s")
        sums = totals
        for st in stats.values():
            st.all_reduce()
    metrics = {k: v / count for k, v in sums.items()}
    for st in stats.values():
        metrics.update(st.as_metrics())
    if det is not None and count:
        metrics["perf/decode_s_per_image"] = t_decode / count
    if grid_path is not None and shown is not None and rank == 0:
        from illume_kit.eval.grid import save_grid

        save_grid(shown[0], shown[1], grid_path)
    return metrics


def compute_metrics(ctx: EvalContext, registry=None, tasks: bool = True) -> tuple[dict[str, float], dict[str, str]]:
    """The reconstruction pass (always), then each metric family ``eval.metrics`` names, built from the
    registry; returns (metrics, goals of the names illume-kit's own metric table does not know)."""
    from illume_kit.core.plugins import get_registry
    from illume_kit.eval.families import RECONSTRUCTION, TASKS, family_of
    from illume_kit.eval.specs import metric_spec

    registry = registry or get_registry()
    # built before the reconstruction pass: the ImagePairs among them are fed its batches. The pass
    # reports its own families whether named or not; the task families run on rank 0 alone, every
    # other family on every rank (they reduce their state over the ranks when computed)
    built = ctx.cache.setdefault("metric_families", {})
    wanted = [
        fam
        for fam in dict.fromkeys(family_of(m) for m in ctx.metrics)
        if not (fam in RECONSTRUCTION or (fam in TASKS and (not tasks or ranks()[0] != 0)))
    ]
    wanted.sort(key=lambda fam: fam in TASKS)  # the ranks reduce together before rank 0 runs the tasks alone
    for fam in wanted:
        if fam not in built:
            built[fam] = _family(registry, fam, ctx.metric_params.get(fam))
    _family(registry, "rec").compute(ctx)
    named: dict[str, float] = {}
    goals: dict[str, str] = {}
    for fam in wanted:
        metric = built[fam]
        ctx.names = tuple(m for m in ctx.metrics if family_of(m) == fam)
        for k, v in metric.compute(ctx).items():
            named[k] = float(v)
            try:
                metric_spec(k)
            except KeyError:
                goals[k] = metric.goal
    in_task_order = {k: named[k] for k in ctx.cache.get("tasks", {}) if k in named}
    metrics = {**ctx.cache["reconstruction"], **in_task_order, **named}
    return metrics, goals


def _family(registry, name: str, params: Mapping[str, Any] | None = None):
    from illume_kit.core.protocols import Metric

    spec = registry.get("metric", name)
    metric = spec.load()(spec.load_params()(**dict(params or {})))
    if not isinstance(metric, Metric):
        raise TypeError(f"metric {name!r} from {spec.dist} is not a Metric (needs Params, goal and compute(ctx))")
    return metric


def evaluate(
    checkpoint: str | Path,
    data_overrides: dict[str, Any] | None = None,
    num_samples: int | None = None,
    split: str = "val",
    output: str | Path | None = None,
    quiet: bool = False,
    decode_options: dict | None = None,
    tasks: bool = True,
    dataset: str | None = None,
    metrics: Sequence[str] | None = None,
    metric_params: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Metrics of ``checkpoint`` on the recipe's ``split`` (or on the registered dataset named
    ``dataset``, built from ``data_overrides``); writes ``metrics.json`` to ``output``.

    ``metrics``: the names to compute and report (default: the recipe's ``eval.metrics``, reported
    with every reconstruction family); ``metric_params``: family -> params over ``eval.metric_params``."""
    from illume_kit.core.recipe import load_recipe
    from illume_kit.data.build import build_dataset
    from illume_kit.model.checkpoint import load_checkpoint

    checkpoint = Path(checkpoint)
    model, manifest = load_checkpoint(checkpoint)
    resolved = load_recipe(checkpoint / "recipe.yaml")
    recipe = resolved.recipe
    n = recipe.eval.num_samples if num_samples is None else int(num_samples)
    if n < 1:
        raise ValueError(f"num_samples {num_samples}: evaluation needs at least one sample")
    overrides = dict(data_overrides or {})
    data = build_dataset(resolved, split, dataset, **overrides)
    if hasattr(data, "head") and not hasattr(data, "__len__"):
        data = data.head(n)  # a stream: its first n records in storage order, as a list
    out_dir = Path(output) if output else checkpoint.parent / "eval"
    rank, world = ranks()
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    before = _stamps(out_dir) if rank == 0 else {}
    torch.manual_seed(recipe.run.seed)
    decode_options = decode_options or dict(recipe.eval.options.decode)
    ctx = EvalContext(
        model,
        resolved,
        data,
        n,
        split,
        metrics=tuple(recipe.eval.metrics if metrics is None else metrics),
        options=recipe.eval.options,
        decode=decode_options,
        out_dir=out_dir if rank == 0 else None,
        quiet=quiet or rank != 0,
        metric_params=merge_metric_params(recipe.eval.metric_params, metric_params),
    )
    chosen = metrics
    metrics, goals = compute_metrics(ctx, tasks=tasks)
    if chosen is not None:
        from illume_kit.eval.specs import selected

        metrics = {k: v for k, v in metrics.items() if selected(k, tuple(chosen))}
        goals = {k: v for k, v in goals.items() if k in metrics}
    if world > 1:  # rank 0 holds the task families too: every rank returns its result
        import torch.distributed as dist

        box = [(metrics, goals)]
        dist.broadcast_object_list(box, src=0)
        metrics, goals = box[0]
        if rank != 0:
            return {"metrics": metrics, "goals": goals, "rank": rank}
    written = sorted(k for k, v in _stamps(out_dir).items() if before.get(k) != v)
    result = {
        "checkpoint": str(checkpoint),
        "recipe": recipe.name,
        "dataset": dataset or _recipe_dataset(resolved),
        "split": split,
        "world_size": world,
        "num_samples": n,
        "torch_threads": torch.get_num_threads(),
        "output_dir": str(out_dir),
        "files": sorted({*written, "metrics.json"}),
        "metrics": metrics,
    }
    if goals:
        result["goals"] = goals
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    return result


def _recipe_dataset(resolved) -> str | None:
    rc = resolved.components.get("data")
    return rc.spec.name if rc is not None else None


def merge_metric_params(
    base: Mapping[str, Mapping[str, Any]], over: Mapping[str, Mapping[str, Any]] | None
) -> dict[str, dict[str, Any]]:
    """Per family, the keys of ``over`` (the command line) over those of ``base`` (the recipe)."""
    out = {k: dict(v) for k, v in base.items()}
    for fam, params in (over or {}).items():
        out.setdefault(fam, {}).update(params)
    return out


def _stamps(folder: Path) -> dict[str, int]:
    """File name -> modification time: what changed between two calls is what a run wrote."""
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()}
