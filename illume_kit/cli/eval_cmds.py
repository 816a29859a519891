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


def data_args(items: list[str] | None) -> tuple[str | None, dict]:
    """``--data`` values: at most one NAME (a registered dataset in place of the recipe's) and any
    number of KEY=VALUE params."""
    from illume_kit.core import yamlio

    names = [v for v in items or [] if "=" not in v]
    if len(names) > 1:
        raise ValueError(f"--data names one dataset, got {', '.join(map(repr, names))}")
    params = {}
    for v in items or []:
        if "=" in v:
            key, value = key_value(v)
            params[key] = yamlio.safe_load(value)
    return (names[0] if names else None), params


def check_overrides(checkpoint: str, data: dict, decode: dict, dataset: str | None = None) -> None:
    """ValueError naming an unknown ``--data`` or ``--decode`` key and the valid ones (and an unknown
    dataset name), before the checkpoint's weights load."""
    from illume_kit.core.manifest import read_manifest

    folder = Path(checkpoint)
    manifest = read_manifest(folder)
    if data or dataset:
        from illume_kit.core.recipe import load_recipe

        rc = load_recipe(folder / "recipe.yaml").components.get("data")
        if dataset is not None and (rc is None or rc.spec.name != dataset):
            from illume_kit.core.registry import RegistryError
            from illume_kit.data.build import dataset_params_class

            try:
                name, fields = dataset, dataset_params_class(dataset).model_fields
            except RegistryError as exc:
                raise ValueError(
                    f"--data {dataset}: {exc} (a bare --data NAME names a registered dataset; "
                    "a dataset param is --data KEY=VALUE)"
                ) from None
        elif rc is None:
            raise ValueError(
                f"--data: {folder / 'recipe.yaml'} has no `data:` section to override; "
                "name a dataset, e.g. --data image-folder --data root=DIR"
            )
        else:
            name, fields = rc.spec.name, type(rc.params).model_fields
        valid = sorted(k for k in fields if k != "split")
        for key in data:
            if key not in valid:
                hint = " (the split is --split)" if key == "split" else ""
                raise ValueError(
                    f"--data {key}=...: {key!r} is not a param of dataset {name!r}{hint}; "
                    f"valid keys: {', '.join(valid)}"
                )
    if decode:
        from illume_kit.core.plugins import get_registry

        rec = (manifest.get("components") or {}).get("detokenizer")
        if not isinstance(rec, dict) or not rec.get("name"):
            raise ValueError(f"--decode: the checkpoint {folder} has no detokenizer to pass options to")
        cls = get_registry().get("detokenizer", rec["name"]).load()
        valid = decode_option_names(cls)
        for key in decode:
            if key not in valid:
                raise ValueError(
                    f"--decode {key}=...: detokenizer {rec['name']!r} takes no option {key!r}; "
                    f"valid keys: {', '.join(valid) or 'none'}"
                )
        check_values = getattr(cls, "check_decode_options", None)
        if check_values is not None:  # values the checkpoint's detokenizer cannot take, e.g. its schedulers
            check_values(rec.get("params") or {}, decode)


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


def _loggers(text: str | None) -> list[str]:
    """``--loggers tensorboard,wandb``: checked (and their packages imported) before the evaluation runs."""
    if not text:
        return []
    from illume_kit.core.schema import check_loggers
    from illume_kit.train.loggers import ensure_available

    try:
        names = check_loggers([n.strip() for n in text.split(",") if n.strip()])
    except ValueError as exc:
        raise ValueError(f"--loggers: {exc}") from None
    ensure_available(names)
    return [n for n in names if n != "jsonl"]


def cmd_eval(args) -> int:
    from rich.table import Table

    from illume_kit.cli.output import console
    from illume_kit.eval.evaluate import evaluate
    from illume_kit.eval.specs import MetricSpec, metric_spec

    dataset, data = data_args(args.data)
    decode = _kv(args.decode)
    check_overrides(args.checkpoint, data, decode, dataset)
    loggers = _loggers(args.loggers)
    chosen, metric_params = metric_options(args.metrics, args.metric_param)
    if args.output:
        check_output_dir(args.output)
    from illume_kit.train.distributed import setup, teardown

    info = setup("cpu")  # under torchrun: one gloo group, each rank evaluates a shard
    try:
        result = evaluate(
            args.checkpoint,
            data,
            args.num_samples,
            args.split,
            args.output,
            quiet=args.quiet,
            decode_options=decode,
            dataset=dataset,
            metrics=chosen,
            metric_params=metric_params,
        )
    finally:
        teardown(info)
    if not info.is_main:
        return 0
    if loggers:  # rank 0 alone logs
        from illume_kit.train.loggers import log_evaluation

        out = Path(result["output_dir"])
        pngs = [out / f for f in result["files"] if str(f).endswith(".png")]
        result["logged_to"] = log_evaluation(loggers, out, result["metrics"], pngs)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    over = f" over {result['world_size']} ranks" if result.get("world_size", 1) > 1 else ""
    t = Table(
        title=f"{result['recipe']}: {result['num_samples']} {result['split']} samples of {result['dataset']}{over}"
    )
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
    if result.get("logged_to"):
        console.print(f"logged to {', '.join(result['logged_to'])}")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint on held-out data (reconstruction, codebooks, tasks); "
        "under torchrun each rank takes a shard",
    )
    p.add_argument("checkpoint", help="a checkpoint folder (e.g. runs/NAME/checkpoint)")
    p.add_argument(
        "--data",
        action="append",
        metavar="NAME|KEY=VALUE",
        help="a dataset param, e.g. image_size=64; a bare NAME evaluates on that registered dataset instead "
        "of the recipe's (--data image-folder --data root=DIR)",
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
    p.add_argument(
        "--loggers",
        metavar="NAMES",
        help="also send the metrics and grids to these loggers, comma-separated: tensorboard, wandb "
        "(written under the output folder; jsonl is metrics.json itself)",
    )
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)
