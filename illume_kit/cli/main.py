"""``illume-kit`` command line. Verbs live in small modules; this file only dispatches.

Each verb module exposes ``register(subparsers)`` and must stay torch-free at import time:
``--help``, ``plugins``, ``list``, ``show``, ``validate`` never import torch.
Failures a user can fix (a bad recipe, flag or file, an unknown component, a bad checkpoint, too
little memory, a training run whose loss stopped being finite) print one message and exit with
status 2, without a traceback (``--debug`` or ``ILLUME_KIT_DEBUG=1`` shows it); anything else is a
bug: its traceback, then a line asking to report it (status 1). Ctrl-C prints "interrupted" (130).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# verb -> the module whose register(subparsers) defines it. A command line naming one verb imports
# only that verb's module (importing all of them costs ~40 ms of every start); `--help`, no verb or an
# unknown verb imports them all, so the help lists everything and argparse reports bad verbs.
# tests/cli/test_main.py checks this table against what each module registers.
VERBS = {
    **dict.fromkeys(("plugins", "list", "show", "recipes", "schema"), "illume_kit.cli.registry_cmds"),
    **dict.fromkeys(("validate", "compose", "inspect"), "illume_kit.cli.recipe_cmds"),
    "train": "illume_kit.cli.train_cmds",
    "eval": "illume_kit.cli.eval_cmds",
    "encode": "illume_kit.cli.encode_cmds",
    "convert": "illume_kit.cli.convert_cmds",
    **dict.fromkeys(("understand", "generate", "edit"), "illume_kit.cli.generate_cmds"),
    **dict.fromkeys(("sweep", "results"), "illume_kit.cli.sweep_cmds"),
    "serve": "illume_kit.cli.serve_cmds",
}
VERB_MODULES = tuple(dict.fromkeys(VERBS.values()))


def _modules_for(argv: list[str] | None) -> tuple[str, ...]:
    """The verb modules a command line needs: the named verb's alone, or all of them."""
    words = sys.argv[1:] if argv is None else argv
    verb = next((w for w in words if not w.startswith("-")), None)
    if verb in VERBS and not {"-h", "--help"} & set(words[: words.index(verb)]):
        return (VERBS[verb],)
    return VERB_MODULES


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="illume-kit",
        description="Compose, train and evaluate unified multimodal LLMs (ILLUME+-style) from YAML recipes.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks (also: ILLUME_KIT_DEBUG=1)")
    parser.add_argument("--strict", action="store_true", help="a failed or clashing plugin is an error")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for mod in _modules_for(argv):
        importlib.import_module(mod).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command line; returns the exit status (0 ok, 2 a failure the user can fix, 1 a bug,
    130 interrupted)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


def _main(argv: list[str] | None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # illume-kit uses no pydantic plugins; looking for them scans every installed distribution's
    # entry points on the first model build (~30 ms of start-up). Set the variable to opt back in.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if args.strict:
        os.environ["ILLUME_KIT_STRICT_PLUGINS"] = "1"
    from illume_kit.cli.output import debug_enabled, report_failure

    try:
        return int(args.func(args) or 0)
    except Exception as exc:  # expected failures -> one message, status 2; a bug -> its traceback
        return report_failure(exc, debug=debug_enabled(args.debug))


if __name__ == "__main__":
    sys.exit(main())
