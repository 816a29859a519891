"""Tokens per second and model FLOPs utilisation (MFU) of the mllm training step, per strategy.

    python bench/train_step.py [--recipe tests/fixtures/recipes/fsdp_mllm_tiny.yaml]
                               [--strategies one ddp:2 fsdp:2] [--steps 10] [--warmup 3] [--repeat 3]
                               [--precision fp32] [--device cpu] [--threads 1] [--peak-tflops 989] [k=v ...]
    python bench/train_step.py --gpu     # ~0.5B Qwen2 from scratch, bf16-mixed, FSDP on one GPU

Each row runs the recipe's first mllm stage for ``--warmup`` + ``--steps`` optimizer steps in fresh
processes (``torchrun`` for a world above one) through ``illume-kit train``'s own ``StageRunner``
and ``Trainer``: a ``TrainCallback`` stamps the end of each step on rank 0, and a forward pre-hook
on the backbone records every rank's sequence lengths (real tokens, padding excluded). Only the
``--steps`` steps after the warm-up count. The rows run in ``--repeat`` interleaved rounds, so a
load drift of the machine hits all of them, and each shows its round of median tokens/s.

A row is ``NAME[:WORLD][+ac][+compile]``: ``one`` is a plain process, ``ddp``/``fsdp`` set
``parallelism.strategy``, ``+ac`` checkpoints the backbone's activations, ``+compile`` sets
``parallelism.compile``. The first row is the baseline of the "vs first row" column. The trainer
shards only when the world is above one, so ``fsdp:1`` trains as ``one`` does, under torchrun.

Tokens/s: the assembled sequence lengths trained over all ranks, per second of the timed steps.
Model FLOPs of a sequence of ``T`` real tokens (forward + backward, the PaLM convention):

    6 * N * T + 12 * L * H * T**2

with ``N`` the backbone's parameters that do matmuls (every transformer block and the LM head;
the input embedding is a lookup, and a tied one counts once, as the head), ``L`` its layers and
``H`` its hidden size; the attention term is not halved for the causal mask. The frozen tokenizer's
forward, the projectors, padding and recomputation (activation checkpointing) are not model FLOPs:
they are overhead that lowers MFU. MFU = model FLOPs per second / (peak x world). The peak on CPU
is measured in the same run: the best of a few 2048^3 fp32 matmuls at ``--threads`` threads (one
rank's share of the machine); on CUDA it is ``--peak-tflops`` per device (default 989, H100/H200
dense bf16).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from illume_kit.core.recipe import RecipeError, load_recipe  # noqa: E402
from illume_kit.train.progress import StageHeader  # noqa: E402
from illume_kit.train.stages import StageRunner  # noqa: E402

DEFAULT_RECIPE = "tests/fixtures/recipes/fsdp_mllm_tiny.yaml"
STRATEGIES = ("one", "ddp", "fsdp")
# --gpu: the Qwen2-0.5B shape (config.json of Qwen/Qwen2-0.5B) from scratch, random init, no download;
# 256px images (~530 tokens each with the fixture's stride-16 DualViTok), 32 sequences a step; 64
# items, so the warm-up steps see every item and the stage's caches hold them from then on. The batch
# override names stage 0: the mllm stage of the default recipe
GPU_OVERRIDES = [
    "backbone.params.hidden_size=896",
    "backbone.params.num_layers=24",
    "backbone.params.num_heads=14",
    "backbone.params.num_kv_heads=2",
    "backbone.params.intermediate_size=4864",
    "backbone.params.vocab_size=151936",
    "backbone.params.max_position_embeddings=4096",
    "backbone.params.initializer_range=0.02",
    "data.params.image_size=256",
    "data.params.num_samples=64",
    "train.stages.0.global_batch_size=32",
]


# ---------------------------------------------------------------- FLOPs


def matmul_params(hf) -> int:
    """Parameters of a transformers causal LM that do matmuls: all but a separate input embedding."""
    emb = hf.get_input_embeddings().weight
    head = hf.get_output_embeddings()
    tied = head is not None and head.weight is emb
    return sum(p.numel() for p in hf.parameters()) - (0 if tied else emb.numel())


def model_flops(lengths: list[int], n_params: int, layers: int, hidden: int) -> float:
    """Forward + backward model FLOPs of sequences of these real lengths (see the module docstring)."""
    return sum(6.0 * n_params * t + 12.0 * layers * hidden * t * t for t in lengths)


def cpu_peak_flops(threads: int, n: int = 2048, repeat: int = 5) -> float:
    """Achievable fp32 FLOP/s of one process: the best of ``repeat`` n^3 matmuls."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeat))
    return 2.0 * n**3 / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ---------------------------------------------------------------- one row, in its own processes


class StepClock:
    """A ``TrainCallback`` that stamps the end of every step (rank 0 alone reports)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda, self.times, self.losses = cuda, {}, {}

    def _stamp(self, step: int) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.times[step] = time.perf_counter()

    def stage_start(self, header: StageHeader) -> None:
        pass

    def start(self, total: int, start: int, description: str) -> None:
        self._stamp(start)

    def update(self, step: int) -> None:
        self._stamp(step)

    def log(self, step: int, values) -> None:
        self._stamp(step)
        if "loss" in values:
            self.losses[step] = float(values["loss"])

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class BenchRunner(StageRunner):
    """The stage runner with every backbone forward's sequence lengths recorded under the step index."""

    def _mllm(self, stage):
        module, step_fn, data, extra = super()._mllm(stage)
        hf = module.backbone.model
        self.shape = {
            "params": matmul_params(hf),
            "layers": hf.config.num_hidden_layers,
            "hidden": hf.config.hidden_size,
        }
        self.lengths: dict[int, list] = {}
        current = [0]

        def record(mod, args, kwargs):
            mask = kwargs.get("attention_mask")
            if mask is not None:
                self.lengths.setdefault(current[0], []).append(mask.sum(1).detach())

        module.backbone.register_forward_pre_hook(record, with_kwargs=True)

        def counted(model, batch, step):
            current[0] = int(step)
            return step_fn(model, batch, step)

        return module, counted, data, extra


def worker(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    torch.set_num_threads(spec["threads"])
    rank = int(os.environ.get("RANK", "0"))
    cuda = spec["device"].startswith("cuda")
    clock = StepClock(cuda)
    runner = BenchRunner(load_recipe(spec["recipe"], spec["overrides"]), device=spec["device"], callback=clock)
    runner.run(only=[spec["stage"]], resume=False)
    out = {
        "lengths": {s: [int(n) for t in ts for n in t.tolist()] for s, ts in runner.lengths.items()},
        "shape": runner.shape,
        "times": clock.times,
        "losses": clock.losses,
        "peak_memory": torch.cuda.max_memory_allocated() if cuda else None,
    }
    Path(spec["dir"], f"rank{rank}.json").write_text(json.dumps(out))


def parse_row(text: str) -> tuple[str, int, list[str]]:
    name, *flags = text.split("+")
    name, _, world = name.partition(":")
    bad = [f for f in flags if f not in ("ac", "compile")]
    if name not in STRATEGIES or bad or (world and not world.isdigit()) or (name == "one" and world not in ("", "1")):
        raise ValueError(
            f"--strategies: bad row {text!r}: NAME[:WORLD][+ac][+compile], NAME one of {', '.join(STRATEGIES)}"
        )
    return name, int(world or 1), flags


def median_run(runs: list[dict]) -> dict:
    """The run of median tokens/s among a row's rounds (a failed round fails the row)."""
    if any(r.get("failed") for r in runs):
        return next(r for r in runs if r.get("failed"))
    return sorted(runs, key=lambda r: r["tokens"] / r["seconds"])[(len(runs) - 1) // 2]


def label(text: str) -> str:
    """``fsdp:2+ac`` -> ``fsdp x2 +ac``; ``one`` -> ``one process``."""
    name, world, flags = parse_row(text)
    return ("one process" if name == "one" else f"{name} x{world}") + "".join(f" +{f}" for f in flags)


def run_row(text: str, args, stage: tuple[int, str], overrides: list[str], tmp: Path) -> dict:
    name, world, flags = parse_row(text)
    index, stage_name = stage
    folder = Path(tempfile.mkdtemp(prefix=text.replace(":", "x").replace("+", "_") + "-", dir=tmp))
    row_overrides = [
        *overrides,
        f"run.output_dir={folder / 'run'}",
        f"train.stages.{index}.steps={args.warmup + args.steps}",
        f"train.stages.{index}.checkpoint_every=0",
    ]
    if name != "one":
        row_overrides.append(f"parallelism.strategy={name}")
    if "ac" in flags:
        row_overrides.append("parallelism.activation_checkpointing=[backbone]")
    if "compile" in flags:
        row_overrides.append("parallelism.compile=true")
    spec = {
        "recipe": args.recipe,
        "overrides": row_overrides,
        "stage": stage_name,
        "device": args.device,
        "threads": args.threads,
        "dir": str(folder),
    }
    (folder / "spec.json").write_text(json.dumps(spec))
    launch = [sys.executable]
    if name != "one":
        launch += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world)]
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(
        [*launch, __file__, "--worker", str(folder / "spec.json")], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        print(f"{label(text)}: failed (exit {proc.returncode})\n{proc.stderr[-3000:]}", file=sys.stderr)
        return {"row": text, "world": world, "failed": True}
    ranks = [json.loads((folder / f"rank{r}.json").read_text()) for r in range(world)]
    times = {int(k): v for k, v in ranks[0]["times"].items()}
    first, last = args.warmup, args.warmup + args.steps
    seconds = times[last] - times[first]
    lengths = [n for r in ranks for s, ns in r["lengths"].items() if first <= int(s) < last for n in ns]
    shape = ranks[0]["shape"]
    flops = model_flops(lengths, shape["params"], shape["layers"], shape["hidden"])
    losses = {int(k): v for k, v in ranks[0]["losses"].items()}
    mem = [r["peak_memory"] for r in ranks if r["peak_memory"] is not None]
    return {
        "row": text,
        "world": world,
        "tokens": sum(lengths),
        "seconds": seconds,
        "step_ms": 1e3 * statistics.median(times[s + 1] - times[s] for s in range(first, last)),
        "flops": flops,
        "shape": shape,
        "loss": losses.get(last),
        "memory": max(mem) if mem else None,
    }


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default=DEFAULT_RECIPE)
    ap.add_argument("--strategies", nargs="+", default=None, help="rows: NAME[:WORLD][+ac][+compile]")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per row (default 10, --gpu 20)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3, --gpu 5)")
    ap.add_argument(
        "--repeat", type=int, default=None, help="rounds of all rows; the median round counts (default 3, --gpu 1)"
    )
    ap.add_argument("--precision", default=None, help="parallelism.precision of every row (default: the recipe's)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per rank (default 1, --gpu 4)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="CUDA peak per device (H100/H200 bf16 dense)")
    ap.add_argument("--gpu", action="store_true", help="the ~0.5B bf16-mixed FSDP preset for one GPU")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="recipe overrides (after the preset's)")
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker)
    preset = args.gpu
    args.device = args.device or ("cuda" if preset or torch.cuda.is_available() else "cpu")
    args.strategies = args.strategies or (["fsdp:1", "fsdp:1+compile"] if preset else ["one", "ddp:2", "fsdp:2"])
    args.steps = args.steps if args.steps is not None else (20 if preset else 10)
    args.warmup = args.warmup if args.warmup is not None else (5 if preset else 3)
    args.repeat = args.repeat if args.repeat is not None else (1 if preset else 3)
    args.threads = args.threads if args.threads is not None else (4 if preset else 1)
    args.precision = args.precision or ("bf16-mixed" if preset else None)
    overrides = [*(GPU_OVERRIDES if preset else []), *args.overrides]
    if args.precision:
        overrides.append(f"parallelism.precision={args.precision}")
    try:
        for text in args.strategies:
            parse_row(text)
        if args.device != "cpu" and not args.device.startswith("cuda"):
            raise ValueError(f"--device: {args.device!r} is neither cpu nor cuda[:N]")
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: no CUDA device here (--device cpu runs on the CPU)")
        if min(args.steps, args.repeat, args.threads) < 1 or args.warmup < 0:
            raise ValueError("--steps, --repeat and --threads must be at least 1, --warmup at least 0")
        resolved = load_recipe(args.recipe, overrides)
    except (ValueError, RecipeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    stages = [(i, s.name) for i, s in enumerate(resolved.recipe.train.stages) if s.target == "mllm"]
    if not stages:
        print(f"error: {args.recipe} has no mllm stage (train.stages[*].target: mllm)", file=sys.stderr)
        raise SystemExit(2)
    cuda = args.device.startswith("cuda")
    peak = args.peak_tflops * 1e12 if cuda else cpu_peak_flops(args.threads)
    runs: dict[str, list[dict]] = {text: [] for text in args.strategies}
    with tempfile.TemporaryDirectory(prefix="train_step_") as tmp:
        for _ in range(args.repeat):  # rounds interleave the rows, so load drifts of the machine hit all of them
            for text in args.strategies:
                r = run_row(text, args, stages[0], overrides, Path(tmp))
                runs[text].append(r)
                if not r.get("failed"):
                    print(f"{label(text)}: {r['tokens'] / r['seconds']:,.0f} tokens/s", file=sys.stderr)
    rows = [median_run(rs) for rs in runs.values()]
    shape = next((r["shape"] for r in rows if "shape" in r), None)
    stage = resolved.recipe.train.stages[stages[0][0]]
    where = f"{args.device}, {args.threads} thread(s) per rank" if not cuda else args.device
    peak_words = (
        f"MFU against {args.peak_tflops:g} TFLOP/s per device (--peak-tflops)"
        if cuda
        else f"MFU against {peak / 1e9:.1f} GFLOP/s per rank: the best fp32 2048^3 matmul at {args.threads} "
        "thread(s), measured in this run"
    )
    model_words = (
        f"backbone {shape['params'] / 1e6:,.1f}M matmul parameters, {shape['layers']} layers x {shape['hidden']}; "
        if shape
        else ""
    )
    table = Table(
        title=f"{args.recipe}: mllm stage {stages[0][1]!r}, global batch {stage.global_batch_size or stage.batch_size}, "
        f"precision {args.precision or resolved.recipe.parallelism.precision}, {where}, "
        f"{args.steps} timed steps after {args.warmup}, median of {args.repeat} round(s)",
        caption=model_words + peak_words,
    )
    cols = ["strategy", "tokens / step", "median ms / step", "tokens / s", "vs first row", "MFU", "loss at end"]
    if cuda:
        cols.append("peak memory / rank")
    for col in cols:
        table.add_column(col, justify="right")
    base = rows[0]
    for r in rows:
        if r.get("failed"):
            table.add_row(label(r["row"]), *["failed"] + ["-"] * (len(cols) - 2))
            continue
        rate = r["tokens"] / r["seconds"]
        vs = f"{rate / (base['tokens'] / base['seconds']):.2f}x" if not base.get("failed") else "-"
        mfu = r["flops"] / r["seconds"] / (peak * r["world"])
        cells = [
            label(r["row"]),
            f"{r['tokens'] / args.steps:,.0f}",
            f"{r['step_ms']:,.0f}",
            f"{rate:,.0f}",
            vs,
            f"{100 * mfu:.1f}%",
            f"{r['loss']:.4f}" if r["loss"] is not None else "-",
        ]
        if cuda:
            cells.append(f"{r['memory'] / 2**30:.1f} GiB" if r["memory"] else "-")
        table.add_row(*cells)
    Console(width=160).print(table)
    if any(r.get("failed") for r in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
