"""Verbs on recipes and checkpoints: validate (torch-free), compose, inspect."""

from __future__ import annotations

import json
from pathlib import Path

from illume_kit.cli.args import check_output_dir


def _overrides_arg(p) -> None:
    p.add_argument("recipe", help="recipe YAML (a path, or a shipped recipe name from `illume-kit recipes`)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides, e.g. tokenizer.params.pixel_codebook_size=4096; tokenizer=vqgan; ~key deletes",
    )


def allow_large(args) -> None:
    """``--allow-large``: the memory estimate is not a refusal, here and in any process started from here.
    ``--meta`` allocates nothing, so it is never refused either."""
    if getattr(args, "allow_large", False) or getattr(args, "meta", False):
        import os

        from illume_kit.core.footprint import ENV

        os.environ[ENV] = "1"


def cmd_validate(args) -> int:
    allow_large(args)
    from illume_kit.core.recipe import load_recipe

    r = load_recipe(args.recipe, args.overrides)
    if args.print_recipe:
        print(r.to_yaml())
    comps = ", ".join(
        f"{sec}={rc.spec.name}" + (f"[{rc.preset}]" if rc.preset else "") for sec, rc in r.components.items()
    )
    print(f"ok {r.origin}: {comps}")  # plain text: validate stays fast (no rich import)
    return 0


def _image_size(resolved) -> tuple[int, int] | None:
    data = resolved.components.get("data")
    size = getattr(data.params, "image_size", None) if data else None
    if isinstance(size, int):
        return size, size
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[0]), int(size[1])
    return None


def _trained_size(folder) -> tuple[int, int] | None:
    """The image size a checkpoint's recipe serves its stages (what it was trained at)."""
    from illume_kit.core.recipe import RecipeError, load_recipe

    try:
        return _image_size(load_recipe(Path(folder) / "recipe.yaml"))
    except RecipeError:  # a checkpoint whose recipe this install cannot resolve still inspects
        return None


def _built_params(part, params: dict) -> dict:
    """The params of what was built: a component that records its loaded architecture in checkpoints
    (``checkpoint_params``) shows its real sizes; the folders it came from stay as the recipe set them."""
    from illume_kit.core.protocols import CheckpointParams

    if not isinstance(part, CheckpointParams):
        return params

    def keep_sources(view: dict, given: dict) -> dict:
        out = {}
        for k, v in view.items():
            g = given.get(k)
            if isinstance(v, dict) and isinstance(g, dict):
                out[k] = keep_sources(v, g)
            else:
                out[k] = g if v is None and g is not None else v
        return out

    return keep_sources(part.checkpoint_params(params), params)


def describe(
    model, resolved, manifest: dict | None = None, own: tuple[int, int] | None = None, own_label: str = "recipe"
) -> dict:
    """Everything `compose` prints, as data (also the --json output). ``own``: the image size to
    budget first (default: the recipe's data size), shown as ``own_label``."""
    comps = {}
    for sec in ("tokenizer", "backbone", "detokenizer"):
        part = getattr(model, sec)
        if part is None:
            continue
        if resolved is not None:
            rc = resolved.components[sec]
            spec, preset, params = rc.spec, rc.preset, _built_params(part, rc.params_dict)
            prov = {"name": spec.name, "dist": spec.dist, "version": spec.dist_version}
        else:
            rec = manifest["components"][sec]
            preset, params = rec.get("preset"), rec["params"]
            prov = {"name": rec["name"], "dist": rec["dist"], "version": rec["dist_version"]}
        comps[sec] = {**prov, "preset": preset, "params": params, **_sized(part), "parts": _parts(part)}
    comps["projectors"] = {
        "name": "mlp",
        **_sized(model.projectors),
        "per_codebook": {k: f"{v.in_dim}->{v.out_dim}" for k, v in model.projectors.items()},
    }
    if model.input_encoder is not None:
        comps["input_encoder"] = {
            "name": "separate",
            **_sized(model.input_encoder),
            "parts": _parts(model.input_encoder),
        }
    if own is None and resolved is not None:
        own = _image_size(resolved)
    sizes = [s for s in (own, (256, 256), (512, 512)) if s is not None]
    sizes = list(dict.fromkeys(sizes))
    budget = []
    for h, w in sizes:
        try:
            grid = model.tokenizer.grid(h, w)
            budget.append(
                {
                    "size": f"{h}x{w}",
                    "grid": {k: list(v) for k, v in grid.items()},
                    "codes": sum(a * b for a, b in grid.values()),
                    "tokens": model.layout.image_length(grid),
                    "own": (h, w) == own,
                    **({"label": own_label} if (h, w) == own else {}),
                }
            )
        except ValueError as exc:
            budget.append({"size": f"{h}x{w}", "error": str(exc)})
    return {
        "name": (resolved.data.get("name") if resolved is not None else manifest.get("recipe_name")),
        "components": comps,
        "codebooks": [cb.__dict__ for cb in model.codebooks],
        "image_input": model.image_input,
        "vocab_layout": [{"what": w, "start": a, "stop": b, "count": b - a} for w, a, b in model.layout.rows()],
        "vocab_size": model.layout.total_size,
        "token_budget": budget,
        "total": {
            "parameters": sum(c["parameters"] for c in comps.values()),
            "bytes": sum(c["bytes"] for c in comps.values()),
        },
    }


def _sized(module) -> dict:
    """Parameters (total, trainable), parameter dtypes and bytes of one part of the model."""
    from illume_kit.model.unified import count_params, tensor_memory

    total, trainable = count_params(module)
    nbytes, dtypes = tensor_memory(module)
    return {"parameters": total, "trainable": trainable, "dtypes": dtypes, "bytes": nbytes}


def _parts(module) -> dict[str, int]:
    """Direct submodules that hold parameters, with their counts."""
    from illume_kit.model.unified import count_params

    counts = {n: count_params(m)[0] for n, m in module.named_children()}
    return {n: c for n, c in counts.items() if c}


def print_tree(info: dict, console=None) -> None:
    """The model tree of ``describe``'s ``info`` on ``console`` (a rich Console; default: stdout)."""
    from rich.tree import Tree

    if console is None:
        from illume_kit.cli.output import console

    root = Tree(f"[bold]{info['name']}[/]  (image input: {info['image_input']})")
    for sec, c in info["components"].items():
        label = f"[cyan]{sec}[/] [bold]{c['name']}[/]"
        if c.get("preset"):
            label += f" [{c['preset']}]"
        if c.get("dist"):
            label += f"  from {c['dist']} {c['version']}"
        label += f"  — {c['parameters']:,} params ({c['trainable']:,} trainable)"
        label += f", {'/'.join(c['dtypes']) or 'no params'}, {_human_bytes(c['bytes'])}"
        node = root.add(label)
        if c.get("parts"):
            node.add("parts: " + ", ".join(f"{k} {v:,}" for k, v in c["parts"].items()))
        if c.get("params"):
            flat = ", ".join(f"{k}={v}" for k, v in c["params"].items())
            node.add(f"[dim]{flat}[/]")
        if "per_codebook" in c:
            node.add(", ".join(f"{k}: {v}" for k, v in c["per_codebook"].items()))
    cbn = root.add("[cyan]codebooks[/]")
    for cb in info["codebooks"]:
        cbn.add(
            f"{cb['name']}: {cb['size']:,} codes × {cb['code_dim']}-d, stride {cb['stride']} px, "
            f"LLM input features {cb['feature_dim']}-d"
        )
    vl = root.add(f"[cyan]vocab layout[/] ({info['vocab_size']:,} ids)")
    for row in info["vocab_layout"]:
        vl.add(f"{row['what']}: [{row['start']:,}, {row['stop']:,})  {row['count']:,}")
    tb = root.add("[cyan]token budget of one image[/]")
    for b in info["token_budget"]:
        if "error" in b:
            tb.add(f"{b['size']}: {b['error']}")
        else:
            grids = " + ".join(f"{k} {g[0]}×{g[1]}" for k, g in b["grid"].items())
            tb.add(
                f"{b['size']}{' (' + b['label'] + ')' if b['own'] else ''}: {grids} = {b['codes']} codes, "
                f"{b['tokens']} tokens with structure"
            )
    total = info["total"]
    root.add(f"[cyan]total[/] {total['parameters']:,} params, {_human_bytes(total['bytes'])} of weights")
    console.print(root)


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n} B"


def stage_sizes(model, stage) -> tuple[int, int] | None:
    """(trainable, frozen) parameters a training stage holds, from the built model: an ``mllm`` stage
    the whole model with its ``trainable`` groups open, other stages their target component as built;
    None when the model has no such component."""
    from illume_kit.model.objective import trainable_parameters
    from illume_kit.model.unified import count_params

    if stage.target == "mllm":
        from illume_kit.train.optim import freeze_groups

        trainable_parameters(model, stage.trainable or ["all"])
        groups = [g.model_dump() for g in stage.param_groups]
        freeze_groups(
            [(n, p) for n, p in model.named_parameters() if p.requires_grad],
            groups,
            [n for n, _ in model.named_parameters()],
        )
        total, trainable = count_params(model)
    else:
        total, trainable = count_params(getattr(model, stage.target, None))
        if not total:
            return None
    return trainable, total - trainable


def memory_plan(model, resolved, world: int) -> dict:
    """Per-rank memory at ``world`` ranks for every training stage of the recipe (or, without stages,
    for the model as built), ddp against fsdp, under the recipe's ``parallelism``."""
    from types import SimpleNamespace

    from illume_kit.core.footprint import memory_table, resolve_precision

    par = resolved.recipe.parallelism
    precision = resolve_precision(par.precision)
    # without stages: the model as built, its parameters as they require gradients
    stages = list(resolved.recipe.train.stages) or [SimpleNamespace(name=None, target="model")]
    plans = []
    for stage in stages:
        if stage.target == "model":
            from illume_kit.model.unified import count_params

            total, trainable = count_params(model)
            sizes = (trainable, total - trainable)
        else:
            sizes = stage_sizes(model, stage)
        if sizes is None:
            plans.append(
                {
                    "stage": stage.name,
                    "target": stage.target,
                    "error": f"compose builds no {stage.target}: no estimate",
                }
            )
            continue
        trainable, frozen = sizes
        rows = memory_table(trainable, frozen, world, precision, shard_frozen=par.shard_frozen)
        plans.append(
            {
                "stage": stage.name,
                "target": stage.target,
                "trainable": trainable,
                "frozen": frozen,
                "rows": [
                    {
                        "strategy": r.label,
                        "recipe": r.strategy == par.strategy and r.cpu_offload == par.cpu_offload,
                        "params": r.params,
                        "grads": r.grads,
                        "optimizer": r.optimizer,
                        "gpu": r.gpu,
                        "cpu": r.cpu,
                    }
                    for r in rows
                ],
            }
        )
    return {
        "world": world,
        "precision": precision,
        "strategy": par.strategy,
        "shard_frozen": par.shard_frozen,
        "stages": plans,
    }


MEMORY_CAPTION = (
    "weights, gradients and AdamW states per rank; not included: activations, and the parameters fsdp gathers "
    "for the unit it runs (for every unit from forward to backward with reshard_after_forward: false)"
)


def print_memory(plan: dict) -> None:
    from rich.table import Table

    from illume_kit.cli.output import console
    from illume_kit.core.footprint import human

    for st in plan["stages"]:
        what = f"stage {st['stage']} ({st['target']})" if st["stage"] else "the model as built (no training stages)"
        title = f"per-rank memory, {what}, {plan['world']} GPUs, {plan['precision']}"
        if "error" in st:
            console.print(f"{title}: {st['error']}")
            continue
        table = Table(
            title=title,
            caption=f"{st['trainable']:,} trainable + {st['frozen']:,} frozen parameters; "
            f"frozen {'sharded' if plan['shard_frozen'] else 'replicated'} under fsdp; {MEMORY_CAPTION}",
        )
        for col in ("strategy", "weights", "gradients", "AdamW", "GPU / rank", "CPU / rank"):
            table.add_column(col, justify="left" if col == "strategy" else "right")
        for r in st["rows"]:
            table.add_row(
                r["strategy"] + (" (recipe)" if r["recipe"] else ""),
                *(human(r[k]) for k in ("params", "grads", "optimizer", "gpu", "cpu")),
            )
        console.print(table)


def cmd_compose(args) -> int:
    from illume_kit.cli.output import console
    from illume_kit.core.recipe import Problem, RecipeError, load_recipe
    from illume_kit.model.checkpoint import save_checkpoint
    from illume_kit.model.compose import compose

    allow_large(args)
    if args.meta and args.output:
        raise RecipeError(
            args.recipe, [Problem("--output", "--meta builds no weights, so it cannot write a checkpoint")]
        )
    if args.world is not None and (not args.meta or args.world < 1):
        raise RecipeError(
            args.recipe,
            [
                Problem(
                    "--world",
                    f"--world {args.world}: needs --meta and a world size of at least 1 "
                    "(e.g. compose --meta --world 8 RECIPE)",
                )
            ],
        )
    resolved = load_recipe(args.recipe, args.overrides, unset_missing=args.meta)
    if args.output:
        check_output_dir(args.output)
    model = compose(resolved, meta=args.meta)
    info = describe(model, resolved)
    info["meta"] = args.meta
    if args.output:
        out = save_checkpoint(model, resolved, args.output)
        info["checkpoint"] = str(out)
    if args.world is not None:
        info["memory"] = memory_plan(model, resolved, args.world)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print_tree(info)
        if args.world is not None:
            print_memory(info["memory"])
        if args.output:
            console.print(f"[green]wrote checkpoint[/] {args.output}")
    return 0


def cmd_inspect(args) -> int:
    from illume_kit.cli.output import console
    from illume_kit.core.manifest import read_manifest

    manifest = read_manifest(args.checkpoint)  # a bad manifest is reported before torch is imported
    if args.manifest_only:
        print(json.dumps(manifest, indent=2))
        return 0
    from illume_kit.model.checkpoint import load_checkpoint

    model, manifest = load_checkpoint(args.checkpoint, weights=not args.meta, meta=args.meta)
    info = describe(model, None, manifest, own=_trained_size(args.checkpoint), own_label="trained size")
    info["format"] = manifest["format"]
    info["written_by"] = manifest.get("illume_kit_version")
    info["meta"] = args.meta
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        console.print(
            f"checkpoint {Path(args.checkpoint)} (format {manifest['format']}, illume-kit "
            f"{manifest.get('illume_kit_version')}, created {manifest.get('created')}): "
            + ("built on the meta device, weights not read" if args.meta else "weights load")
        )
        print_tree(info)
    return 0


def register(sub) -> None:
    p = sub.add_parser("validate", help="check a recipe and report every problem at once (no torch)")
    _overrides_arg(p)
    p.add_argument("--print-recipe", action="store_true", help="print the resolved recipe")
    p.add_argument(
        "--allow-large",
        action="store_true",
        help="build even when the recipe's memory estimate exceeds this machine's memory (or ILLUME_KIT_ALLOW_LARGE=1)",
    )
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("compose", help="build the unified model of a recipe and print what was built")
    _overrides_arg(p)
    p.add_argument("-o", "--output", help="write a checkpoint folder here")
    p.add_argument(
        "--allow-large",
        action="store_true",
        help="build even when the recipe's memory estimate exceeds this machine's memory (or ILLUME_KIT_ALLOW_LARGE=1)",
    )
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.add_argument(
        "--meta",
        action="store_true",
        help="build on the meta device: sizes, dtypes and memory without allocating or reading weights "
        "(`???` weight folders may stay unset)",
    )
    p.add_argument(
        "--world",
        type=int,
        metavar="N",
        help="with --meta: estimated per-rank memory of each training stage on N GPUs, ddp against fsdp "
        "(weights, gradients, AdamW states under the recipe's parallelism.precision)",
    )
    p.set_defaults(func=cmd_compose)
    p = sub.add_parser("inspect", help="read a checkpoint folder, check plugins, load it and describe it")
    p.add_argument("checkpoint")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--meta", action="store_true", help="build on the meta device from the manifest, without reading weights"
    )
    p.add_argument("--manifest-only", action="store_true", help="print the manifest without loading weights")
    p.set_defaults(func=cmd_inspect)
