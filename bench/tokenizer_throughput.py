"""Encode and decode throughput (images/s) of each tokenizer preset at several resolutions.

    python bench/tokenizer_throughput.py                          # tiny presets, 64/256/512 px, CPU
    python bench/tokenizer_throughput.py --presets tiny official --sizes 256 --device cuda
    python bench/tokenizer_throughput.py --paths                  # DualViTok inference paths, tiny
    python bench/tokenizer_throughput.py --paths --presets official --sizes 256 --batches 1

Random weights (throughput does not depend on training). The first row of each size is the
baseline (vqgan) and the ratio column compares every tokenizer with it, measured in the same run.
Semantic-only tokenizers have no pixel decoder: their decode column is empty.

``--paths`` prints one table for DualViTok's inference paths (``DualViTok.set_inference``) against
the eager fp32 path measured in the same run, at each size and batch: encode and decode img/s, the
encode+decode speed-up, and the precision cost: how many semantic and pixel codes equal the fp32
codes of the same images, and the PSNR of the path's decode of the fp32 codes against the fp32
decode ("exact": identical). Compilation happens in the warm-up call, outside the timed loop; its
time is the "first call" column (encode + decode). The timed rounds cycle through the paths and
each path keeps its best round, so that other load on the machine affects the paths alike.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from functools import partial

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from illume_kit.core.plugins import get_registry  # noqa: E402
from illume_kit.model.compose import build_component  # noqa: E402

TOKENIZERS = ("vqgan", "dualvitok", "siglip")


def build(name: str, preset: str, device: str):
    spec = get_registry().get("tokenizer", name)
    params = spec.load_params().model_validate(spec.load_presets()[preset])
    torch.manual_seed(0)
    return build_component(spec, params).to(device).eval()


def nearest_size(tok, size: int) -> int | None:
    """``size`` if the tokenizer takes it, else the largest smaller side it takes (SigLIP: multiples of 14)."""
    for s in range(size, size // 2, -1):
        try:
            tok.grid(s, s)
            return s
        except ValueError:
            continue
    return None


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def rate(fn, batch: int, device: str, min_time: float, warm: bool = True) -> float:
    if warm:
        fn()
    sync(device)
    n, start = 0, time.perf_counter()
    while True:
        fn()
        sync(device)
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return n * batch / elapsed


# (row name, DualViTok.set_inference arguments); the first is the reference
PATHS = (
    ("eager fp32 (reference)", {}),
    ("channels-last", {"channels_last": True}),
    ("compiled", {"compile": True}),
    ("bf16 autocast", {"precision": "bf16"}),
    ("compiled + bf16", {"compile": True, "precision": "bf16"}),
)


def timed_first(fn, device: str):
    """(result, seconds) of one call: the warm-up, where compilation happens."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def psnr(a: torch.Tensor, b: torch.Tensor) -> str:
    mse = (a.float() - b.float()).pow(2).mean().item()
    return "exact" if mse == 0 else f"{10 * math.log10(1 / mse):.1f}"


@torch.no_grad()
def paths_table(args) -> None:
    dev = args.device
    where = torch.cuda.get_device_name() if dev.startswith("cuda") else "CPU"
    t = Table(
        title=f"DualViTok inference paths on {where}, {torch.get_num_threads()} threads, "
        f"random weights, against eager fp32 in the same run"
    )
    cols = ("preset", "size", "batch", "path", "encode img/s", "decode img/s", "enc+dec speed-up")
    cols += ("codes = fp32 sem / pix", "decode PSNR dB", "first call s")
    for col in cols:
        t.add_column(col, justify="left" if col in ("preset", "path") else "right", no_wrap=True)
    paths = [(n, kw) for n, kw in PATHS if not (args.skip_compiled and kw.get("compile"))]
    for preset in args.presets:
        tok = build("dualvitok", preset, dev)
        for size in args.sizes or [256, 512]:
            for batch in args.batches:
                x = torch.rand(batch, 3, size, size, device=dev, generator=torch.Generator(dev).manual_seed(0))
                # warm-up (compilation) and precision cost, then timed rounds cycling through the
                # paths: each keeps its best round, so load from other processes skews them alike
                ref_codes = ref_image = None
                cost, first = {}, {}
                for name, kw in paths:
                    tok.set_inference(**kw)
                    out, first_enc = timed_first(partial(tok.encode, x), dev)
                    image, first_dec = timed_first(partial(tok.decode, ref_codes or out.codes), dev)
                    if ref_codes is None:
                        ref_codes, ref_image = out.codes, image
                    agree = [(out.codes[k] == ref_codes[k]).float().mean().item() * 100 for k in ("semantic", "pixel")]
                    cost[name] = (" / ".join(f"{a:.1f}%" for a in agree), psnr(image, ref_image))
                    first[name] = first_enc + first_dec
                best = {name: [0.0, 0.0] for name, _ in paths}
                for _ in range(args.rounds):
                    for name, kw in paths:
                        tok.set_inference(**kw)
                        for i, fn in enumerate((partial(tok.encode, x), partial(tok.decode, ref_codes))):
                            r = rate(fn, batch, dev, args.min_time / args.rounds, warm=False)
                            best[name][i] = max(best[name][i], r)
                ref_time = sum(1 / r for r in best[paths[0][0]])
                for name, _ in paths:
                    enc, dec = best[name]
                    t.add_row(
                        preset,
                        f"{size}²",
                        str(batch),
                        name,
                        f"{enc:.2f}",
                        f"{dec:.2f}",
                        f"{ref_time / (1 / enc + 1 / dec):.2f}x",
                        *cost[name],
                        f"{first[name]:.1f}",
                    )
                tok.set_inference()
        del tok
    Console(width=max(Console().width, 170)).print(t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["tiny"])
    ap.add_argument("--sizes", nargs="+", type=int, default=None, help="default 64 256 512 (--paths: 256 512)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--paths", action="store_true", help="DualViTok inference paths against eager fp32")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8], help="--paths: batch sizes")
    ap.add_argument("--skip-compiled", action="store_true", help="--paths: leave out the compiled rows")
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds per measurement")
    ap.add_argument(
        "--rounds", type=int, default=3, help="--paths: timed rounds (best kept), min-time split among them"
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.paths:
        paths_table(args)
        return
    args.sizes = args.sizes or [64, 256, 512]
    dev = args.device
    title = f"tokenizer throughput on {torch.cuda.get_device_name() if dev.startswith('cuda') else 'CPU'}"
    t = Table(title=f"{title}, batch {args.batch}, {torch.get_num_threads()} threads")
    for col in ("preset", "size", "tokenizer", "tokens/image", "encode img/s", "decode img/s", "encode vs vqgan"):
        t.add_column(col, justify="right" if col not in ("tokenizer", "preset") else "left", no_wrap=True)
    for preset in args.presets:
        models = {name: build(name, preset, dev) for name in TOKENIZERS}
        for size in args.sizes:
            base = None
            for name, tok in models.items():
                side = nearest_size(tok, size)
                if side is None:
                    t.add_row(preset, str(size), name, "-", "n/a", "", "")
                    continue
                x = torch.rand(args.batch, 3, side, side, device=dev)
                grid = tok.grid(side, side)
                enc = rate(partial(tok.encode, x), args.batch, dev, args.min_time)
                dec = ""
                if tok.has_pixel_decoder:
                    codes = tok.encode(x).codes
                    dec = f"{rate(partial(tok.decode, codes), args.batch, dev, args.min_time):.2f}"
                base = base or enc
                tokens = sum(h * w for h, w in grid.values())
                shown = str(size) if side == size else f"{side} (of {size})"
                t.add_row(preset, shown, name, str(tokens), f"{enc:.2f}", dec, f"{enc / base:.2f}x")
    Console(width=max(Console().width, 110)).print(t)


if __name__ == "__main__":
    main()
