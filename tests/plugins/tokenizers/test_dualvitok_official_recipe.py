"""The README's recipe for a converted release, ``tokenizer: {name: dualvitok, preset: official,
weights: DIR}``, composes: the converter writes inference weights (no discriminator) and the preset
builds one for training, which keeps its fresh initialisation.

The release is simulated at the official architecture shrunken to the ``tiny`` sizes (the same
module tree and key names), so the converter runs end to end in a second.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from illume_kit.cli.convert_cmds import CONVERTERS
from illume_kit.core.manifest import CheckpointError
from illume_kit.core.recipe import load_recipe
from illume_kit.model.compose import compose
from illume_kit.model.weights import load_component_weights
from illume_kit.plugins.tokenizers.dualvitok.model import DualViTok
from illume_kit.plugins.tokenizers.dualvitok.params import PRESETS, DualViTokParams

# the official architecture at the tiny sizes (the tiny preset's dead-code restart is not in ILLUME+)
SHRUNK = {**PRESETS["tiny"], "pixel_quantizer": {"name": "simvq", "params": {}}}


@pytest.fixture
def converted(tmp_path, monkeypatch):
    """A released-format file at the shrunken sizes, converted by `illume-kit convert dualvitok-official`."""
    monkeypatch.setitem(PRESETS, "official", SHRUNK)
    torch.manual_seed(1)
    release = DualViTok(DualViTokParams.model_validate({**SHRUNK, "disc_weight": 0.0}))
    state = {k.replace("_quantizer.vq.", "_quantizer."): v for k, v in release.state_dict().items()}
    torch.save({"model": state}, tmp_path / "pytorch_model.bin")
    out = tmp_path / "dualvitok_official"
    CONVERTERS["dualvitok-official"](str(tmp_path / "pytorch_model.bin"), str(out))
    return out, release


def test_converted_release_composes_under_the_official_preset(tmp_path, converted):
    out, release = converted
    saved = load_file(out / "tokenizer" / "model.safetensors")
    assert not any(k.startswith("discriminator.") for k in saved)  # inference weights only
    assert json.loads((out / "illume_kit.json").read_text())["components"]["tokenizer"]["preset"] == "official"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "extends: [base/tiny.yaml]\nname: converted\n"
        f"tokenizer: {{name: dualvitok, preset: official, weights: {out}}}\ndetokenizer: {{name: vq}}\n"
    )
    resolved = load_recipe(recipe)
    assert resolved.components["tokenizer"].params.disc_weight > 0  # the preset trains with a discriminator
    model = compose(resolved)
    tok = model.tokenizer
    assert tok.discriminator is not None
    for k, v in release.state_dict().items():
        assert torch.equal(tok.state_dict()[k], v), k
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(tok.eval().encode(images).codes["pixel"], release.eval().encode(images).codes["pixel"])


def test_only_the_discriminator_may_be_absent(tmp_path, converted):
    out, _ = converted
    state = load_file(out / "tokenizer" / "model.safetensors")
    del state["pixel_decoder.conv_out.bias"]
    from safetensors.torch import save_file

    save_file(state, tmp_path / "partial.safetensors")
    model = DualViTok(DualViTokParams.model_validate(SHRUNK))
    with pytest.raises(CheckpointError, match=r"missing: pixel_decoder\.conv_out\.bias"):
        load_component_weights(model, tmp_path / "partial.safetensors", "tokenizer")


def test_a_trained_discriminator_is_dropped_for_a_build_without_one(tmp_path):
    trained = DualViTok(DualViTokParams.model_validate({**PRESETS["tiny"], "disc_weight": 0.5}))
    from safetensors.torch import save_model

    save_model(trained, str(tmp_path / "t.safetensors"))
    bare = DualViTok(DualViTokParams.model_validate({**PRESETS["tiny"], "disc_weight": 0.0}))
    load_component_weights(bare, tmp_path / "t.safetensors", "tokenizer")
    assert bare.discriminator is None
    assert torch.equal(bare.pixel_decoder.conv_out.weight, trained.pixel_decoder.conv_out.weight)
