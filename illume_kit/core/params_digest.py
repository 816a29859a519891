"""Pre-rendered params tables of the built-in components, so ``illume-kit show`` imports no pydantic.

Importing pydantic and building a ``Params`` model is ~0.2 s of ``show``'s start-up; the rows it
prints (key, type, default, description), the JSON schema and the presets only change when a params
module (or an illume_kit module it imports) does. ``illume_kit/params_digest.json`` holds them for every
built-in component, each entry with a fingerprint of those source files: an entry whose files changed
is ignored and ``show`` renders live, so the file can be stale but never wrong. ``tests/core/test_params_digest.py``
fails when it is stale; ``python -m illume_kit.core.params_digest`` rewrites it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from illume_kit.core.registry import ComponentSpec

PACKAGE = Path(__file__).resolve().parent.parent
DIGEST = PACKAGE / "params_digest.json"
_LOADED: dict[str, Any] = {}


def key(spec: ComponentSpec) -> str:
    return f"{spec.role}/{spec.name}"


_IMPORT = re.compile(r"^\s*(?:from|import)\s+(illume_kit(?:\.\w+)*)", re.MULTILINE)


def _module_file(module: str) -> Path | None:
    """The source file of an ``illume_kit`` module, found without importing it (or its package)."""
    parts = module.split(".")
    if parts[0] != PACKAGE.name:
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _source_files(spec: ComponentSpec) -> set[Path] | None:
    """The files behind a spec's params and presets and the illume_kit modules they import, found by
    reading (not importing) them; None if a target is not a module of this package."""
    pending = []
    for t in (spec.params if spec.params is not None else spec.target, spec.presets):
        if not t:
            continue
        path = _module_file(t.partition(":")[0]) if isinstance(t, str) else None
        if path is None:
            return None
        pending.append(path)
    files: set[Path] = set()
    while pending:
        path = pending.pop()
        if path in files:
            continue
        files.add(path)
        pending += [f for m in _IMPORT.findall(path.read_text()) if (f := _module_file(m)) is not None]
    return files


def fingerprint(spec: ComponentSpec) -> str | None:
    files = _source_files(spec)
    if files is None:
        return None
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.relative_to(PACKAGE).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def render(spec: ComponentSpec) -> dict[str, Any]:
    """What ``show`` prints, computed from the live ``Params`` model (imports pydantic)."""
    params = spec.load_params()
    rows = []
    for name, f in params.model_fields.items():
        ann = getattr(f.annotation, "__name__", None) or str(f.annotation).replace("typing.", "")
        default = "required" if f.is_required() else repr(f.get_default(call_default_factory=True))
        rows.append([name, ann, default, f.description or ""])
    out = {"fields": rows, "schema": params.model_json_schema(), "presets": spec.load_presets()}
    return json.loads(json.dumps(out, default=repr))  # what the digest file would give back


def cached(spec: ComponentSpec) -> dict[str, Any] | None:
    """The digest entry of a built-in spec if its source files are unchanged, else None."""
    if spec.plugin != "builtin":
        return None
    if "data" not in _LOADED:
        try:
            _LOADED["data"] = json.loads(DIGEST.read_text())
        except (OSError, ValueError):
            _LOADED["data"] = {}
    entry = _LOADED["data"].get(key(spec))
    if not entry or entry.get("fingerprint") != fingerprint(spec):
        return None
    return entry


def build(specs) -> dict[str, Any]:
    """Digest entries of ``specs`` (built-ins: see ``builtin_specs``) whose sources this package holds."""
    out = {}
    for spec in specs:
        fp = fingerprint(spec)
        if fp is not None:
            out[key(spec)] = {"fingerprint": fp, **render(spec)}
    return dict(sorted(out.items()))


def builtin_specs() -> list[ComponentSpec]:
    from illume_kit.core.plugins import get_registry
    from illume_kit.core.registry import ROLES

    reg = get_registry()
    return [s for r in ROLES for s in reg.specs(r) if s.plugin == "builtin"]


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1, default=repr) + "\n"


def main() -> None:
    data = build(builtin_specs())
    DIGEST.write_text(dumps(data))
    print(f"wrote {len(data)} entries to {DIGEST}")


if __name__ == "__main__":
    main()
