"""Base classes for component ``Params`` models (torch-free).

Every component's ``Params`` subclasses ``ComponentParams`` (unknown keys rejected, docs on every
field via ``Field(description=...)``). A component that nests another registry component (a
tokenizer choosing its quantizer) types that field as ``QuantizerRef``: recipe validation walks the
validated params and checks each ref against the quantizer registry, so nested mistakes are reported
with their full key path like any other.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

# an RGB triple: per-channel normalisation mean or std
RGB = Annotated[list[float], Field(min_length=3, max_length=3)]


class ComponentParams(BaseModel):
    # defer_build: listing or showing a component must not pay for compiling its validator
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), defer_build=True)


class ComponentRef(BaseModel):
    """A nested component chosen by registry name: ``{name: simvq, params: {...}}``."""

    model_config = ConfigDict(extra="forbid", defer_build=True)
    role: Any = Field(default=None, exclude=True, description="set by subclasses")
    name: str = Field(description="registry name")
    params: dict[str, Any] = Field(default_factory=dict, description="params for that component")


class QuantizerRef(ComponentRef):
    """A quantizer from the ``quantizer`` registry (vq, simvq, fsq, lfq, residual-vq, ...)."""

    role: Any = Field(default="quantizer", exclude=True)


class NoParams(ComponentParams):
    """Params of a component with nothing to set (the built-in metric families)."""
