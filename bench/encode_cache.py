"""Milliseconds per mllm training step with and without the frozen-tokenizer ``EncodeCache``.

    python bench/encode_cache.py [--recipe recipes/dualvitok_qwen2_mllm_tiny.yaml] [--steps 20]
                                 [--batch-size 16] [--items 64] [--threads 2] [k=v ...]

An mllm stage meets every item of its dataset again each epoch, and its tokenizer is frozen, so
``illume-kit train`` keeps each image's tokenizer output (stage option ``cache_codes``, default on).
This times the stage's own step (task mixer, sequence assembly, Qwen2 forward + backward, AdamW) on
the recipe's model with random weights (``tokenizer.weights=null``: timing does not depend on
them), first with the cache off, then on, in alternating rounds after the cache has seen the
items once (the steady state of every epoch after the first). Both runs start from the same
weights and draw the same tasks, and the bench checks that their losses agree.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from illume_kit.core.recipe import load_recipe  # noqa: E402
from illume_kit.data.build import build_dataset  # noqa: E402
from illume_kit.model.compose import compose  # noqa: E402
from illume_kit.model.objective import mllm_step_fn, trainable_parameters  # noqa: E402
from illume_kit.model.sequence import EncodeCache  # noqa: E402
from illume_kit.model.tasks import TaskMixer  # noqa: E402
from illume_kit.train.stages import CachedDataset  # noqa: E402


def steps(model, opt, step_fn, data, batch_size: int, first: int, n: int) -> tuple[list[float], list[float]]:
    """Run ``n`` optimiser steps from step ``first``; (seconds per step, losses)."""
    times, losses = [], []
    for s in range(first, first + n):
        items = [data[(s * batch_size + i) % len(data)] for i in range(batch_size)]
        t = time.perf_counter()
        loss = step_fn(model, items, s)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
        losses.append(loss.item())
    return times, losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="recipes/dualvitok_qwen2_mllm_tiny.yaml")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--items", type=int, default=64, help="training items (the cache holds them all after a pass)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("overrides", nargs="*", help="recipe overrides")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    resolved = load_recipe(
        args.recipe, ["tokenizer.weights=null", "tokenizer.params.teacher.pretrained=null", *args.overrides]
    )
    torch.manual_seed(0)
    base = compose(resolved)
    data = CachedDataset(build_dataset(resolved, "train", num_samples=args.items))
    step_fn = mllm_step_fn(TaskMixer(qa_turns=6, seed=0, edit_order=base.edit_order))
    runs = {}
    for name in ("no cache", "EncodeCache"):
        model = copy.deepcopy(base).train()
        opt = torch.optim.AdamW(trainable_parameters(model, ["all"]), lr=1e-4)
        model.encode_cache = EncodeCache(keep_features=model.image_input != "discrete") if name != "no cache" else None
        runs[name] = {"model": model, "opt": opt, "times": [], "losses": [], "step": 0}
    warm = -(-args.items // args.batch_size)  # one pass over the items: the cache fills, caches warm up
    for r in range(args.rounds + 1):
        for run in runs.values():
            n = warm if r == 0 else args.steps
            t, losses = steps(run["model"], run["opt"], step_fn, data, args.batch_size, run["step"], n)
            run["step"] += n
            if r:
                run["times"] += t
            run["losses"] += losses
    a, b = (runs[k]["losses"] for k in runs)
    agree = max(abs(x - y) for x, y in zip(a, b))
    base_ms = statistics.median(runs["no cache"]["times"]) * 1e3
    table = Table(
        title=f"{args.recipe}: mllm step, batch {args.batch_size}, {args.threads} threads, "
        f"{args.rounds}x{args.steps} timed steps after one pass over {args.items} items"
    )
    for col in ("encoding", "median ms / step", "vs no cache", "cache hits / misses"):
        table.add_column(col)
    for name, run in runs.items():
        ms = statistics.median(run["times"]) * 1e3
        cache = run["model"].encode_cache
        table.add_row(name, f"{ms:.0f}", f"{base_ms / ms:.2f}x", f"{cache.hits} / {cache.misses}" if cache else "-")
    Console(width=120).print(table)
    print(f"largest loss difference between the two runs: {agree:.2e}")
    if agree > 1e-4:
        raise SystemExit("the cached run's losses differ from the uncached run's")


if __name__ == "__main__":
    main()
