"""Helpers for testing illume-kit and its plugins: in-test plugin registration (``registered``), a
conformance suite (``conformance``) and stand-in components (``fakes``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from illume_kit.core import plugins


@contextlib.contextmanager
def registered(
    plugin: Any, name: str = "test-plugin", dist: str = "test-dist", version: str = "0.0.1"
) -> Iterator[Any]:
    """Register ``plugin`` (hookimpl-marked object or module) for the duration of a ``with`` block."""
    pm = plugins.get_manager()
    pm.register(plugin, plugins.PluginInfo(name, dist, version))
    plugins._STATE.pop("registry", None)
    try:
        yield plugins.get_registry()
    finally:
        pm.unregister(name)
        plugins._STATE.pop("registry", None)
