"""Build a registered component from its validated params (imports only what the registry names)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from illume_kit.core.registry import ComponentSpec, RegistryError


class ComposeError(RegistryError):
    pass


class ConversionError(ValueError):
    """Released weights or folders that are not what a converter expects; the message names the file
    and the key."""


def build_component(spec: ComponentSpec, params: BaseModel) -> Any:
    try:
        cls = spec.load()
    except Exception as exc:
        raise ComposeError(
            f"cannot import {spec.role} {spec.name!r} from {spec.dist} {spec.dist_version}: {type(exc).__name__}: {exc}"
        ) from exc
    return cls(params)
