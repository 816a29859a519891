"""The recipe's dataset for a split, as training and evaluation both read it."""

from __future__ import annotations

from typing import Any

from illume_kit.core.build import build_component
from illume_kit.core.recipe import ResolvedRecipe


def build_dataset(resolved: ResolvedRecipe, split: str = "train", **overrides: Any):
    rc = resolved.components.get("data")
    if rc is None:
        raise ValueError(f"{resolved.origin}: recipe has no `data:` section; training and evaluation need one")
    params = rc.params.model_copy(update={"split": split, **overrides})
    return build_component(rc.spec, type(rc.params).model_validate(params.model_dump()))
