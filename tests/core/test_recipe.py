"""Recipe loading: extends, overrides, interpolation and one-pass error reports."""

from pathlib import Path

import pytest
from pydantic import Field

from illume_kit import hookimpl
from illume_kit.core.params import ComponentParams, QuantizerRef
from illume_kit.core.recipe import RecipeError, load_recipe
from illume_kit.core.registry import ComponentSpec
from illume_kit.testing import registered


class ToyTokParams(ComponentParams):
    width: int = Field(8, description="width")
    codebook_size: int = Field(16, description="codes")
    quantizer: QuantizerRef = Field(default_factory=lambda: QuantizerRef(name="toy-q"))


class ToyQParams(ComponentParams):
    dim: int = 4


class ToyBackboneParams(ComponentParams):
    hidden: int = 8
    pretrained: str | None = None


class ToyPlugin:
    @hookimpl
    def illume_kit_components(self):
        return [
            ComponentSpec(
                "tokenizer",
                "toytok",
                target="x:y",
                params=ToyTokParams,
                presets={"tiny": {"width": 4}, "big": {"width": 64}},
            ),
            ComponentSpec("tokenizer", "toytok2", target="x:y", params=ToyTokParams),
            ComponentSpec("quantizer", "toy-q", target="x:y", params=ToyQParams),
            ComponentSpec("backbone", "toybb", target="x:y", params=ToyBackboneParams),
        ]


@pytest.fixture()
def reg():
    with registered(ToyPlugin(), name="toy") as r:
        yield r


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


BASE = """
illume_kit: 1
name: base
tokenizer: {name: toytok, preset: tiny, params: {codebook_size: 32}}
backbone: {name: toybb}
run:
  seed: 1
  output_dir: runs/${name}
"""


def test_extends_merge_and_interpolation(tmp_path, reg):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", "extends: base.yaml\nname: child\nbackbone: {params: {hidden: 16}}\n")
    r = load_recipe(child, registry=reg)
    assert r.recipe.name == "child"
    assert r.recipe.run.output_dir == "runs/child"
    assert r.components["backbone"].params.hidden == 16
    tok = r.components["tokenizer"].params
    assert (tok.width, tok.codebook_size) == (4, 32)  # preset, then params on top


def test_cli_overrides_and_name_reset(tmp_path, reg):
    p = write(tmp_path, "r.yaml", BASE)
    r = load_recipe(p, ["run.seed=7", "tokenizer.params.width=9"], registry=reg)
    assert r.recipe.run.seed == 7 and r.components["tokenizer"].params.width == 9
    # switching the component resets preset and params from the file
    r = load_recipe(p, ["tokenizer=toytok2"], registry=reg)
    rc = r.components["tokenizer"]
    assert rc.spec.name == "toytok2" and rc.preset is None and rc.params.codebook_size == 16
    # ... unless they are given in the same command
    r = load_recipe(p, ["tokenizer=toytok2", "tokenizer.params.width=5"], registry=reg)
    assert r.components["tokenizer"].params.width == 5
    assert r.components["tokenizer"].params.codebook_size == 16  # the file's 32 was the old component's
    # ~key deletes
    r = load_recipe(p, ["~tokenizer.preset"], registry=reg)
    assert r.components["tokenizer"].params.width == 8


def test_a_child_that_renames_a_component_does_not_inherit_the_old_ones_params(tmp_path, reg):
    """The child's own params apply on the new component's defaults, not merged into the parent's."""
    write(tmp_path, "base.yaml", BASE)
    child = write(
        tmp_path, "child.yaml", "extends: base.yaml\nname: child\ntokenizer: {name: toytok2, params: {width: 5}}\n"
    )
    tok = load_recipe(child, registry=reg).components["tokenizer"]
    assert tok.spec.name == "toytok2" and tok.preset is None
    assert (tok.params.width, tok.params.codebook_size) == (5, 16)  # not the parent's 32


def test_three_mistakes_reported_at_once(tmp_path, reg):
    p = write(
        tmp_path,
        "bad.yaml",
        BASE.replace("name: toybb", "name: toybbb").replace("codebook_size: 32", "codebook_sise: 32")
        + "train: {stages: [{name: a, target: tokenizer, steps: many}]}\n",
    )
    with pytest.raises(RecipeError) as ei:
        load_recipe(p, registry=reg)
    err = ei.value
    text = str(err)
    assert len(err.problems) == 3, text
    assert "backbone.name" in text and "Did you mean toybb" in text
    assert "tokenizer.params.codebook_sise: unknown key" in text and "Did you mean codebook_size" in text
    assert "train.stages.0.steps" in text
    assert str(p) in text  # the file that set each key


def test_unknown_key_at_depth_and_nested_component(tmp_path, reg):
    p = write(tmp_path, "r.yaml", BASE + "model: {image_inputs: discrete}\n")
    with pytest.raises(RecipeError) as ei:
        load_recipe(
            p, ["tokenizer.params.quantizer.name=toy-qq", "tokenizer.params.quantizer.params.dimm=3"], registry=reg
        )
    text = str(ei.value)
    assert "model.image_inputs: unknown key" in text and "Did you mean image_input" in text
    assert "tokenizer.params.quantizer.name" in text and "toy-q" in text
    assert "(set in cli)" in text


def test_wrong_type_and_literal(tmp_path, reg):
    p = write(tmp_path, "r.yaml", BASE)
    with pytest.raises(RecipeError) as ei:
        load_recipe(p, ["run.seed=abc", "model.image_input=pixels"], registry=reg)
    text = str(ei.value)
    assert "run.seed" in text and "abc" in text
    assert "model.image_input" in text and "continuous" in text


def test_missing_required_and_bad_interpolation(tmp_path, reg):
    p = write(tmp_path, "r.yaml", BASE.replace("name: base", "name: ???").replace("runs/${name}", "runs/${nope}"))
    with pytest.raises(RecipeError) as ei:
        load_recipe(p, registry=reg)
    text = str(ei.value)
    assert "name: required value is missing" in text
    assert "run.output_dir: bad interpolation" in text


def test_unknown_preset(tmp_path, reg):
    p = write(tmp_path, "r.yaml", BASE.replace("preset: tiny", "preset: tinyy"))
    with pytest.raises(RecipeError, match=r"unknown preset 'tinyy'.*Did you mean tiny.*valid: tiny, big"):
        load_recipe(p, registry=reg)


def test_extends_missing_and_cyclic(tmp_path, reg):
    p = write(tmp_path, "r.yaml", "extends: [nothere.yaml]\n" + BASE)
    with pytest.raises(RecipeError, match="nothere.yaml' does not exist"):
        load_recipe(p, registry=reg)
    write(tmp_path, "a.yaml", "extends: b.yaml\n" + BASE)
    write(tmp_path, "b.yaml", "extends: a.yaml\n")
    with pytest.raises(RecipeError, match="extends cycle: a.yaml -> b.yaml -> a.yaml"):
        load_recipe(tmp_path / "a.yaml", registry=reg)


def test_not_yaml_not_mapping_and_version(tmp_path, reg):
    with pytest.raises(RecipeError, match="not valid YAML at line"):
        load_recipe(write(tmp_path, "x.yaml", "a: [1, 2\nb: 3\n"), registry=reg)
    with pytest.raises(RecipeError, match="must be a YAML mapping"):
        load_recipe(write(tmp_path, "y.yaml", "- 1\n- 2\n"), registry=reg)
    with pytest.raises(RecipeError, match="schema version 2"):
        load_recipe(write(tmp_path, "z.yaml", BASE.replace("illume_kit: 1", "illume_kit: 2")), registry=reg)
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml", registry=reg)


def test_resolved_yaml_has_no_import_paths(tmp_path, reg):
    r = load_recipe(write(tmp_path, "r.yaml", BASE), registry=reg)
    text = r.to_yaml()
    assert "toytok" in text and ":" not in "".join(
        line.split(":", 1)[1] for line in text.splitlines() if "target" in line
    )
    assert "width: 4" in text


def test_component_set_to_null_removes_it(tmp_path, reg):
    p = write(tmp_path, "r.yaml", BASE + "detokenizer: {name: whatever}\n")
    r = load_recipe(p, ["detokenizer=null"], registry=reg)
    assert r.recipe.detokenizer is None and "detokenizer" not in r.components


def test_a_shipped_recipe_loads_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no recipes/ folder here
    shipped = Path(__file__).resolve().parents[2] / "illume_kit" / "recipes"
    for ref in ("dualvitok_qwen2_tiny", "dualvitok_qwen2_tiny.yaml", "recipes/dualvitok_qwen2_tiny.yaml"):
        assert Path(load_recipe(ref).origin) == shipped / "dualvitok_qwen2_tiny.yaml", ref
    r = load_recipe("tokenizers/dualvitok_tiny_2x2")  # extends ../base layers, found beside it
    assert r.recipe.name == "dualvitok_tiny_2x2" and r.components["data"].params.grid == 2
    with pytest.raises(RecipeError, match="Did you mean tokenizers/vqgan_tiny_2x2"):
        load_recipe("tokenizers/vqgan_tiny_2x3")
