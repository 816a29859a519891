"""YAML reading refuses alias bombs, duplicate keys and object tags before constructing anything."""

import time

import pytest
import yaml

from illume_kit.core import yamlio


def bomb(levels: int = 9) -> str:
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_alias_bomb_refused_within_a_second():
    text = bomb()
    t = time.perf_counter()
    with pytest.raises(yamlio.YamlError, match="aliases expand too far") as exc:
        yamlio.safe_load(text, "bomb.yaml")
    assert time.perf_counter() - t < 1.0
    assert "bomb.yaml" in str(exc.value) and exc.value.line is not None


def test_a_few_aliases_and_merge_keys_still_load():
    text = "base: &b {lr: 0.1, steps: 3}\na: *b\nb: *b\nc:\n  <<: *b\n  steps: 5\n"
    assert yamlio.safe_load(text) == {
        "base": {"lr": 0.1, "steps": 3},
        "a": {"lr": 0.1, "steps": 3},
        "b": {"lr": 0.1, "steps": 3},
        "c": {"lr": 0.1, "steps": 5},
    }
    assert yamlio.safe_load(bomb(3)) is not None  # 9**4 values: far under the budget


def test_duplicate_key_named_with_both_lines():
    with pytest.raises(yamlio.YamlError) as exc:
        yamlio.safe_load("run:\n  seed: 1\n  device: cpu\n  seed: 2\n", "r.yaml")
    assert (
        str(exc.value)
        == "r.yaml, line 4: duplicate key 'seed' (first given at line 2); each key may appear once in a mapping"
    )


@pytest.mark.parametrize(
    "text,tag",
    [
        ("x: !!python/object/apply:os.system [ls]\n", "!!python/object/apply:os.system"),
        ("x: !!python/name:os.system\n", "!!python/name:os.system"),
        ("x: !custom 1\n", "!custom"),
    ],
)
def test_object_tags_refused(text, tag):
    with pytest.raises(yamlio.YamlError, match="is not allowed") as exc:
        yamlio.safe_load(text, "t.yaml")
    assert tag in str(exc.value) and str(exc.value).startswith("t.yaml, line 1")


def test_recursive_alias_refused():
    with pytest.raises(yamlio.YamlError, match="contains itself"):
        yamlio.safe_load("a: &a [1, *a]\n")


def test_errors_stay_yaml_errors_and_value_errors():
    with pytest.raises(yaml.YAMLError):
        yamlio.safe_load("a: 1\na: 2\n")
    with pytest.raises(ValueError):
        yamlio.safe_load("a: 1\na: 2\n")


def test_plain_data_unchanged():
    text = "a: 1\nb: [x, 2.5, true, null]\nc: {d: 2020-01-01}\n"
    assert yamlio.safe_load(text) == yaml.safe_load(text)
