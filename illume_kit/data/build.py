"""The recipe's dataset for a split, as training and evaluation both read it, or another registered
dataset in its place (``illume-kit eval CKPT --data image-folder --data root=DIR``)."""

from __future__ import annotations

from typing import Any

from illume_kit.core.build import build_component
from illume_kit.core.recipe import ResolvedRecipe


def build_dataset(resolved: ResolvedRecipe, split: str = "train", name: str | None = None, **overrides: Any):
    """The recipe's ``data:`` component with ``overrides``; with ``name``, the registered dataset of
    that name instead, built from ``overrides`` and the recipe's ``image_size`` (the size the
    tokenizer was trained at) unless ``overrides`` sets one."""
    rc = resolved.components.get("data")
    if name is not None and (rc is None or rc.spec.name != name):
        return _named_dataset(resolved, name, split, overrides)
    if rc is None:
        raise ValueError(f"{resolved.origin}: recipe has no `data:` section; training and evaluation need one")
    params = rc.params.model_copy(update={"split": split, **overrides})
    return build_component(rc.spec, type(rc.params).model_validate(params.model_dump()))


def dataset_params_class(name: str, registry=None):
    """The params class of the registered dataset ``name`` (torch-free: nothing of the dataset loads)."""
    from illume_kit.core.plugins import get_registry

    return (registry or get_registry()).get("dataset", name).load_params()


def _named_dataset(resolved: ResolvedRecipe, name: str, split: str, overrides: dict[str, Any]):
    from pydantic import ValidationError

    from illume_kit.core.plugins import get_registry

    spec = get_registry().get("dataset", name)
    cls = spec.load_params()
    rc = resolved.components.get("data")
    inherited = {}
    if rc is not None and "image_size" in type(rc.params).model_fields and "image_size" in cls.model_fields:
        inherited["image_size"] = rc.params.image_size
    try:
        params = cls.model_validate({**inherited, **overrides, "split": split})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or name}: {e['msg']}" for e in exc.errors())
        raise ValueError(
            f"dataset {name!r}: {problems} (set its params with --data KEY=VALUE; "
            f"valid keys: {', '.join(k for k in cls.model_fields if k != 'split')})"
        ) from None
    return build_component(spec, params)
