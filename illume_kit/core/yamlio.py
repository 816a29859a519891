"""YAML reading through libyaml when PyYAML was built with it (5-10x faster than the pure-Python
loader; the same safe subset and the same errors with line marks), else PyYAML's SafeLoader.
The torch-free verbs read the registry and recipes on every start, so this is start-up time."""

from __future__ import annotations

from typing import Any

import yaml

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(text: str) -> Any:
    return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader (C or pure Python)
