"""Training: one loop (``Trainer``) and one config (``TrainerConfig``) for every component.

Attributes load lazily so ``from illume_kit.train import TrainerConfig`` stays torch-free.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "NonFiniteLoss": "illume_kit.train.trainer",
    "Trainer": "illume_kit.train.trainer",
    "TrainerConfig": "illume_kit.train.config",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'illume_kit.train' has no attribute {name!r}")
