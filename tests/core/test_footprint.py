"""The memory estimate of a recipe: the dominant terms named by their keys, refusal past the
machine's memory, the override."""

import pytest

from illume_kit.core import footprint
from illume_kit.core.recipe import RecipeError, load_recipe, shipped_recipes

MLLM = "dualvitok_qwen2_mllm_tiny"


def terms(overrides=()):
    r = load_recipe(MLLM, list(overrides))
    return r, footprint.estimate(r.data, {s: rc.params for s, rc in r.components.items()})


def test_codebook_term_is_codes_times_width():
    r, est = terms(["tokenizer.params.pixel_codebook_size=5000", "tokenizer.params.pixel_code_dim=48"])
    t = next(t for t in est.weights if t.keys.startswith("tokenizer.params.pixel_codebook_size"))
    assert t.keys == "tokenizer.params.pixel_codebook_size x tokenizer.params.pixel_code_dim"
    assert t.elements == 5000 * 48


def test_backbone_terms_grow_with_width_and_layers():
    _, small = terms()
    _, wide = terms(["backbone.params.hidden_size=256", "backbone.params.num_heads=4"])
    assert sum(t.elements for t in wide.weights) > sum(t.elements for t in small.weights)
    assert any(t.keys.startswith("backbone.params.vocab_size x backbone.params.hidden_size") for t in wide.weights)


def test_activation_term_follows_image_size_and_batch():
    _, a = terms()
    _, b = terms(["data.params.image_size=128"])
    assert max(t.elements for t in b.activations) == 4 * max(t.elements for t in a.activations)
    assert b.activations[0].keys == "data.params.image_size x train.stages.0.batch_size"


def test_every_shipped_recipe_fits_in_a_small_machine():
    from illume_kit.core.plugins import get_registry

    reg = get_registry()
    for name, path in shipped_recipes(reg):
        if name.startswith(("sweeps/", "illume_plus/")):  # official-size recipes are for GPU machines
            continue
        r = load_recipe(path, registry=reg)
        est = footprint.estimate(r.data, {s: rc.params for s, rc in r.components.items()})
        assert est.total < 2e9, (name, footprint.human(est.total))


def test_the_official_size_recipe_is_refused_by_a_small_machine_without_the_override(monkeypatch):
    monkeypatch.delenv(footprint.ENV, raising=False)
    monkeypatch.setattr(footprint, "machine_memory", lambda: 8 * 2**30)
    with pytest.raises(RecipeError, match="--allow-large"):
        load_recipe("recipes/illume_plus/illume_plus_3b.yaml", unset_missing=True)


def test_refused_past_memory_with_the_key_and_the_override(monkeypatch):
    monkeypatch.delenv(footprint.ENV, raising=False)
    monkeypatch.setattr(footprint, "machine_memory", lambda: 10**9)
    with pytest.raises(RecipeError) as exc:
        load_recipe(MLLM, ["tokenizer.params.pixel_codebook_size=50000000"])
    (p,) = exc.value.problems
    assert p.path == "tokenizer.params.pixel_codebook_size" and p.source == "cli"
    assert "more than this machine's 1.0 GB" in p.message and "--allow-large" in p.message
    monkeypatch.setenv(footprint.ENV, "1")
    load_recipe(MLLM, ["tokenizer.params.pixel_codebook_size=50000000"])


def test_params_hook_replaces_the_generic_rules():
    class P:
        def estimate_elements(self):
            return {"width x depth": 10**12}

    (t,) = footprint.component_terms("tokenizer", P())
    assert (t.keys, t.elements) == ("tokenizer.params.width x depth", 10**12)
