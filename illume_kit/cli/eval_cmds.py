"""`illume-kit eval`: metrics of a checkpoint on held-out data, as a table and JSON."""

from __future__ import annotations

import json


def _kv(pairs: list[str]) -> dict:
    from illume_kit.core import yamlio

    out = {}
    for p in pairs or []:
        k, eq, v = p.partition("=")
        if not eq:
            raise ValueError(f"--data {p!r}: expected KEY=VALUE (a param of the recipe's dataset)")
        out[k] = yamlio.safe_load(v)
    return out


def cmd_eval(args) -> int:
    from rich.table import Table

    from illume_kit.cli.output import console
    from illume_kit.eval.evaluate import evaluate
    from illume_kit.eval.specs import MetricSpec, metric_spec

    result = evaluate(
        args.checkpoint,
        _kv(args.data),
        args.num_samples,
        args.split,
        args.output,
        quiet=args.quiet,
        decode_options=_kv(args.decode),
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    t = Table(title=f"{result['recipe']}: {result['num_samples']} {result['split']} samples")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("goal")
    goals = result.get("goals", {})
    for k, v in result["metrics"].items():
        spec = MetricSpec(k, goals[k]) if k in goals else metric_spec(k)
        t.add_row(
            k, format(v, spec.fmt) if isinstance(v, float) else str(v), "higher" if spec.goal == "max" else "lower"
        )
    console.print(t)
    console.print(f"wrote {', '.join(result['files'])} to {result['output_dir']}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint on held-out data (reconstruction, codebooks, tasks)")
    p.add_argument("checkpoint", help="a checkpoint folder (e.g. runs/NAME/checkpoint)")
    p.add_argument("--data", action="append", metavar="KEY=VALUE", help="override a dataset param, e.g. image_size=64")
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("-n", "--num-samples", type=int, help="held-out samples (default: the recipe's eval.num_samples)")
    p.add_argument("--decode", action="append", metavar="KEY=VALUE", help="detokenizer options, e.g. steps=25")
    p.add_argument("-o", "--output", help="folder for metrics.json and the PNG grid (default: next to the checkpoint)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)
