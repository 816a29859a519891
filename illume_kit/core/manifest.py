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
import re
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

import illume_kit
from illume_kit.core import yamlio
from illume_kit.core.layout import LayoutRecord, validation_summary
from illume_kit.core.registry import ROLES, Registry, RegistryError, UnknownComponent
from illume_kit.core.schema import ModelOptions

FORMAT = 1
MANIFEST = "illume_kit.json"
SECTIONS = ("tokenizer", "backbone", "detokenizer")
# a manifest is a few kB (the vocab layout's tags grow with max_resolution / resolution_step); a file
# far beyond that is not one, and is refused before it is read
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# nesting a manifest never needs (params hold a few levels); deeper JSON is refused before parsing,
# so neither the parser nor anything walking the result can run out of stack
MAX_DEPTH = 32


class CheckpointError(RegistryError):
    pass


class ComponentRecord(BaseModel):
    """One ``components`` entry: which registry component, from which distribution, with which params."""

    model_config = ConfigDict(extra="allow", strict=True)
    name: str = Field(min_length=1)
    role: str
    dist: str = Field(min_length=1)
    dist_version: str = ""
    preset: str | None = None
    params: dict[str, Any]
    subfolder: str | None = None

    @field_validator("role")
    @classmethod
    def _role(cls, v: str) -> str:
        if v not in ROLES:
            raise ValueError(f"unknown role {v!r} (valid: {', '.join(ROLES)})")
        return v


class ManifestRecord(BaseModel):
    """The structure of ``illume_kit.json``; component params are checked against each component."""

    model_config = ConfigDict(extra="allow", strict=True)
    format: int
    kind: str | None = None
    illume_kit_version: str = "?"
    components: dict[str, ComponentRecord] = Field(min_length=1)
    model: ModelOptions | None = None
    vocab_layout: LayoutRecord | None = None

    @field_validator("components")
    @classmethod
    def _sections(cls, v: dict[str, ComponentRecord]) -> dict[str, ComponentRecord]:
        extra = sorted(set(v) - set(SECTIONS))
        if extra:
            raise ValueError(f"unknown sections {extra} (valid: {', '.join(SECTIONS)})")
        return v

    @model_validator(mode="after")
    def _layout_fits_options(self) -> ManifestRecord:
        if self.kind != "component" and self.vocab_layout is None:
            raise ValueError("vocab_layout is missing (a composed model's checkpoint records it)")
        if self.model is None or self.vocab_layout is None:
            return self
        step, tags = self.model.resolution_step, len(self.vocab_layout.resolution_tags) // 2
        if self.vocab_layout.resolution_step != step or tags != self.model.max_resolution // step:
            raise ValueError(
                f"vocab_layout has {tags} sizes in steps of {self.vocab_layout.resolution_step} but model "
                f"options say max_resolution {self.model.max_resolution} in steps of {step}"
            )
        return self


def _json_depth(text: str) -> int:
    """How deep ``[``/``{`` nest in JSON text, strings skipped (no parsing, no recursion)."""
    depth = deepest = 0
    for m in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', text):
        ch = m.group()
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _load_json(path: Path) -> Any:
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise CheckpointError(
                f"{path} is {size} bytes, more than a manifest can be ({MAX_MANIFEST_BYTES}); not an illume-kit manifest"
            )
        with path.open("rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise CheckpointError(f"{path} holds more than a manifest can ({MAX_MANIFEST_BYTES} bytes)")
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path} is not UTF-8 text (byte {exc.start}); not an illume-kit manifest") from None
    if _json_depth(text) > MAX_DEPTH:
        raise CheckpointError(f"{path} nests JSON more than {MAX_DEPTH} levels deep; not an illume-kit manifest")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None


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
    manifest = _load_json(path)
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path}: the top level must be a mapping, got {type(manifest).__name__}")
    fmt = manifest.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise CheckpointError(f"{path}: missing or bad 'format' (an integer, {FORMAT} for this illume-kit)")
    if fmt > FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {fmt}, newer than this illume-kit "
            f"{illume_kit.__version__} reads ({FORMAT}); upgrade illume-kit "
            f"(written by illume-kit {manifest.get('illume_kit_version', '?')})"
        )
    try:
        ManifestRecord.model_validate(manifest)
    except ValidationError as exc:
        raise CheckpointError(f"{path}: {validation_summary(exc)}") from None
    return manifest


def _installed_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def resolve_manifest(manifest: dict[str, Any], registry: Registry, where: str | Path = MANIFEST) -> dict[str, tuple]:
    """(spec, params) per section, checking plugins are installed and not older than the writer.
    ``manifest`` comes from :func:`read_manifest` (structure checked); ``where`` names it in errors."""
    out = {}
    for sec, rec in manifest.get("components", {}).items():
        try:
            spec = registry.get(rec["role"], rec["name"])
        except UnknownComponent:
            raise CheckpointError(
                f"{where}: checkpoint needs {rec['role']} {rec['name']!r} from {rec['dist']}; "
                f"install it: pip install '{rec['dist']}>={rec.get('dist_version') or 0}'"
            ) from None
        have = spec.dist_version or _installed_version(spec.dist) or "0"
        if rec.get("dist_version") and _version_tuple(have) < _version_tuple(rec["dist_version"]):
            raise CheckpointError(
                f"{where}: {rec['role']} {rec['name']!r} was written by {rec['dist']} {rec['dist_version']} "
                f"but {spec.dist} {have} is installed; upgrade: pip install "
                f"'{rec['dist']}>={rec['dist_version']}'"
            )
        try:
            params = spec.load_params().model_validate(rec["params"])
        except ValidationError as exc:
            raise CheckpointError(
                f"{where}: components.{sec}.params do not validate against {spec.name!r}: "
                f"{validation_summary(exc, f'components.{sec}.params')}"
            ) from None
        except Exception as exc:
            raise CheckpointError(
                f"{where}: components.{sec}.params do not validate against {spec.name!r}: {str(exc).splitlines()[0]}"
            ) from exc
        out[sec] = (spec, params)
    return out


def load_recipe_yaml(folder: str | Path) -> dict:
    """A checkpoint's ``recipe.yaml`` as a mapping; CheckpointError naming the file otherwise."""
    path = Path(folder) / "recipe.yaml"
    try:
        data = yamlio.safe_load(path.read_text(encoding="utf-8"), str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing (every checkpoint folder holds its recipe)") from None
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read: {exc.strerror or exc}") from None
    except Exception as exc:  # whatever the YAML reader refuses (tags, syntax, alias bombs, nesting)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a plain-data YAML recipe: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data
