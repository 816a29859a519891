"""Seconds per image: the `vq` detokenizer (one decoder pass) vs `diffusion` at 10 / 25 / 50 steps.

    PYTHONPATH=. python bench/detokenizer.py                      # tiny presets, CPU
    PYTHONPATH=. python bench/detokenizer.py --device cuda --preset sdxl-like --size 512 --batch 1

Why: a diffusion decoder costs `steps` x (2 with CFG) UNet passes where the VQ decoder costs one;
this puts a number on that price. The vq row uses the real `vqgan` tokenizer at `--tokenizer-preset`
when it builds, else the stand-in `FakeTokenizer`. Diffusion rows use a tokenizer with
`codes_to_maps` (vqgan if it has one, else FakeTokenizer with the same 16-pixel stride): its cost
hardly depends on the tokenizer, only on the code-map width. Weights are random; this times compute.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch
from rich.console import Console
from rich.table import Table

from illume_kit.core.protocols import CodeMaps
from illume_kit.plugins.decoders.diffusion import DiffusionDetokenizer
from illume_kit.plugins.decoders.params import DIFFUSION_PRESETS
from illume_kit.plugins.decoders.vq import VQDetokenizer
from illume_kit.testing.fakes import FakeTokenizer


def real_vqgan(preset: str):
    try:
        from illume_kit.plugins.tokenizers.vqgan.model import VQGAN
        from illume_kit.plugins.tokenizers.vqgan.params import PRESETS

        return VQGAN(VQGAN.Params(**PRESETS[preset]))
    except Exception as e:  # the tokenizer is optional for this bench
        Console(stderr=True).print(f"[yellow]vqgan unavailable ({type(e).__name__}: {e}); using FakeTokenizer[/]")
        return None


def seconds_per_image(fn, batch: int, repeats: int, device: str) -> float:
    fn()  # warm-up (lazy imports, cudnn autotune)
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return min(times) / batch


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", choices=sorted(DIFFUSION_PRESETS), help="diffusion preset")
    ap.add_argument("--tokenizer-preset", default="tiny", help="vqgan preset for the vq baseline")
    ap.add_argument("--size", type=int, default=64, help="pixel size the codes stand for (square)")
    ap.add_argument("--scale", type=int, default=2, choices=[1, 2], help="diffusion output_scale")
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50])
    ap.add_argument("--guidance", type=float, default=1.5, help="CFG scale (1 = no unconditional pass)")
    ap.add_argument("--scheduler", default=None, help="override the preset's scheduler")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = ap.parse_args(argv)
    dev, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    images = torch.rand(args.batch, 3, args.size, args.size, device=dev)

    vq_tok = real_vqgan(args.tokenizer_preset) or FakeTokenizer(semantic=(16, 4, 32), pixel=(512, 8, 16))
    vq_tok = vq_tok.to(dev).eval()
    diff_tok = vq_tok if isinstance(vq_tok, CodeMaps) else FakeTokenizer(pixel=(512, 8, 16))
    diff_tok = diff_tok.to(dev).eval()

    rows = []
    with torch.no_grad():
        vq = VQDetokenizer()
        vq.attach(vq_tok)
        vq_codes = vq_tok.encode(images).codes
        base = seconds_per_image(lambda: vq.decode(vq_codes), args.batch, args.repeats, args.device)
        rows.append(("vq", type(vq_tok).__name__, "-", args.size, base))

        params = dict(DIFFUSION_PRESETS[args.preset], output_scale=args.scale)
        if args.scheduler:
            params["scheduler"] = args.scheduler
        det = DiffusionDetokenizer(DiffusionDetokenizer.Params(**params))
        det.attach(diff_tok)
        det = det.to(dev, dtype).eval()
        codes = diff_tok.encode(images).codes
        for steps in args.steps:
            fn = partial(det.decode, codes, steps=steps, guidance=args.guidance, seed=0)
            s = seconds_per_image(fn, args.batch, args.repeats, args.device)
            rows.append((f"diffusion/{args.preset}", type(diff_tok).__name__, str(steps), args.size * args.scale, s))

    table = Table(title=f"detokenizer seconds per image ({args.device}, {args.dtype}, batch {args.batch}, "
                  f"cfg {args.guidance}, codes for {args.size}px)")  # fmt: skip
    for col in ("detokenizer", "tokenizer", "steps", "output px", "s / image", "x vq"):
        table.add_column(col, justify="left" if col in ("detokenizer", "tokenizer") else "right")
    for name, tok, steps, px, s in rows:
        table.add_row(name, tok, steps, f"{px}", f"{s:.4f}", f"{s / base:.1f}")
    Console().print(table)


if __name__ == "__main__":
    main()
