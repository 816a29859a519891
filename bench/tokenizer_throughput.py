"""Encode and decode throughput (images/s) of each tokenizer preset at several resolutions.

    python bench/tokenizer_throughput.py                          # tiny presets, 64/256/512 px, CPU
    python bench/tokenizer_throughput.py --presets tiny official --sizes 256 --device cuda

Random weights (throughput does not depend on training). The first row of each size is the
baseline (vqgan) and the ratio column compares every tokenizer with it, measured in the same run.
Semantic-only tokenizers have no pixel decoder: their decode column is empty.
"""

from __future__ import annotations

import argparse
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
def rate(fn, batch: int, device: str, min_time: float) -> float:
    fn()  # warm up
    sync(device)
    n, start = 0, time.perf_counter()
    while True:
        fn()
        sync(device)
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return n * batch / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["tiny"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[64, 256, 512])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds per measurement")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
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
