"""The plugin manager: built-ins from registry.yaml plus third-party entry points, each isolated.

pluggy's own ``load_setuptools_entrypoints`` stops at the first plugin that fails to import; here
every entry point is loaded and every hook implementation called inside its own ``try``, so a broken
plugin is listed as failed with a one-line reason and the CLI keeps working
(``ILLUME_KIT_STRICT_PLUGINS=1`` or ``--strict`` turns failures into errors).

Environment switches: ``ILLUME_KIT_DISABLE_PLUGINS=a,b`` skips entry points by name or distribution;
``ILLUME_KIT_LOAD_PLUGINS=a,b`` loads only those (empty string: none).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Iterator

import pluggy

import illume_kit
from illume_kit import hookimpl
from illume_kit.core import hookspecs, yamlio
from illume_kit.core.registry import ComponentSpec, DuplicateComponent, RecipeSource, Registry, RegistryError

GROUP = "illume_kit"


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


class BuiltinPlugin:
    """illume-kit's own components, read from the packaged registry.yaml."""

    def __init__(self) -> None:
        text = resources.files("illume_kit").joinpath("registry.yaml").read_text()
        self._data: dict[str, dict[str, dict[str, Any]]] = yamlio.safe_load(text) or {}

    def _specs(self, role: str) -> list[ComponentSpec]:
        out = []
        for name, rec in (self._data.get(role) or {}).items():
            out.append(ComponentSpec(role=role, name=name, target=rec["target"], summary=rec.get("summary", ""),
                                     params=rec.get("params"), presets=rec.get("presets") or {},
                                     aliases=tuple(rec.get("aliases", ()))))
        return out

    @hookimpl
    def illume_kit_tokenizers(self):
        return self._specs("tokenizer")

    @hookimpl
    def illume_kit_backbones(self):
        return self._specs("backbone")

    @hookimpl
    def illume_kit_detokenizers(self):
        return self._specs("detokenizer")

    @hookimpl
    def illume_kit_quantizers(self):
        return self._specs("quantizer")

    @hookimpl
    def illume_kit_teachers(self):
        return self._specs("teacher")

    @hookimpl
    def illume_kit_datasets(self):
        return self._specs("dataset")

    @hookimpl
    def illume_kit_metrics(self):
        return self._specs("metric")

    @hookimpl
    def illume_kit_recipes(self):
        root = Path(__file__).resolve().parents[1] / "recipes"
        return [RecipeSource(str(root))] if root.is_dir() else []


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
        self.register(BuiltinPlugin(), PluginInfo("builtin", "illume-kit", illume_kit.__version__))
        if entry_points:
            self._load_entry_points()

    # -- registration ------------------------------------------------------------------
    def register(self, plugin: Any, info: PluginInfo) -> None:
        self.pm.register(plugin, name=info.name)
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
            if ep.name in disabled or dist in disabled or (only is not None and ep.name not in only and dist not in only):
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
        for hook, role in hookspecs.HOOK_ROLES.items():
            for info, fn in self._impls(hook):
                if info.status != "ok":
                    continue
                try:
                    specs = list(fn() or ())
                    for spec in specs:
                        if not isinstance(spec, ComponentSpec) or spec.role != role:
                            raise PluginError(f"{hook} must return ComponentSpec records of role {role!r}, got {spec!r}")
                except Exception as exc:
                    self._fail(info, exc)
                    continue
                for spec in specs:
                    spec = replace(spec, dist=info.dist, dist_version=info.version, plugin=info.name)
                    reg.add(spec)  # DuplicateComponent names both distributions
                    info.components.append(f"{role}:{spec.name}")
        for info, fn in self._impls("illume_kit_recipes"):
            if info.status == "ok":
                try:
                    reg.recipe_sources.extend(replace(s, dist=info.dist) for s in (fn() or ()))
                except Exception as exc:
                    self._fail(info, exc)
        reg.failed = [f"{i.name} ({i.dist} {i.version}): {i.reason}" for i in self.infos.values() if i.status == "failed"]
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
