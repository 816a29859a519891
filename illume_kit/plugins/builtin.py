"""illume-kit's own plugin: serves the packaged registry.yaml through ``illume_kit_components``.

Declared under the ``illume_kit`` entry-point group like any third-party plugin. The plugin manager
never disables it (``ILLUME_KIT_DISABLE_PLUGINS`` / ``ILLUME_KIT_LOAD_PLUGINS`` select third-party
plugins only), and registers this module directly when the installed metadata does not list it
(a checkout run through ``PYTHONPATH``), so the built-ins are always present.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from illume_kit import hookimpl
from illume_kit.core import yamlio
from illume_kit.core.registry import ROLES, ComponentSpec, RecipeSource, RegistryError

# record keys registry.yaml may use; anything else is a typo in the packaged file
FIELDS = ("summary", "target", "params", "presets", "aliases", "requires", "provides")


def records(data: dict[str, dict[str, dict[str, Any]]]) -> list[ComponentSpec]:
    out = []
    for role, table in (data or {}).items():
        if role not in ROLES:
            raise RegistryError(f"registry.yaml: unknown role {role!r} (valid: {', '.join(ROLES)})")
        for name, rec in (table or {}).items():
            extra = set(rec) - set(FIELDS)
            if extra:
                raise RegistryError(
                    f"registry.yaml: {role} {name!r} has unknown keys {sorted(extra)} (valid: {', '.join(FIELDS)})"
                )
            out.append(
                ComponentSpec(
                    role=role,
                    name=name,
                    target=rec["target"],
                    summary=rec.get("summary", ""),
                    params=rec.get("params"),
                    presets=rec.get("presets") or {},
                    aliases=tuple(rec.get("aliases", ())),
                    requires=tuple(rec.get("requires", ())),
                    provides=tuple(rec.get("provides", ())),
                )
            )
    return out


@hookimpl
def illume_kit_components() -> list[ComponentSpec]:
    text = resources.files("illume_kit").joinpath("registry.yaml").read_text()
    return records(yamlio.safe_load(text, "illume_kit/registry.yaml") or {})


@hookimpl
def illume_kit_recipes() -> list[RecipeSource]:
    pkg = Path(__file__).resolve().parents[1]
    for root in (pkg / "recipes", pkg.parent / "recipes"):  # package data, else a checkout's folder
        if root.is_dir():
            return [RecipeSource(str(root))]
    return []
