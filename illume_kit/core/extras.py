"""Optional dependencies: import one, or say which ``illume-kit[extra]`` brings it (torch-free).

The metrics, the lmms-eval adapter and the experiment loggers need packages most users never
install; ``require`` imports such a package where it is used and turns its absence into one line a
user can act on (``MissingExtra`` is an ``ImportError`` the CLI reports with exit status 2).
"""

from __future__ import annotations

import importlib
from types import ModuleType

# extra -> the packages it installs (what pyproject's [project.optional-dependencies] lists)
EXTRAS: dict[str, tuple[str, ...]] = {
    "metrics": ("torchmetrics", "torch-fidelity", "lpips"),
    "lmms": ("lmms_eval",),
    "loggers": ("tensorboard", "wandb"),
    "serve": ("gradio",),
}


class MissingExtra(ImportError):
    """An optional package is not installed; the message names the extra that installs it."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise ``MissingExtra`` naming ``purpose`` and ``pip install 'illume-kit[extra]'``."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; known: {', '.join(sorted(EXTRAS))}")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(
            f"{purpose} needs the {module.split('.')[0]!r} package, which is not installed: "
            f"pip install 'illume-kit[{extra}]'"
        ) from exc
