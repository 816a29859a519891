"""YAML reading through libyaml when PyYAML was built with it (5-10x faster than the pure-Python
loader; the same safe subset and the same errors with line marks), else PyYAML's SafeLoader.
The torch-free verbs read the registry and recipes on every start, so this is start-up time.

Before a document is turned into Python objects its node graph (composed by libyaml) is checked:
- aliases may not expand past ``MAX_NODES`` values (a few hundred bytes of nested aliases, the
  "billion laughs", would otherwise expand to billions of values when the recipe is merged);
- a mapping may not give the same key twice (YAML's last-wins would silently drop the first);
- only the standard data tags are accepted (``!!python/...`` and custom tags are refused).
Each refusal is a ``YamlError`` naming the file and the line.
"""

from __future__ import annotations

from typing import Any

import yaml

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# values a document may hold once its aliases are expanded; recipes hold hundreds
MAX_NODES = 200_000
_STD = "tag:yaml.org,2002:"
ALLOWED_TAGS = frozenset(
    _STD + t for t in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp", "binary", "merge", "set")
)


class YamlError(yaml.YAMLError, ValueError):
    """A YAML text refused before it is constructed; ``str()`` names the file and the line."""

    def __init__(self, source: str, line: int | None, message: str):
        self.source, self.line, self.message = source, line, message
        self.problem = message + (f" (line {line})" if line else "")
        super().__init__(f"{source}{f', line {line}' if line else ''}: {message}")


def _line(node: yaml.Node) -> int | None:
    mark = getattr(node, "start_mark", None)
    return mark.line + 1 if mark is not None else None


def check(node: yaml.Node | None, source: str = "<yaml>", max_nodes: int = MAX_NODES) -> None:
    """Refuse alias bombs, duplicate keys and non-data tags in a composed document."""
    if node is None:
        return
    size: dict[int, int] = {}  # expanded size of each finished node, by identity (aliases share nodes)
    open_: set[int] = set()  # collections being walked: meeting one again is a recursive alias
    stack: list[tuple[yaml.Node, bool]] = [(node, False)]
    while stack:
        cur, done = stack.pop()
        key = id(cur)
        if done:
            kids = [n for pair in cur.value for n in pair] if isinstance(cur, yaml.MappingNode) else list(cur.value)
            total = 1 + sum(size.get(id(k), 1) for k in kids)
            if total > max_nodes:
                raise YamlError(
                    source,
                    _line(cur),
                    f"aliases expand too far (more than {max_nodes} values once expanded); "
                    "a recipe repeats a value with an alias a few times, not as nested copies",
                )
            size[key] = total
            open_.discard(key)
            continue
        if key in open_:
            raise YamlError(
                source, _line(cur), "an alias refers to the collection it is inside (a value that contains itself)"
            )
        if key in size:
            continue
        if cur.tag not in ALLOWED_TAGS:
            raise YamlError(
                source,
                _line(cur),
                f"tag {cur.tag.replace(_STD, '!!')!r} is not allowed: a recipe holds plain data "
                "(mappings, lists, strings, numbers, booleans, null), never objects to construct",
            )
        if isinstance(cur, yaml.ScalarNode):
            size[key] = 1
            continue
        open_.add(key)
        stack.append((cur, True))
        if isinstance(cur, yaml.MappingNode):
            seen: dict[Any, int | None] = {}
            for k, v in cur.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != _STD + "merge":
                    if k.value in seen:
                        first = seen[k.value]
                        raise YamlError(
                            source,
                            _line(k),
                            f"duplicate key {k.value!r} (first given at line {first}); "
                            "each key may appear once in a mapping",
                        )
                    seen[k.value] = _line(k)
                stack.append((k, False))
                stack.append((v, False))
        else:
            stack.extend((c, False) for c in cur.value)


def safe_load(text: str, source: str = "<yaml>") -> Any:
    """Parse ``text`` (from ``source``, named in errors) after the checks above."""
    loader = _LOADER(text)
    try:
        node = loader.get_single_node()
        check(node, source)
        return loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()


def load_file(path: Any) -> Any:
    """``safe_load`` of a file, errors naming it."""
    from pathlib import Path

    p = Path(path)
    return safe_load(p.read_text(), str(p))
