"""Diffusion decoding: PSNR and seconds per image of each scheduler and step count against DDIM 50 steps.

    PYTHONPATH=. python bench/detokenizer.py --checkpoint runs/diffusion_siglip_2x2_tiny/checkpoint
    PYTHONPATH=. python bench/detokenizer.py                      # random tiny presets: time only, + vq
    PYTHONPATH=. python bench/detokenizer.py --device cuda --preset sdxl-like --size 512 --batch 1

With ``--checkpoint`` (a trained model with a `diffusion` detokenizer, e.g. the output of
recipes/detokenizers/diffusion_siglip_2x2_tiny.yaml): the recipe's held-out images are encoded by
the checkpoint's tokenizer and decoded by each scheduler at each step count from the same seeds;
PSNR is against the ground-truth image at the decoder's output size, and against the reference
decode (DDIM 50 steps) itself. The fastest setting within 0.5 dB of the reference's PSNR is
marked: fewest denoiser passes first (the cost that does not depend on the machine's load), then
the highest PSNR, then measured time. Every scheduler samples the checkpoint's UNet unchanged (decode(scheduler=...)).

Without ``--checkpoint``: random weights, seconds only (a diffusion decoder costs `steps` x (2 with
CFG) UNet passes where the VQ decoder costs one); the vq row uses the real `vqgan` tokenizer at
`--tokenizer-preset` when it builds, else the stand-in `FakeTokenizer`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from illume_kit.core.protocols import CodeMaps
from illume_kit.core.registry import RegistryError
from illume_kit.plugins.decoders.diffusion import DiffusionDetokenizer
from illume_kit.plugins.decoders.params import DIFFUSION_PRESETS, SCHEDULERS
from illume_kit.plugins.decoders.vq import VQDetokenizer
from illume_kit.testing.fakes import FakeTokenizer

REFERENCE = ("ddim", 50)
MAX_DB_COST = 0.5


def real_vqgan(preset: str):
    try:
        from illume_kit.plugins.tokenizers.vqgan.model import VQGAN
        from illume_kit.plugins.tokenizers.vqgan.params import PRESETS

        return VQGAN(VQGAN.Params(**PRESETS[preset]))
    except Exception as e:  # the tokenizer is optional for this bench
        Console(stderr=True).print(f"[yellow]vqgan unavailable ({type(e).__name__}: {e}); using FakeTokenizer[/]")
        return None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def seconds_per_image(fn, batch: int, repeats: int, device: str) -> float:
    fn()  # warm-up (lazy imports, cudnn autotune)
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return min(times) / batch


def settings(schedulers: list[str], steps: list[int]) -> list[tuple[str, int]]:
    """The reference first, then every (scheduler, steps) of the grid but it."""
    grid = [(s, n) for s in schedulers for n in steps]
    return [REFERENCE] + [g for g in grid if g != REFERENCE]


def fastest_within(rows: list[dict], max_cost: float = MAX_DB_COST) -> dict | None:
    """The row (not the reference) within ``max_cost`` dB of the reference's PSNR with the fewest
    denoiser passes, then the highest PSNR (at equal passes the schedulers cost the same but for
    noise in the timing), then the least measured time; None when none is that close."""
    ref = rows[0]
    ok = [r for r in rows[1:] if r["psnr"] >= ref["psnr"] - max_cost and not r.get("compiled")]
    return min(ok, key=lambda r: (r["steps"], -round(r["psnr"], 2), r["s_per_image"])) if ok else None


# ---- a trained checkpoint -----------------------------------------------------------------------
def load_images(checkpoint: Path, split: str, n: int) -> torch.Tensor:
    from illume_kit.core.recipe import load_recipe
    from illume_kit.data.build import build_dataset

    data = build_dataset(load_recipe(checkpoint / "recipe.yaml"), split)
    if hasattr(data, "head") and not hasattr(data, "__len__"):
        data = data.head(n)
    n = min(n, len(data))
    if n < 1:
        raise ValueError(f"{checkpoint / 'recipe.yaml'}: its {split!r} split has no images")
    return torch.stack([data[i]["image"] for i in range(n)])


def bench_checkpoint(args) -> tuple[list[dict], str]:
    from illume_kit.eval.metrics import psnr
    from illume_kit.model.checkpoint import load_checkpoint

    folder = Path(args.checkpoint)
    model, _ = load_checkpoint(folder)
    det = model.detokenizer
    if not isinstance(det, DiffusionDetokenizer):
        name = type(det).__name__ if det is not None else "no detokenizer"
        raise ValueError(f"--checkpoint {folder}: has {name}; this bench needs a `diffusion` detokenizer")
    dev, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model = model.to(dev).eval()
    det.to(dtype)
    tok, scale = model.tokenizer, det.output_scale
    guidance = det.params.guidance_scale if args.guidance is None else args.guidance
    hi = load_images(folder, args.split, args.num_images)
    batches = []
    with torch.no_grad():
        for start in range(0, len(hi), args.batch):
            x = hi[start : start + args.batch].to(dev)
            lo = F.interpolate(x, scale_factor=1 / scale, mode="area") if scale != 1 else x
            batches.append((x, tok.encode(lo).codes))

    def decode_all(scheduler: str, steps: int, compiled: bool = False) -> tuple[torch.Tensor, float]:
        outs, total = [], 0.0
        for b, (_, codes) in enumerate(batches):
            _sync(args.device)
            t = time.perf_counter()
            out = det.decode(
                codes, steps=steps, guidance=guidance, seed=args.seed + b, scheduler=scheduler, compile=compiled
            )
            _sync(args.device)
            total += time.perf_counter() - t
            outs.append(out.float().cpu())
        return torch.cat(outs), total / len(hi)

    truth = torch.cat([x.float().cpu() for x, _ in batches])
    with torch.no_grad():
        for scheduler in dict.fromkeys(s for s, _ in settings(args.schedulers, args.steps)):
            det.decode(batches[0][1], steps=2, guidance=guidance, seed=0, scheduler=scheduler)  # warm-up
        rows, ref_out = [], None

        def measure(scheduler: str, steps: int, compiled: bool = False) -> None:
            nonlocal ref_out
            best = None
            for _ in range(args.repeats):
                out, s = decode_all(scheduler, steps, compiled)
                best = s if best is None else min(best, s)
            ref_out = out if ref_out is None else ref_out
            rows.append(
                dict(
                    scheduler=scheduler,
                    steps=steps,
                    compiled=compiled,
                    psnr=float(psnr(truth, out).mean()),
                    psnr_vs_reference=float(psnr(ref_out, out).clamp(max=99.0).mean()),
                    s_per_image=best,
                )
            )

        for scheduler, steps in settings(args.schedulers, args.steps):
            measure(scheduler, steps)
        if args.compile:  # the fastest eager setting again, its UNet compiled (compiling is the warm-up)
            pick = fastest_within(rows) or rows[0]
            det.decode(batches[0][1], steps=2, guidance=guidance, seed=0, scheduler=pick["scheduler"], compile=True)
            measure(pick["scheduler"], pick["steps"], compiled=True)
    title = (
        f"diffusion decode of {folder} ({len(hi)} {args.split} images, {args.device}, {args.dtype}, "
        f"batch {args.batch}, cfg {guidance}, {torch.get_num_threads()} threads)"
    )
    return rows, title


def print_checkpoint_table(rows: list[dict], title: str) -> dict | None:
    ref, best = rows[0], fastest_within(rows)
    table = Table(title=title)
    cols = ("scheduler", "steps", "PSNR dB", "Δ dB", "PSNR vs ref output", "s / image", "speed-up", "")
    for col in cols:
        table.add_column(col, justify="left" if col in ("scheduler", "") else "right")
    for r in rows:
        mark = "reference (DDIM-50)" if r is ref else (f"<- fastest at <= {MAX_DB_COST} dB cost" if r is best else "")
        mark = "the fastest, UNet compiled" if r.get("compiled") else mark
        vs_ref = "-" if r is ref else f"{r['psnr_vs_reference']:.2f}"
        table.add_row(
            r["scheduler"] + (" (compiled)" if r.get("compiled") else ""),
            str(r["steps"]),
            f"{r['psnr']:.2f}",
            f"{r['psnr'] - ref['psnr']:+.2f}",
            vs_ref,
            f"{r['s_per_image']:.4f}",
            f"{ref['s_per_image'] / r['s_per_image']:.2f}x",
            mark,
        )
    console = Console(width=140)
    console.print(table)
    if best is None:
        console.print(f"no setting is within {MAX_DB_COST} dB of DDIM-50")
    return best


# ---- random weights, time only --------------------------------------------------------------------
def bench_random(args) -> None:
    dev, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    images = torch.rand(args.batch, 3, args.size, args.size, device=dev)
    guidance = 1.5 if args.guidance is None else args.guidance

    vq_tok = real_vqgan(args.tokenizer_preset) or FakeTokenizer(semantic=(16, 4, 32), pixel=(512, 8, 16))
    vq_tok = vq_tok.to(dev).eval()
    diff_tok = vq_tok if isinstance(vq_tok, CodeMaps) else FakeTokenizer(pixel=(512, 8, 16))
    diff_tok = diff_tok.to(dev).eval()

    rows = []
    with torch.no_grad():
        params = dict(DIFFUSION_PRESETS[args.preset], output_scale=args.scale)
        det = DiffusionDetokenizer(DiffusionDetokenizer.Params(**params))
        det.attach(diff_tok)
        det = det.to(dev, dtype).eval()
        codes = diff_tok.encode(images).codes
        for scheduler, steps in settings(args.schedulers, args.steps):

            def fn(scheduler=scheduler, steps=steps):
                return det.decode(codes, steps=steps, guidance=guidance, seed=0, scheduler=scheduler)

            s = seconds_per_image(fn, args.batch, args.repeats, args.device)
            rows.append((f"diffusion/{args.preset}", scheduler, str(steps), args.size * args.scale, s))

        vq = VQDetokenizer()
        vq.attach(vq_tok)
        vq_codes = vq_tok.encode(images).codes
        s = seconds_per_image(lambda: vq.decode(vq_codes), args.batch, args.repeats, args.device)
        rows.append((f"vq ({type(vq_tok).__name__})", "-", "-", args.size, s))

    ref = rows[0][-1]
    table = Table(title=f"detokenizer seconds per image, random weights ({args.device}, {args.dtype}, batch "
                  f"{args.batch}, cfg {guidance}, codes for {args.size}px, tokenizer {type(diff_tok).__name__})")  # fmt: skip
    for col in ("detokenizer", "scheduler", "steps", "output px", "s / image", "speed-up vs DDIM-50"):
        table.add_column(col, justify="left" if col in ("detokenizer", "scheduler") else "right")
    for name, scheduler, steps, px, s in rows:
        table.add_row(name, scheduler, steps, f"{px}", f"{s:.4f}", f"{ref / s:.2f}x")
    Console(width=140).print(table)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="a trained checkpoint folder with a diffusion detokenizer")
    ap.add_argument("--split", default="val", help="--checkpoint: the recipe's data split to decode")
    ap.add_argument("--num-images", type=int, default=32, help="--checkpoint: held-out images decoded per row")
    ap.add_argument("--schedulers", nargs="+", default=["ddim", "dpm-solver++", "unipc"], choices=SCHEDULERS)
    ap.add_argument("--steps", type=int, nargs="+", default=[3, 5, 10, 25], help="step counts (DDIM 50 is always run)")
    ap.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the decoder's; 1 = none)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the first batch's noise (batch b: seed + b)")
    ap.add_argument("--preset", default="tiny", choices=sorted(DIFFUSION_PRESETS), help="random: diffusion preset")
    ap.add_argument("--tokenizer-preset", default="tiny", help="random: vqgan preset for the vq row")
    ap.add_argument("--size", type=int, default=64, help="random: pixel size the codes stand for (square)")
    ap.add_argument("--scale", type=int, default=2, choices=[1, 2], help="random: diffusion output_scale")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1, help="timing: the fastest of this many runs")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--compile", action="store_true", help="--checkpoint: also time the fastest setting compiled")
    ap.add_argument("--json", default=None, help="--checkpoint: also write the rows to this JSON file")
    args = ap.parse_args(argv)
    if min(args.steps) < 1 or args.batch < 1 or args.repeats < 1 or args.num_images < 1:
        ap.error("--steps, --batch, --repeats and --num-images must be positive")
    if args.checkpoint is None:
        bench_random(args)
        return 0
    try:
        rows, title = bench_checkpoint(args)
    except (OSError, ValueError, RegistryError) as exc:  # a bad folder or recipe: one line, status 2
        print(f"error: {exc}", file=sys.stderr)
        return 2
    best = print_checkpoint_table(rows, title)
    if args.json:
        Path(args.json).write_text(json.dumps({"title": title, "rows": rows, "fastest": best}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
