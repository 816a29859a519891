"""The manifest of a checkpoint folder (``illume_kit.json``), read without torch.

    ckpt/
      illume_kit.json        format, versions, per component: registry name, providing distribution
                             and version, params; the vocab layout; model options
      recipe.yaml            the resolved recipe (data only)
      tokenizer/model.safetensors   backbone/...   detokenizer/...   projectors/...
      training_state/        (written by the trainer, apart from weights)

Reading a manifest resolves every component by registry name through the plugin registry and
imports nothing the file names. Writing checkpoints and loading weights is ``illume_kit.model.checkpoint``.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

import illume_kit
from illume_kit.core import yamlio
from illume_kit.core.registry import Registry, RegistryError, UnknownComponent

FORMAT = 1
MANIFEST = "illume_kit.json"
SECTIONS = ("tokenizer", "backbone", "detokenizer")


class CheckpointError(RegistryError):
    pass


def _version_tuple(v: str) -> tuple:
    out = []
    for part in v.split("."):
        num = "".join(ch for ch in part if ch.isdigit())
        out.append(int(num) if num else 0)
    return tuple(out)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a checkpoint folder (no such directory)")
    if not path.is_file():
        raise CheckpointError(f"{folder} is not an illume-kit checkpoint: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    fmt = manifest.get("format")
    if not isinstance(fmt, int):
        raise CheckpointError(f"{path}: missing or bad 'format'")
    if fmt > FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {fmt}, newer than this illume-kit "
            f"{illume_kit.__version__} reads ({FORMAT}); upgrade illume-kit "
            f"(written by illume-kit {manifest.get('illume_kit_version', '?')})"
        )
    return manifest


def _installed_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def resolve_manifest(manifest: dict[str, Any], registry: Registry) -> dict[str, tuple]:
    """(spec, params) per section, checking plugins are installed and not older than the writer."""
    out = {}
    for sec, rec in manifest.get("components", {}).items():
        try:
            spec = registry.get(rec["role"], rec["name"])
        except UnknownComponent:
            raise CheckpointError(
                f"checkpoint needs {rec['role']} {rec['name']!r} from {rec['dist']}; "
                f"install it: pip install '{rec['dist']}>={rec['dist_version']}'"
            ) from None
        have = spec.dist_version or _installed_version(spec.dist) or "0"
        if rec.get("dist_version") and _version_tuple(have) < _version_tuple(rec["dist_version"]):
            raise CheckpointError(
                f"{rec['role']} {rec['name']!r} was written by {rec['dist']} {rec['dist_version']} "
                f"but {spec.dist} {have} is installed; upgrade: pip install "
                f"'{rec['dist']}>={rec['dist_version']}'"
            )
        try:
            params = spec.load_params().model_validate(rec["params"])
        except Exception as exc:
            raise CheckpointError(
                f"{sec} params in the manifest do not validate against {spec.name!r}: {str(exc).splitlines()[0]}"
            ) from exc
        out[sec] = (spec, params)
    return out


def load_recipe_yaml(folder: str | Path) -> dict:
    return yamlio.load_file(Path(folder) / "recipe.yaml")
