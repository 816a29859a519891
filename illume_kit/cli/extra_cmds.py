"""Verbs contributed by the training, evaluation and generation modules (registered lazily)."""

from __future__ import annotations

import importlib

# each module has register(subparsers); a module not yet present is skipped
MODULES = (
    "illume_kit.cli.train_cmds",
    "illume_kit.cli.eval_cmds",
    "illume_kit.cli.convert_cmds",
    "illume_kit.cli.generate_cmds",
    "illume_kit.cli.sweep_cmds",
)


def register(sub) -> None:
    for mod in MODULES:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name == mod:
                continue
            raise
        m.register(sub)
