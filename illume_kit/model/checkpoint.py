"""Checkpoint folders: write a composed model or one component, load them back.

The folder layout and the manifest (read without torch) are ``illume_kit.core.manifest``. Loading
resolves every component by registry name through the plugin registry and imports nothing the
files name. A folder is written next to its destination and renamed into place, so a crash
never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path

import illume_kit
from illume_kit.core.atomic import atomic_dir
from illume_kit.core.layout import VocabLayout
from illume_kit.core.manifest import FORMAT, MANIFEST, SECTIONS, CheckpointError, read_manifest, resolve_manifest
from illume_kit.core.plugins import get_registry
from illume_kit.core.protocols import CheckpointParams, LoadsExtra
from illume_kit.core.registry import Registry
from illume_kit.core.schema import ModelOptions
from illume_kit.model.compose import assemble, build_component, build_layout
from illume_kit.model.weights import load_component_weights, load_module, save_module

__all__ = ["load_checkpoint", "load_component_weights", "save_checkpoint", "save_component"]


def _portable_params(module, params: dict) -> dict:
    """The params a manifest records: a component with a ``checkpoint_params`` hook rewrites what
    its weights make redundant (e.g. a teacher's source folder, whose weights it holds)."""
    return module.checkpoint_params(params) if isinstance(module, CheckpointParams) else params


def save_component(
    module, section: str, spec, params, folder: str | Path, preset: str | None = None, extra: dict | None = None
) -> Path:
    """Write one component alone (e.g. converted official weights): manifest + ``<section>/``."""
    manifest = {
        "format": FORMAT,
        "kind": "component",
        "illume_kit_version": illume_kit.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "components": {
            section: {
                "name": spec.name,
                "role": spec.role,
                "dist": spec.dist,
                "dist_version": spec.dist_version,
                "preset": preset,
                "params": _portable_params(module, params.model_dump(mode="json")),
                "subfolder": section,
                "class": spec.target_str(),
            }
        },
        **(extra or {}),
    }

    with atomic_dir(folder) as tmp:
        save_module(module, tmp / section)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return Path(folder)


def save_checkpoint(
    model, resolved, folder: str | Path, extra: dict | None = None, files: dict[str, str] | None = None
) -> Path:
    """Write ``model`` (a UnifiedModel) composed from ``resolved`` (a ResolvedRecipe) to ``folder``;
    ``extra``: keys added to the manifest; ``files``: file name -> text, written beside it."""
    recipe_text = resolved.to_yaml()
    comps = {}
    for sec in SECTIONS:
        rc = resolved.components.get(sec)
        if rc is None:
            continue
        comps[sec] = {
            "name": rc.spec.name,
            "role": rc.spec.role,
            "dist": rc.spec.dist,
            "dist_version": rc.spec.dist_version,
            "preset": rc.preset,
            "params": _portable_params(getattr(model, sec), rc.params_dict),
            "subfolder": sec,
            "class": rc.spec.target_str(),
        }
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
                save_module(part, tmp / sec)
        save_module(model.projectors, tmp / "projectors")
        if getattr(model, "input_encoder", None) is not None:
            save_module(model.input_encoder, tmp / "input_encoder")
        (tmp / "recipe.yaml").write_text(recipe_text)
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return Path(folder)


def _layout_mismatch(stored: VocabLayout, computed: VocabLayout) -> str:
    """Which key of the stored vocab layout differs from the one the components give, and how."""
    have, want = stored.to_dict(), computed.to_dict()
    key = next((k for k in want if have.get(k) != want[k]), "codebooks")
    if key == "codebooks":
        h = [(c["name"], c["size"]) for c in have["codebooks"]]
        w = [(c["name"], c["size"]) for c in want["codebooks"]]
        detail = f"codebooks (name, size) are {h}, the tokenizer's are {w}"
    elif isinstance(want[key], list):
        detail = f"{key} has {len(have[key])} entries, the components give {len(want[key])}"
    else:
        detail = f"{key} is {have[key]}, the components give {want[key]}"
    return (
        f"vocab_layout does not match its components: {detail}; "
        "the layout was written for different components or params"
    )


def load_checkpoint(folder: str | Path, registry: Registry | None = None, weights: bool = True, meta: bool = False):
    """Rebuild the UnifiedModel saved in ``folder``; returns (model, manifest). ``meta``: on the meta
    device, from the manifest alone (no weights are read)."""
    if meta:
        import torch

        with torch.device("meta"):
            return _load_checkpoint(Path(folder), registry, weights=False)
    return _load_checkpoint(Path(folder), registry, weights)


def _load_checkpoint(folder: Path, registry: Registry | None, weights: bool):
    manifest = read_manifest(folder)
    where = folder / MANIFEST
    registry = registry or get_registry()
    resolved = resolve_manifest(manifest, registry, where)
    if manifest.get("kind") == "component":
        raise CheckpointError(
            f"{folder} holds a single component ({', '.join(resolved)}), not a composed model: "
            f"use it from a recipe as `<section>: {{..., weights: {folder}}}`"
        )
    if "tokenizer" not in resolved or "backbone" not in resolved:
        raise CheckpointError(f"{where}: a checkpoint needs a tokenizer and a backbone")
    if manifest.get("vocab_layout") is None:
        raise CheckpointError(f"{where}: vocab_layout is missing (a composed model's checkpoint records it)")
    try:  # read_manifest checked both; these only convert
        options = ModelOptions.model_validate(manifest.get("model", {}))
        layout = VocabLayout.from_dict(manifest["vocab_layout"])
    except ValueError as exc:
        raise CheckpointError(f"{where}: {str(exc).splitlines()[0]}") from None
    parts = {}
    for sec, (spec, params) in resolved.items():
        part = build_component(spec, params)
        if isinstance(part, LoadsExtra) and (folder / sec).is_dir():
            part.load_extra(folder / sec)
        parts[sec] = part
    computed = build_layout(parts["tokenizer"], parts["backbone"], options)
    if computed != layout:
        raise CheckpointError(f"{where}: {_layout_mismatch(layout, computed)}")
    names = {sec: spec.name for sec, (spec, _) in resolved.items()}
    model = assemble(parts["tokenizer"], parts["backbone"], parts.get("detokenizer"), options, layout, names)
    if weights:
        for sec in SECTIONS:
            if parts.get(sec) is not None:
                load_module(parts[sec], folder / sec, sec)
        load_module(model.projectors, folder / "projectors", "projectors")
        if model.input_encoder is not None:
            load_module(model.input_encoder, folder / "input_encoder", "input_encoder")
    model.eval()
    return model, manifest
