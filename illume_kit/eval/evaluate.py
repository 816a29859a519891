"""Evaluate a checkpoint on held-out data: reconstruction, codebooks, semantics (and the MLLM tasks).

- ``rec/*``: PSNR / SSIM (data_range 1.0) of images decoded from the tokenizer's codes by the
  composed detokenizer (at the detokenizer's ``output_scale``: a x2 detokenizer is compared with
  the x2 ground truth as ``rec/*`` and, downsampled, with the token-resolution input as ``rec1x/*``);
- ``code/usage/<codebook>``, ``code/perplexity/<codebook>`` over the whole eval set;
- ``sem/cosine``: the tokenizer's semantic reconstruction vs its teacher's features, when it has one;
- ``und/*``, ``gen/*``, ``edit/*``: the unified model's task accuracies, when the recipe asks.

Writes ``metrics.json`` and a PNG grid of originals next to reconstructions.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from illume_kit.eval.metrics import CodebookStats, reconstruction_metrics


def _progress(desc: str, quiet: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn(desc), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), disable=quiet,
                    transient=True)


@torch.no_grad()
def reconstruction(model, dataset, num_samples: int, batch_size: int = 16, quiet: bool = False,
                   decode_options: dict | None = None, grid_path: Path | None = None) -> dict[str, float]:
    tok, det = model.tokenizer.eval(), model.detokenizer
    scale = int(getattr(det, "output_scale", 1)) if det is not None else 1
    stats = {cb.name: CodebookStats(cb.size, cb.name) for cb in tok.codebooks}
    sums: dict[str, float] = {}
    count = 0
    sem = getattr(tok, "semantic_cosine", None)
    shown = None
    n = min(num_samples, len(dataset))
    t_decode = 0.0
    with _progress("eval", quiet) as prog:
        task = prog.add_task("eval", total=n)
        for start in range(0, n, batch_size):
            hi = torch.stack([dataset[i]["image"] for i in range(start, min(n, start + batch_size))])
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
                if shown is None:
                    shown = (hi[:8], rec[:8])
            for k, v in vals.items():
                sums[k] = sums.get(k, 0.0) + float(v.double().sum())
            count += hi.shape[0]
            prog.update(task, advance=hi.shape[0])
    metrics = {k: v / count for k, v in sums.items()}
    for st in stats.values():
        metrics.update(st.as_metrics())
    if det is not None and count:
        metrics["perf/decode_s_per_image"] = t_decode / count
    if grid_path is not None and shown is not None:
        from illume_kit.eval.grid import save_grid

        save_grid(shown[0], shown[1], grid_path)
    return metrics


def evaluate(checkpoint: str | Path, data_overrides: dict[str, Any] | None = None, num_samples: int | None = None,
             split: str = "val", output: str | Path | None = None, quiet: bool = False,
             decode_options: dict | None = None, tasks: bool = True) -> dict[str, Any]:
    from illume_kit.model.checkpoint import load_checkpoint
    from illume_kit.core.recipe import load_recipe
    from illume_kit.data.build import build_dataset

    checkpoint = Path(checkpoint)
    model, manifest = load_checkpoint(checkpoint)
    resolved = load_recipe(checkpoint / "recipe.yaml")
    recipe = resolved.recipe
    n = num_samples or recipe.eval.num_samples
    overrides = dict(data_overrides or {})
    dataset = build_dataset(resolved, split, **overrides)
    out_dir = Path(output) if output else checkpoint.parent / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.run.seed)
    decode_options = decode_options or dict(recipe.eval.options.decode)
    metrics = reconstruction(model, dataset, n, quiet=quiet, decode_options=decode_options,
                             grid_path=out_dir / "reconstructions.png")
    wanted = [m for m in recipe.eval.metrics if m.split("/")[0] in ("und", "gen", "edit", "probe")]
    if tasks and wanted:
        from illume_kit.eval import tasks as task_eval

        metrics.update(task_eval.evaluate_tasks(model, resolved, wanted, n, out_dir=out_dir, quiet=quiet,
                                                dataset=dataset, split=split))
    result = {"checkpoint": str(checkpoint), "recipe": recipe.name, "split": split, "num_samples": n,
              "metrics": metrics}
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    return result
