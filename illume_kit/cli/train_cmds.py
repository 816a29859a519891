"""`illume-kit train`: run a recipe's training stages."""

from __future__ import annotations

import json
import os

from illume_kit.cli.args import positive_int


def cmd_train(args) -> int:
    from illume_kit.cli.output import console
    from illume_kit.cli.recipe_cmds import allow_large
    from illume_kit.core.recipe import load_recipe

    allow_large(args)
    resolved = load_recipe(args.recipe, args.overrides)
    if not resolved.recipe.train.stages:
        raise ValueError(f"{resolved.origin}: `train.stages` is empty: nothing to train")
    from illume_kit.cli.train_progress import RichReporter
    from illume_kit.train.stages import check_launch, train

    check_launch(resolved, resume=args.resume, only=args.stage or None)  # before any weights load
    results = train(
        resolved,
        only=args.stage or None,
        resume=args.resume,
        quiet=args.quiet,
        until=args.until,
        callback=RichReporter(quiet=args.quiet),
    )
    if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 reports
        return 0
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        from rich.table import Table

        t = Table(title=f"{resolved.recipe.name}: stages")
        for col in ("stage", "status", "step", "last logged"):
            t.add_column(col, overflow="fold")
        for name, r in results.items():
            logged = ", ".join(f"{k}={v:.4g}" for k, v in r.items() if k not in ("status", "step"))
            t.add_row(name, r.get("status", "?"), str(r.get("step", "")), logged)
        console.print(t)
        console.print(f"checkpoint: {resolved.recipe.run.output_dir}/checkpoint")
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="train a recipe's stages (teacher, tokenizer, detokenizer, mllm) in order")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--stage", action="append", help="run only this stage (repeatable)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="skip finished stages and continue an interrupted one from its last checkpoint",
    )
    p.add_argument(
        "--until", type=positive_int, help="stop the current stage at this step (checkpointed), for testing resume"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--allow-large",
        action="store_true",
        help="build even when the recipe's memory estimate exceeds this machine's memory (or ILLUME_KIT_ALLOW_LARGE=1)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)
