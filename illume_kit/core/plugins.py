"""The plugin manager: every ``illume_kit`` entry point, illume-kit's own included, each isolated.

pluggy's own ``load_setuptools_entrypoints`` stops at the first plugin that fails to import; here
every entry point is loaded and every hook implementation called inside its own ``try``, so a broken
plugin is listed as failed with a one-line reason and the CLI keeps working
(``ILLUME_KIT_STRICT_PLUGINS=1`` or ``--strict`` turns failures into errors).

Environment switches: ``ILLUME_KIT_DISABLE_PLUGINS=a,b`` skips entry points by name or distribution;
``ILLUME_KIT_LOAD_PLUGINS=a,b`` loads only those (empty string: none). Both select third-party
plugins: the built-in plugin (``illume_kit.plugins.builtin``, entry point ``builtin`` of illume-kit)
is always loaded, since recipes and checkpoints name its components.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from importlib import import_module, metadata
from typing import Any

import pluggy

import illume_kit
from illume_kit.core import hookspecs
from illume_kit.core.registry import ComponentSpec, DuplicateComponent, Registry, RegistryError

GROUP = "illume_kit"
BUILTIN = "builtin"
BUILTIN_DIST = "illume-kit"
BUILTIN_MODULE = "illume_kit.plugins.builtin"


class PluginError(RegistryError):
    pass


@dataclass
class PluginInfo:
    name: str
    dist: str
    version: str
    status: str = "ok"  # ok | failed | disabled
    reason: str = ""
    components: list[str] = field(default_factory=list)


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _csv_env(name: str) -> set[str] | None:
    v = os.environ.get(name)
    return None if v is None else {x.strip() for x in v.split(",") if x.strip()}


class PluginManager:
    def __init__(self, strict: bool | None = None, entry_points: bool = True) -> None:
        self.strict = strict if strict is not None else os.environ.get("ILLUME_KIT_STRICT_PLUGINS") == "1"
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self._meta: dict[int, PluginInfo] = {}
        if entry_points:
            self._load_entry_points()
        if not self.pm.has_plugin(BUILTIN):  # metadata without the entry point, or entry points off
            self.register(import_module(BUILTIN_MODULE), PluginInfo(BUILTIN, BUILTIN_DIST, illume_kit.__version__))

    # -- registration ------------------------------------------------------------------
    def register(self, plugin: Any, info: PluginInfo) -> None:
        self.pm.register(plugin, name=info.name)
        unknown = sorted(hc.name for hc in self.pm.get_hookcallers(plugin) or () if hc.spec is None)
        if unknown:  # pluggy would call nothing: say so instead of registering an empty plugin
            self.pm.unregister(plugin)
            hooks = ", ".join(n for n in dir(hookspecs) if n.startswith("illume_kit_"))
            raise PluginError(
                f"plugin {info.name!r} implements {', '.join(unknown)}, which illume-kit does not "
                f"define (hooks: {hooks}; every record names its role)"
            )
        self.infos[info.name] = info
        self._meta[id(plugin)] = info

    def unregister(self, name: str) -> None:
        plugin = self.pm.unregister(name=name)
        self.infos.pop(name, None)
        if plugin is not None:
            self._meta.pop(id(plugin), None)

    def _fail(self, info: PluginInfo, exc: BaseException) -> None:
        if self.strict:
            raise PluginError(f"plugin {info.name!r} from {info.dist} {info.version} failed: {_one_line(exc)}") from exc
        info.status, info.reason = "failed", _one_line(exc)
        self.infos[info.name] = info

    def _load_entry_points(self) -> None:
        disabled = _csv_env("ILLUME_KIT_DISABLE_PLUGINS") or set()
        only = _csv_env("ILLUME_KIT_LOAD_PLUGINS")
        for ep in metadata.entry_points(group=GROUP):
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            info = PluginInfo(ep.name, dist, version)
            builtin = ep.name == BUILTIN and dist == BUILTIN_DIST
            chosen = (
                ep.name not in disabled and dist not in disabled and (only is None or ep.name in only or dist in only)
            )
            if not (builtin or chosen):
                info.status, info.reason = "disabled", "disabled by environment"
                self.infos[ep.name] = info
                continue
            if self.pm.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
                self.register(plugin, info)
            except Exception as exc:  # a plugin must never take the CLI down
                self._fail(info, exc)

    # -- collection --------------------------------------------------------------------
    def _impls(self, hook: str) -> Iterator[tuple[PluginInfo, Any]]:
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            info = self._meta.get(id(impl.plugin)) or self.infos.get(impl.plugin_name)
            yield info or PluginInfo(impl.plugin_name, "?", "?"), impl.function

    def build_registry(self) -> Registry:
        reg = Registry()
        for info, fn in self._impls("illume_kit_components"):
            if info.status != "ok":
                continue
            try:
                specs = list(fn() or ())
                for spec in specs:
                    if not isinstance(spec, ComponentSpec):
                        raise PluginError(f"illume_kit_components must return ComponentSpec records, got {spec!r}")
            except Exception as exc:
                self._fail(info, exc)
                continue
            for spec in specs:
                spec = replace(spec, dist=info.dist, dist_version=info.version, plugin=info.name)
                reg.add(spec)  # DuplicateComponent names both distributions
                info.components.append(f"{spec.role}:{spec.name}")
        for info, fn in self._impls("illume_kit_recipes"):
            if info.status == "ok":
                try:
                    reg.recipe_sources.extend(replace(s, dist=info.dist) for s in (fn() or ()))
                except Exception as exc:
                    self._fail(info, exc)
        reg.failed = [
            f"{i.name} ({i.dist} {i.version}): {i.reason}" for i in self.infos.values() if i.status == "failed"
        ]
        return reg


_STATE: dict[str, Any] = {}


def get_manager(strict: bool | None = None) -> PluginManager:
    if "pm" not in _STATE or (strict and not _STATE["pm"].strict):
        _STATE["pm"] = PluginManager(strict=strict)
        _STATE.pop("registry", None)
    return _STATE["pm"]


def get_registry(strict: bool | None = None) -> Registry:
    if "registry" not in _STATE:
        _STATE["registry"] = get_manager(strict).build_registry()
    return _STATE["registry"]


def reset() -> None:
    """Forget the cached manager and registry (tests; after installing a plugin)."""
    _STATE.clear()


__all__ = ["PluginManager", "PluginInfo", "PluginError", "DuplicateComponent", "get_manager", "get_registry", "reset"]
