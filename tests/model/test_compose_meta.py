"""compose(meta=True): the same model as a real compose, every tensor on the meta device."""

import pytest
import torch

from illume_kit.core.recipe import load_recipe
from illume_kit.model.compose import compose
from illume_kit.model.unified import count_params, tensor_memory


@pytest.mark.parametrize("recipe", ["dualvitok_qwen2_tiny", "detokenizers/diffusion_siglip_tiny.yaml"])
def test_meta_compose_has_the_real_shapes(recipe):
    over = ["~tokenizer.weights", "tokenizer.params.teacher.pretrained=null"]
    resolved = load_recipe(recipe, over if "siglip" in recipe else [])
    meta, real = compose(resolved, meta=True), compose(resolved)
    assert all(t.is_meta for t in (*meta.parameters(), *meta.buffers()))
    assert not any(t.is_meta for t in real.parameters())
    shapes = {k: (v.shape, v.dtype) for k, v in meta.state_dict().items()}
    assert shapes == {k: (v.shape, v.dtype) for k, v in real.state_dict().items()}
    for sec in ("tokenizer", "backbone", "detokenizer", "projectors"):
        assert count_params(getattr(meta, sec)) == count_params(getattr(real, sec))
        assert tensor_memory(getattr(meta, sec)) == tensor_memory(getattr(real, sec))
    assert torch.get_default_device().type == "cpu"  # the meta context does not leak


def test_unset_missing_turns_open_values_into_null():
    resolved = load_recipe("recipes/illume_plus/illume_plus_3b.yaml", unset_missing=True)
    assert resolved.components["tokenizer"].weights is None
    assert resolved.components["backbone"].params.pretrained is None
    assert resolved.components["backbone"].params.vocab_size == 151_665


def test_meta_reads_only_the_architecture_of_a_pretrained_folder(tmp_path):
    from illume_kit.plugins.backbones.hf import Qwen2Backbone
    from illume_kit.plugins.backbones.params import Qwen2Params

    folder = tmp_path / "qwen"
    Qwen2Backbone(Qwen2Params(hidden_size=64, num_layers=3, num_heads=4, intermediate_size=96)).save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"not weights")  # never read on meta
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "extends: [base/tiny.yaml]\nname: m\ntokenizer: {name: dualvitok, preset: tiny}\n"
        f"backbone: {{name: qwen2, preset: tiny, params: {{pretrained: {folder}}}}}\n"
    )
    model = compose(load_recipe(recipe), meta=True)
    assert model.backbone.hidden_size == 64 and len(model.backbone.model.model.layers) == 3
    assert all(p.is_meta for p in model.backbone.parameters())
