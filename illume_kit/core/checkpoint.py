"""Checkpoint folders: a manifest, the resolved recipe, one subfolder of safetensors per component.

    ckpt/
      illume_kit.json        format, versions, per component: registry name, providing distribution
                             and version, params; the vocab layout; model options
      recipe.yaml            the resolved recipe (data only)
      tokenizer/model.safetensors   backbone/...   detokenizer/...   projectors/...
      training_state/        (written by the trainer, apart from weights)

Loading resolves every component by registry name through the plugin registry and imports nothing
the files name. A folder is written next to its destination and renamed into place, so a crash
never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

import illume_kit
from illume_kit.core import yamlio
from illume_kit.core.atomic import atomic_dir
from illume_kit.core.layout import VocabLayout
from illume_kit.core.protocols import CheckpointParams, LoadsExtra, SavesExtra
from illume_kit.core.registry import Registry, RegistryError, UnknownComponent
from illume_kit.core.schema import ModelOptions

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


def _portable_params(module, params: dict) -> dict:
    """The params a manifest records: a component with a ``checkpoint_params`` hook rewrites what
    its weights make redundant (e.g. a teacher's source folder, whose weights it holds)."""
    return module.checkpoint_params(params) if isinstance(module, CheckpointParams) else params


def _save_module(module, folder: Path) -> None:
    from safetensors.torch import save_model

    folder.mkdir(parents=True, exist_ok=True)
    save_model(module, str(folder / "model.safetensors"))
    if isinstance(module, SavesExtra):
        module.save_extra(folder)


def _load_module(module, folder: Path, what: str, filename: str = "model.safetensors") -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    path = folder / filename
    if not path.is_file():
        raise CheckpointError(f"{what}: weight file {path} is missing")
    try:
        missing, unexpected = load_model(module, str(path), strict=False)
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{what}: weight file {path} is corrupt or does not fit: {str(exc).splitlines()[0]}") from exc
    if missing or unexpected:
        raise CheckpointError(f"{what}: weight file {path} does not match the component "
                              f"(missing: {', '.join(sorted(missing)[:5]) or 'none'}; "
                              f"unexpected: {', '.join(sorted(unexpected)[:5]) or 'none'})")


def load_component_weights(module, path: str | Path, section: str) -> None:
    """Load a component's weights from a ``.safetensors`` file, a component folder holding
    ``model.safetensors``, or a checkpoint folder holding ``<section>/model.safetensors``."""
    path = Path(path).expanduser()
    if path.is_dir():
        sub = path / section if (path / section / "model.safetensors").is_file() else path
        _load_module(module, sub, f"{section} weights")
        return
    if not path.is_file():
        raise CheckpointError(f"{section}.weights: {path} does not exist (a .safetensors file or a checkpoint folder)")
    _load_module(module, path.parent, f"{section} weights", path.name)


def save_component(module, section: str, spec, params, folder: str | Path, preset: str | None = None,
                   extra: dict | None = None) -> Path:
    """Write one component alone (e.g. converted official weights): manifest + ``<section>/``."""
    manifest = {
        "format": FORMAT, "kind": "component", "illume_kit_version": illume_kit.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "components": {section: {"name": spec.name, "role": spec.role, "dist": spec.dist,
                                 "dist_version": spec.dist_version, "preset": preset,
                                 "params": _portable_params(module, params.model_dump(mode="json")),
                                 "subfolder": section,
                                 "class": spec.target_str()}},
        **(extra or {}),
    }

    with atomic_dir(folder) as tmp:
        _save_module(module, tmp / section)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return Path(folder)


def save_checkpoint(model, resolved, folder: str | Path, extra: dict | None = None) -> Path:
    """Write ``model`` (a UnifiedModel) composed from ``resolved`` (a ResolvedRecipe) to ``folder``."""
    recipe_text = resolved.to_yaml()
    comps = {}
    for sec in SECTIONS:
        rc = resolved.components.get(sec)
        if rc is None:
            continue
        comps[sec] = {"name": rc.spec.name, "role": rc.spec.role, "dist": rc.spec.dist,
                      "dist_version": rc.spec.dist_version, "preset": rc.preset,
                      "params": _portable_params(getattr(model, sec), rc.params_dict),
                      "subfolder": sec, "class": rc.spec.target_str()}
    manifest = {
        "format": FORMAT,
        "illume_kit_version": illume_kit.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "recipe_name": resolved.data.get("name"),
        "recipe_sha256": hashlib.sha256(recipe_text.encode()).hexdigest(),
        "components": comps,
        "model": resolved.recipe.model.model_dump(mode="json"),
        "vocab_layout": model.layout.to_dict(),
        **(extra or {}),
    }

    with atomic_dir(folder) as tmp:
        for sec in SECTIONS:
            part = getattr(model, sec)
            if part is not None:
                _save_module(part, tmp / sec)
        _save_module(model.projectors, tmp / "projectors")
        (tmp / "recipe.yaml").write_text(recipe_text)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return Path(folder)


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
        raise CheckpointError(f"{path} has checkpoint format {fmt}, newer than this illume-kit "
                              f"{illume_kit.__version__} reads ({FORMAT}); upgrade illume-kit "
                              f"(written by illume-kit {manifest.get('illume_kit_version', '?')})")
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
            raise CheckpointError(f"checkpoint needs {rec['role']} {rec['name']!r} from {rec['dist']}; "
                                  f"install it: pip install '{rec['dist']}>={rec['dist_version']}'") from None
        have = spec.dist_version or _installed_version(spec.dist) or "0"
        if rec.get("dist_version") and _version_tuple(have) < _version_tuple(rec["dist_version"]):
            raise CheckpointError(f"{rec['role']} {rec['name']!r} was written by {rec['dist']} {rec['dist_version']} "
                                  f"but {spec.dist} {have} is installed; upgrade: pip install "
                                  f"'{rec['dist']}>={rec['dist_version']}'")
        try:
            params = spec.load_params().model_validate(rec["params"])
        except Exception as exc:
            raise CheckpointError(f"{sec} params in the manifest do not validate against {spec.name!r}: "
                                  f"{str(exc).splitlines()[0]}") from exc
        out[sec] = (spec, params)
    return out


def load_checkpoint(folder: str | Path, registry: Registry | None = None, weights: bool = True):
    """Rebuild the UnifiedModel saved in ``folder``; returns (model, manifest)."""
    from illume_kit.core.compose import assemble, build_component
    from illume_kit.core.plugins import get_registry

    folder = Path(folder)
    manifest = read_manifest(folder)
    registry = registry or get_registry()
    resolved = resolve_manifest(manifest, registry)
    if manifest.get("kind") == "component":
        raise CheckpointError(f"{folder} holds a single component ({', '.join(resolved)}), not a composed model: "
                              f"use it from a recipe as `<section>: {{..., weights: {folder}}}`")
    if "tokenizer" not in resolved or "backbone" not in resolved:
        raise CheckpointError(f"{folder / MANIFEST}: a checkpoint needs a tokenizer and a backbone")
    parts = {}
    for sec, (spec, params) in resolved.items():
        part = build_component(spec, params)
        if isinstance(part, LoadsExtra) and (folder / sec).is_dir():
            part.load_extra(folder / sec)
        parts[sec] = part
    options = ModelOptions.model_validate(manifest.get("model", {}))
    layout = VocabLayout.from_dict(manifest["vocab_layout"])
    names = {sec: spec.name for sec, (spec, _) in resolved.items()}
    model = assemble(parts["tokenizer"], parts["backbone"], parts.get("detokenizer"), options, layout, names)
    if weights:
        for sec in SECTIONS:
            if parts.get(sec) is not None:
                _load_module(parts[sec], folder / sec, sec)
        _load_module(model.projectors, folder / "projectors", "projectors")
    model.eval()
    return model, manifest


def load_recipe_yaml(folder: str | Path) -> dict:
    return yamlio.safe_load((Path(folder) / "recipe.yaml").read_text())
