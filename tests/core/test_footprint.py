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


GB = 1e9


def test_rank_memory_of_a_billion_trainable_mixed_params_on_8_ranks():
    # bf16-mixed: fp32 master (4) + bf16 compute copy (2), fp32 gradients (4), two fp32 moments (8)
    fsdp = footprint.rank_memory(10**9, 0, 8, "fsdp", "bf16-mixed")
    assert (fsdp.params, fsdp.grads, fsdp.optimizer) == (6 * GB / 8, 4 * GB / 8, 8 * GB / 8)
    assert fsdp.gpu == pytest.approx((4 + 2 + 4 + 8) / 8 * GB)
    ddp = footprint.rank_memory(10**9, 0, 8, "ddp", "bf16-mixed")
    assert ddp.gpu == pytest.approx(18 * GB) and ddp.cpu == 0


def test_rank_memory_precisions_and_frozen_parts():
    assert footprint.rank_memory(10**9, 0, 1, "ddp", "fp32").gpu == pytest.approx(16 * GB)
    assert footprint.rank_memory(10**9, 0, 1, "ddp", "bf16-true").gpu == pytest.approx(8 * GB)
    assert footprint.rank_memory(10**9, 0, 1, "ddp", "auto").gpu == pytest.approx(18 * GB)  # as on CUDA
    # frozen weights: only their compute copy, no gradients or states; sharded only when asked
    frozen = footprint.rank_memory(0, 4 * 10**9, 4, "fsdp", "bf16-mixed")
    assert (frozen.params, frozen.grads, frozen.optimizer) == (2 * GB, 0, 0)
    kept = footprint.rank_memory(0, 4 * 10**9, 4, "fsdp", "bf16-mixed", shard_frozen=False)
    assert kept.params == 8 * GB
    assert footprint.rank_memory(0, 4 * 10**9, 4, "ddp", "fp32").params == 16 * GB


def test_cpu_offload_moves_master_gradients_and_states_off_the_gpu():
    off = footprint.rank_memory(8 * 10**9, 8 * 10**9, 8, "fsdp", "bf16-mixed", cpu_offload=True)
    # GPU: the bf16 compute copy of the trainable shard and the frozen shard; CPU: master, grads, AdamW
    assert off.gpu == pytest.approx((2 + 2) * GB)
    assert off.cpu == pytest.approx((4 + 4 + 8) * GB)
    on = footprint.rank_memory(8 * 10**9, 8 * 10**9, 8, "fsdp", "bf16-mixed")
    assert off.gpu + off.cpu == pytest.approx(on.gpu)


def test_memory_table_rows_and_bad_input():
    rows = footprint.memory_table(10**9, 10**9, 8)
    assert [r.label for r in rows] == ["ddp", "fsdp", "fsdp + cpu offload"]
    assert rows[0].gpu > rows[1].gpu > rows[2].gpu
    with pytest.raises(ValueError, match="world size"):
        footprint.rank_memory(1, 0, 0, "fsdp")
    with pytest.raises(ValueError, match="valid: ddp, fsdp"):
        footprint.rank_memory(1, 0, 2, "zero3")
    with pytest.raises(ValueError, match="needs strategy fsdp"):
        footprint.rank_memory(1, 0, 2, "ddp", cpu_offload=True)
    with pytest.raises(ValueError, match="bf16-true"):
        footprint.resolve_precision("int8")
