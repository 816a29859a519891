"""Component records and the registry that serves them.

A ``ComponentSpec`` names a component by role and registry name and points at its class and its
``Params`` model with lazy ``"module:attr"`` strings, so listing, ``show`` and recipe validation import
no torch. Recipes and checkpoints only ever carry registry names; a target string is resolved here,
from records that came from installed code (registry.yaml or a plugin), never from a file being read.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

ROLES = ("tokenizer", "backbone", "detokenizer", "quantizer", "teacher", "dataset", "metric")
ROLE_ALIASES = {r + "s": r for r in ROLES} | {"recipe": "recipe", "recipes": "recipe", "data": "dataset"}


class RegistryError(Exception):
    """Base error: always printable as one clear message."""


class UnknownComponent(RegistryError, KeyError):
    def __init__(self, role: str, name: str, available: Iterable[str], failed: Iterable[str] = ()):
        self.role, self.name = role, name
        self.available = sorted(available)
        self.suggestions = difflib.get_close_matches(name, self.available, n=3, cutoff=0.5)
        self.failed = list(failed)
        super().__init__(str(self))

    def __str__(self) -> str:
        msg = f"unknown {self.role} {self.name!r}."
        if self.suggestions:
            msg += f" Did you mean {', '.join(self.suggestions)}?"
        avail = ", ".join(self.available[:20]) or "none"
        msg += f" (available: {avail})"
        if self.failed:
            msg += f"; plugins that failed to load: {', '.join(self.failed)}"
        return msg


class DuplicateComponent(RegistryError):
    pass


class PluginImportError(RegistryError):
    """A component's code could not be imported; the cause in one line (``--debug`` for the traceback)."""


def import_target(target: str) -> Any:
    """Resolve ``"pkg.mod:Attr"``; only ever called on targets from installed code."""
    mod, _, attr = target.partition(":")
    if not mod or not attr:
        raise RegistryError(f"bad target {target!r}: expected 'package.module:Attr'")
    obj = importlib.import_module(mod)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class ComponentSpec:
    """A registry record. ``target`` and ``params`` are lazy ``module:attr`` strings (or objects).

    ``params`` points at the component's pydantic ``Params`` model; it should live in a torch-free
    module so that validating a recipe never imports torch. When omitted, ``target.Params`` is used.
    ``presets`` maps a preset name to a params dict; a recipe's ``params`` are applied on top.
    ``provides`` names the capabilities the component offers to others (a tokenizer's
    ``pixel_decoder``, ``code_maps``); ``requires`` the ones it needs from the components it is
    composed with. ``illume-kit validate`` checks them without importing the component.
    """

    role: str
    name: str
    target: Any
    summary: str = ""
    params: Any = None
    presets: Any = field(default_factory=dict)  # mapping, or a lazy "module:attr" to one
    aliases: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    api: int = 1
    # provenance, filled by the plugin manager
    dist: str = "illume-kit"
    dist_version: str = ""
    plugin: str = "builtin"

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise RegistryError(f"component {self.name!r}: unknown role {self.role!r} (valid: {', '.join(ROLES)})")

    def _import(self, target: Any, what: str) -> Any:
        if not isinstance(target, str):
            return target
        try:
            return import_target(target)
        except Exception as exc:
            cause = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise PluginImportError(
                f"cannot import the {what} of {self.role} {self.name!r} from {self.dist} "
                f"{self.dist_version}: {type(exc).__name__}: {cause}"
            ) from exc

    def load(self) -> Any:
        return self._import(self.target, "code")

    def load_params(self) -> Any:
        if self.params is None:
            return self.load().Params
        return self._import(self.params, "params")

    def load_presets(self) -> dict[str, dict[str, Any]]:
        p = self._import(self.presets, "presets")
        return {k: dict(v) for k, v in (p or {}).items()}

    def target_str(self) -> str:
        t = self.target
        return t if isinstance(t, str) else f"{t.__module__}:{t.__qualname__}"


@dataclass(frozen=True)
class RecipeSource:
    """A folder of shipped recipes; ``prefix`` namespaces them (``illume-kit recipes`` lists them)."""

    path: str
    prefix: str = ""
    dist: str = "illume-kit"


class Registry:
    """All component specs by role, with did-you-mean lookups. Never returns None."""

    def __init__(self) -> None:
        self._specs: dict[str, dict[str, ComponentSpec]] = {r: {} for r in ROLES}
        self._aliases: dict[str, dict[str, str]] = {r: {} for r in ROLES}
        self.failed: list[str] = []
        self.conflicts: list[str] = []
        self.recipe_sources: list[RecipeSource] = []

    def clash(self, spec: ComponentSpec) -> tuple[str, ComponentSpec] | None:
        """The first of ``spec``'s names (or aliases) already served, with the record serving it."""
        table, aliases = self._specs[spec.role], self._aliases[spec.role]
        for n in (spec.name, *spec.aliases):
            other = table.get(n) or table.get(aliases.get(n, ""))
            if other is not None:
                return n, other
        return None

    def add(self, spec: ComponentSpec) -> None:
        hit = self.clash(spec)
        if hit is not None:
            n, other = hit
            raise DuplicateComponent(
                f"{spec.role} {n!r} is provided by two distributions: {other.dist} ({other.plugin}) and "
                f"{spec.dist} ({spec.plugin}); uninstall one, or disable one with ILLUME_KIT_DISABLE_PLUGINS"
            )
        self._specs[spec.role][spec.name] = spec
        for a in spec.aliases:
            self._aliases[spec.role][a] = spec.name

    def names(self, role: str) -> list[str]:
        return sorted(self._specs[role])

    def specs(self, role: str | None = None) -> list[ComponentSpec]:
        roles = ROLES if role is None else (role,)
        return [self._specs[r][n] for r in roles for n in sorted(self._specs[r])]

    def has(self, role: str, name: str) -> bool:
        return name in self._specs[role] or name in self._aliases[role]

    def get(self, role: str, name: str) -> ComponentSpec:
        if role not in self._specs:
            raise UnknownComponent("role", role, ROLES)
        name = self._aliases[role].get(name, name)
        try:
            return self._specs[role][name]
        except KeyError:
            raise UnknownComponent(role, name, self._specs[role], self.failed) from None
