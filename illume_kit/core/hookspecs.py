"""Plugin hooks. Each returns an iterable of typed records; none takes a callback.

Implement any subset in a module or object marked with ``illume_kit.hookimpl`` and expose it under
the ``illume_kit`` entry-point group. Returning records (not calling ``register()``) lets the core
detect two plugins claiming one name and report both.
"""

from __future__ import annotations

from typing import Iterable

import pluggy

from illume_kit.core.registry import ComponentSpec, RecipeSource

hookspec = pluggy.HookspecMarker("illume_kit")


@hookspec
def illume_kit_tokenizers() -> Iterable[ComponentSpec]:
    """Visual tokenizers (role ``tokenizer``)."""


@hookspec
def illume_kit_backbones() -> Iterable[ComponentSpec]:
    """Language backbones (role ``backbone``)."""


@hookspec
def illume_kit_detokenizers() -> Iterable[ComponentSpec]:
    """Detokenizers (role ``detokenizer``)."""


@hookspec
def illume_kit_quantizers() -> Iterable[ComponentSpec]:
    """Quantizers nested inside tokenizers (role ``quantizer``)."""


@hookspec
def illume_kit_teachers() -> Iterable[ComponentSpec]:
    """Semantic teachers: frozen encoders that tokenizers distil from (role ``teacher``)."""


@hookspec
def illume_kit_datasets() -> Iterable[ComponentSpec]:
    """Datasets (role ``dataset``)."""


@hookspec
def illume_kit_metrics() -> Iterable[ComponentSpec]:
    """Evaluation metrics (role ``metric``)."""


@hookspec
def illume_kit_recipes() -> Iterable[RecipeSource]:
    """Folders of shipped recipes."""


HOOK_ROLES = {
    "illume_kit_tokenizers": "tokenizer",
    "illume_kit_backbones": "backbone",
    "illume_kit_detokenizers": "detokenizer",
    "illume_kit_quantizers": "quantizer",
    "illume_kit_teachers": "teacher",
    "illume_kit_datasets": "dataset",
    "illume_kit_metrics": "metric",
}
