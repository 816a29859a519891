"""``illume-kit`` command line. Verbs live in small modules; this file only dispatches.

Each verb module exposes ``register(subparsers)`` and must stay torch-free at import time:
``--help``, ``plugins``, ``list``, ``show``, ``validate`` never import torch.
Errors a user can fix (bad recipe, unknown component, bad checkpoint) print one clear report and
exit with status 2, without a traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

VERB_MODULES = (
    "illume_kit.cli.registry_cmds",  # plugins, list, show, recipes, schema
    "illume_kit.cli.recipe_cmds",  # validate, compose, inspect
    "illume_kit.cli.extra_cmds",  # verbs from other modules (train, eval, convert, generate, ...)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="illume-kit",
        description="Compose, train and evaluate unified multimodal LLMs (ILLUME+-style) from YAML recipes.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--strict", action="store_true", help="a plugin that fails to load is an error")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for mod in VERB_MODULES:
        try:
            importlib.import_module(mod).register(sub)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # illume-kit uses no pydantic plugins; looking for them scans every installed distribution's
    # entry points on the first model build (~30 ms of start-up). Set the variable to opt back in.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if args.strict:
        os.environ["ILLUME_KIT_STRICT_PLUGINS"] = "1"
    from illume_kit.cli.output import user_error

    try:
        return int(args.func(args) or 0)
    except Exception as exc:  # user-fixable errors -> status 2
        code = user_error(exc, debug=args.debug)
        if code is None:
            raise
        return code


if __name__ == "__main__":
    sys.exit(main())
