"""The plugin manager: every ``illume_kit`` entry point, illume-kit's own included, each isolated.

pluggy's own ``load_setuptools_entrypoints`` stops at the first plugin that fails to import; here
every entry point is loaded and every hook implementation called inside its own ``try``, so a broken
plugin is listed as failed with a one-line reason and the CLI keeps working. A failed plugin (its
import or any of its hooks raised, or a hook returned something other than its records) has all of
its components and recipe folders withdrawn, those of its other hooks included.

Name clashes: plugins are ranked, the built-in plugin first, then third parties by distribution
name and entry-point name. A component whose name (or alias) a higher-ranked plugin already serves
is withdrawn and its plugin listed with status ``conflict``, naming the component and the other
distribution; its other components keep working. The same holds for two distributions declaring
one entry-point name: the lower-ranked is not loaded.

``ILLUME_KIT_STRICT_PLUGINS=1`` or ``--strict`` turns failures and clashes into errors.

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
from illume_kit.core.registry import ComponentSpec, DuplicateComponent, RecipeSource, Registry, RegistryError

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
    status: str = "ok"  # ok | failed | disabled | conflict (some components withdrawn: see reason)
    reason: str = ""
    components: list[str] = field(default_factory=list)


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _rank(info: PluginInfo) -> tuple:
    """Which provider keeps a clashing name: the built-in plugin, then distributions by name."""
    builtin = info.name == BUILTIN and info.dist == BUILTIN_DIST
    return (not builtin, info.dist.lower(), info.name)


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
        found = []
        for ep in metadata.entry_points(group=GROUP):
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            found.append((PluginInfo(ep.name, dist, version), ep))
        for info, ep in sorted(found, key=lambda f: _rank(f[0])):
            builtin = info.name == BUILTIN and info.dist == BUILTIN_DIST
            chosen = info.name not in disabled and info.dist not in disabled
            chosen = chosen and (only is None or info.name in only or info.dist in only)
            if not (builtin or chosen):
                info.status, info.reason = "disabled", "disabled by environment"
                self.infos.setdefault(info.name, info)
                continue
            if self.pm.has_plugin(info.name):
                other = self.infos[info.name]
                if other.dist != info.dist:  # one entry-point name, two distributions
                    self._name_clash(info, other)
                continue
            try:
                plugin = ep.load()
                self.register(plugin, info)
            except Exception as exc:  # a plugin must never take the CLI down
                self._fail(info, exc)

    def _name_clash(self, info: PluginInfo, other: PluginInfo) -> None:
        if self.strict:
            raise PluginError(
                f"plugin name {info.name!r} is declared by two distributions: {other.dist} {other.version} "
                f"and {info.dist} {info.version}; uninstall one, or disable one with ILLUME_KIT_DISABLE_PLUGINS"
            )
        info.status = "conflict"
        info.reason = f"not loaded: the plugin name {info.name!r} is taken by {other.dist} {other.version}"
        self.infos[f"{info.name} ({info.dist})"] = info

    def _conflict(self, info: PluginInfo, spec: ComponentSpec, name: str, other: ComponentSpec) -> None:
        if self.strict:
            raise DuplicateComponent(
                f"{spec.role} {name!r} is provided by two distributions: {other.dist} ({other.plugin}) and "
                f"{spec.dist} ({spec.plugin}); uninstall one, or disable one with ILLUME_KIT_DISABLE_PLUGINS"
            )
        why = "built-in components take precedence" if other.dist == BUILTIN_DIST else "ranked first by name"
        note = f"{spec.role} {name!r} withdrawn: also provided by {other.dist} ({other.plugin}), {why}"
        info.status = "conflict"
        info.reason = f"{info.reason}; {note}" if info.reason else note

    # -- collection --------------------------------------------------------------------
    def _impls(self, hook: str) -> Iterator[tuple[PluginInfo, Any]]:
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            info = self._meta.get(id(impl.plugin)) or self.infos.get(impl.plugin_name)
            yield info or PluginInfo(impl.plugin_name, "?", "?"), impl.function

    def _collect(self) -> dict[str, tuple[PluginInfo, list[ComponentSpec], list[RecipeSource]]]:
        """Every ok plugin's records, a plugin whose hook fails marked failed (records dropped)."""
        out: dict[str, tuple[PluginInfo, list[ComponentSpec], list[RecipeSource]]] = {}
        for hook, kind in (("illume_kit_components", ComponentSpec), ("illume_kit_recipes", RecipeSource)):
            for info, fn in self._impls(hook):
                if info.status != "ok":
                    continue
                try:
                    records = list(fn() or ())
                    for rec in records:
                        if not isinstance(rec, kind):
                            raise PluginError(f"{hook} must return {kind.__name__} records, got {rec!r}")
                except Exception as exc:
                    self._fail(info, exc)
                    continue
                entry = out.setdefault(info.name, (info, [], []))
                entry[1 if kind is ComponentSpec else 2].extend(records)
        return out

    def build_registry(self) -> Registry:
        for info in self.infos.values():  # a rebuild (a plugin added or removed) ranks afresh
            if info.status == "conflict" and self._meta.get(id(self.pm.get_plugin(info.name))) is info:
                info.status, info.reason = "ok", ""
            if info.status == "ok":
                info.components = []
        reg = Registry()
        collected = self._collect()
        for info, specs, sources in sorted(collected.values(), key=lambda e: _rank(e[0])):
            if info.status == "failed":  # a later hook failed: nothing of this plugin is served
                continue
            for spec in specs:
                spec = replace(spec, dist=info.dist, dist_version=info.version, plugin=info.name)
                hit = reg.clash(spec)
                if hit is not None:
                    self._conflict(info, spec, *hit)
                    continue
                reg.add(spec)
                info.components.append(f"{spec.role}:{spec.name}")
            reg.recipe_sources.extend(replace(s, dist=info.dist) for s in sources)
        reg.failed = [
            f"{i.name} ({i.dist} {i.version}): {i.reason}" for i in self.infos.values() if i.status == "failed"
        ]
        reg.conflicts = [
            f"{i.name} ({i.dist} {i.version}): {i.reason}" for i in self.infos.values() if i.status == "conflict"
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
