"""Plugin hooks. Each returns an iterable of typed records; none takes a callback.

Implement either or both in a module or object marked with ``illume_kit.hookimpl`` and expose it
under the ``illume_kit`` entry-point group. Returning records (not calling ``register()``) lets the
core detect two plugins claiming one name and report both. illume-kit's own components come through
the same hook, from ``illume_kit.plugins.builtin``.
"""

from __future__ import annotations

from collections.abc import Iterable

import pluggy

from illume_kit.core.registry import ComponentSpec, RecipeSource

hookspec = pluggy.HookspecMarker("illume_kit")


@hookspec
def illume_kit_components() -> Iterable[ComponentSpec]:
    """Components of any role; each record names its role (tokenizer, backbone, detokenizer,
    quantizer, teacher, dataset, metric)."""


@hookspec
def illume_kit_recipes() -> Iterable[RecipeSource]:
    """Folders of shipped recipes."""
