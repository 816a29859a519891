"""A decode step's linear layers on the CPU: ``F.linear`` against oneDNN-packed weights.

    python bench/packed_linear.py [--rows 1 2 16 32] [--hidden 256] [--intermediate 1024]
                                  [--vocab 1600] [--layers 4] [--threads 1]

One "step" is every linear layer of a Qwen2-shaped decoder (per layer q, k, v with bias, o, gate,
up, down; then the LM head) applied to ``rows`` tokens, each layer's weights its own tensors, so
the weights come from the last-level cache as in a decode loop. The baseline is ``F.linear`` (a
GEMM that packs its weight each call); the other column is ``illume_kit.model.packed_linear``
(weights packed once). The table shows the median µs per step over ``--repeat`` timed rounds and
the largest absolute difference of the outputs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from illume_kit.model import packed_linear  # noqa: E402


def layers(hidden: int, inter: int, vocab: int, n: int, kv: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    shapes = [(hidden, hidden, True), (kv, hidden, True), (kv, hidden, True), (hidden, hidden, False)]
    shapes += [(inter, hidden, False), (inter, hidden, False), (hidden, inter, False)]
    out = [(torch.randn(o, i) / i**0.5, torch.randn(o) if b else None) for _ in range(n) for o, i, b in shapes]
    return out + [(torch.randn(vocab, hidden) / hidden**0.5, None)]


def step(weights, xs, fn):
    return [fn(xs[w.shape[1]], w, b) for w, b in weights]


def timed(weights, xs, fn, repeat: int) -> float:
    for _ in range(3):
        step(weights, xs, fn)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(20):
            step(weights, xs, fn)
        times.append((time.perf_counter() - t) / 20)
    return statistics.median(times) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 16, 32], help="tokens per step (batch x branches)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--intermediate", type=int, default=1024)
    ap.add_argument("--kv", type=int, default=128, help="key / value projection width")
    ap.add_argument("--vocab", type=int, default=1600)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if not packed_linear.available():
        sys.exit("this torch build has no oneDNN: nothing to compare")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    weights = layers(args.hidden, args.intermediate, args.vocab, args.layers, args.kv)
    mb = sum(w.numel() + (b.numel() if b is not None else 0) for w, b in weights) * 4 / 2**20
    table = Table(
        title=f"linear layers of one decode step ({mb:.1f} MB of fp32 weights), cpu, {args.threads} thread(s)"
    )
    for col in ("rows", "F.linear µs", "packed µs", "speed-up", "max abs diff"):
        table.add_column(col, justify="right")
    with torch.inference_mode(), packed_linear.packing_store():
        for rows in args.rows:
            xs = {n: torch.randn(rows, n) for n in {w.shape[1] for w, _ in weights}}
            plain = timed(weights, xs, F.linear, args.repeat)
            packed = timed(weights, xs, packed_linear.packed_linear, args.repeat)
            diff = max(
                (a - b).abs().max().item()
                for a, b in zip(step(weights, xs, F.linear), step(weights, xs, packed_linear.packed_linear))
            )
            table.add_row(
                str(rows), f"{plain:,.0f}", f"{packed:,.0f}", f"[bold]{plain / packed:.2f}x[/]", f"{diff:.1e}"
            )
    Console().print(table)


if __name__ == "__main__":
    main()
