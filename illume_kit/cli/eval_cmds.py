"""`illume-kit eval`: metrics of a checkpoint on held-out data, as a table and JSON."""

from __future__ import annotations

import json
from pathlib import Path

from illume_kit.cli.args import check_output_dir, key_value, positive_int

# what a detokenizer whose decode takes **sampling accepts: the options of the Detokenizer protocol
# (a deterministic decoder accepts and ignores them)
COMMON_DECODE_OPTIONS = ("guidance", "guidance_rescale", "seed", "steps")


def _kv(pairs: list[tuple[str, str]] | None) -> dict:
    from illume_kit.core import yamlio

    return {k: yamlio.safe_load(v) for k, v in pairs or []}


def decode_option_names(detokenizer_cls) -> list[str]:
    """The keyword options ``detokenizer_cls.decode`` takes (what ``--decode KEY=V`` may name)."""
    import inspect

    params = inspect.signature(detokenizer_cls.decode).parameters.values()
    named = {
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ("self", "codes", "generator")
    }
    if any(p.kind is p.VAR_KEYWORD for p in params):
        named |= set(COMMON_DECODE_OPTIONS)
    return sorted(named)


def check_overrides(checkpoint: str, data: dict, decode: dict) -> None:
    """ValueError naming an unknown ``--data`` or ``--decode`` key and the valid ones, before the
    checkpoint's weights load."""
    from illume_kit.core.manifest import read_manifest

    folder = Path(checkpoint)
    manifest = read_manifest(folder)
    if data:
        from illume_kit.core.recipe import load_recipe

        rc = load_recipe(folder / "recipe.yaml").components.get("data")
        if rc is None:
            raise ValueError(f"--data: {folder / 'recipe.yaml'} has no `data:` section to override")
        valid = sorted(k for k in type(rc.params).model_fields if k != "split")
        for key in data:
            if key not in valid:
                hint = " (the split is --split)" if key == "split" else ""
                raise ValueError(
                    f"--data {key}=...: {key!r} is not a param of dataset {rc.spec.name!r}{hint}; "
                    f"valid keys: {', '.join(valid)}"
                )
    if decode:
        from illume_kit.core.plugins import get_registry

        rec = (manifest.get("components") or {}).get("detokenizer")
        if not isinstance(rec, dict) or not rec.get("name"):
            raise ValueError(f"--decode: the checkpoint {folder} has no detokenizer to pass options to")
        valid = decode_option_names(get_registry().get("detokenizer", rec["name"]).load())
        for key in decode:
            if key not in valid:
                raise ValueError(
                    f"--decode {key}=...: detokenizer {rec['name']!r} takes no option {key!r}; "
                    f"valid keys: {', '.join(valid) or 'none'}"
                )


def metric_options(names: str | None, pairs: list[tuple[str, str]] | None) -> tuple[list[str] | None, dict]:
    """``--metrics a,b`` (aliases resolved) and ``--metric-param FAMILY.KEY=VALUE`` as {family: {key: value}},
    checked against the registry: ValueError naming the bad entry and the valid ones."""
    from illume_kit.core.plugins import get_registry
    from illume_kit.core.recipe import metric_params_problems
    from illume_kit.eval.specs import select_metrics

    registry = get_registry()
    chosen = None
    if names is not None:
        chosen = select_metrics([n for n in names.split(",") if n.strip()], registry.names("metric"))
        if not chosen:
            raise ValueError("--metrics: no metric named (e.g. --metrics rfid,lpips,psnr,ssim)")
    params: dict[str, dict] = {}
    for key, value in _kv(pairs).items():
        family, dot, name = key.rpartition(".")
        if not dot or not family or not name:
            raise ValueError(f"--metric-param {key}=...: expected FAMILY.KEY=VALUE, e.g. rfid.inception_weights=PATH")
        params.setdefault(family, {})[name] = value
    problems = metric_params_problems(params, registry, "")
    if problems:
        raise ValueError("\n".join(f"--metric-param {p}" for p in problems))
    return chosen, params


def cmd_eval(args) -> int:
    from rich.table import Table

    from illume_kit.cli.output import console
    from illume_kit.eval.evaluate import evaluate
    from illume_kit.eval.specs import MetricSpec, metric_spec

    data, decode = _kv(args.data), _kv(args.decode)
    check_overrides(args.checkpoint, data, decode)
    chosen, metric_params = metric_options(args.metrics, args.metric_param)
    if args.output:
        check_output_dir(args.output)
    result = evaluate(
        args.checkpoint,
        data,
        args.num_samples,
        args.split,
        args.output,
        quiet=args.quiet,
        decode_options=decode,
        metrics=chosen,
        metric_params=metric_params,
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
    p.add_argument(
        "--data",
        action="append",
        type=key_value,
        metavar="KEY=VALUE",
        help="override a dataset param, e.g. image_size=64",
    )
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument(
        "-n", "--num-samples", type=positive_int, help="held-out samples (default: the recipe's eval.num_samples)"
    )
    p.add_argument(
        "--decode", action="append", type=key_value, metavar="KEY=VALUE", help="detokenizer options, e.g. steps=25"
    )
    p.add_argument(
        "--metrics",
        metavar="NAMES",
        help="comma-separated metric names or families to compute and report instead of the recipe's "
        "eval.metrics, e.g. rfid,lpips,psnr,ssim (psnr, ssim: rec/psnr, rec/ssim; illume-kit list metrics)",
    )
    p.add_argument(
        "--metric-param",
        action="append",
        type=key_value,
        metavar="FAMILY.KEY=VALUE",
        help="a metric family's param over the recipe's eval.metric_params, e.g. rfid.inception_weights=PATH",
    )
    p.add_argument("-o", "--output", help="folder for metrics.json and the PNG grid (default: next to the checkpoint)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)
