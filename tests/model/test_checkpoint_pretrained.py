"""A checkpoint composed from a `pretrained:` backbone folder, or from diffusers UNet/VAE folders,
loads after those folders are gone: the manifest records their architectures and real sizes, the
weights are the checkpoint's own."""

from __future__ import annotations

import json
import shutil

import torch

from illume_kit.cli.recipe_cmds import describe
from illume_kit.core.recipe import load_recipe
from illume_kit.model.checkpoint import load_checkpoint, save_checkpoint
from illume_kit.model.compose import compose
from illume_kit.plugins.backbones.hf import Qwen2Backbone
from illume_kit.plugins.backbones.params import Qwen2Params


def _recipe(tmp_path, body: str):
    path = tmp_path / "r.yaml"
    path.write_text("extends: [base/tiny.yaml]\nname: portable\ntokenizer: {name: dualvitok, preset: tiny}\n" + body)
    return load_recipe(path)


def test_backbone_folder_is_not_needed_to_load(tmp_path):
    torch.manual_seed(3)
    folder = tmp_path / "qwen"  # sizes unlike the tiny preset's (hidden 128, 2 layers, vocab 512)
    Qwen2Backbone(
        Qwen2Params(hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=1, intermediate_size=96, vocab_size=400)
    ).save_pretrained(folder)
    resolved = _recipe(tmp_path, f"backbone: {{name: qwen2, preset: tiny, params: {{pretrained: {folder}}}}}\n")
    model = compose(resolved).eval()
    shown = describe(model, resolved)["components"]["backbone"]["params"]
    assert (shown["hidden_size"], shown["num_layers"], shown["num_kv_heads"]) == (64, 3, 1)
    assert shown["pretrained"] == str(folder)  # where it came from, as the recipe says
    save_checkpoint(model, resolved, tmp_path / "ck")
    shutil.move(folder, tmp_path / "moved")
    rec = json.loads((tmp_path / "ck" / "illume_kit.json").read_text())["components"]["backbone"]["params"]
    assert rec["pretrained"] is None and rec["hidden_size"] == 64 and rec["vocab_size"] == 400
    assert rec["architecture"]["num_hidden_layers"] == 3 and "illume_vocab_layout" not in rec["architecture"]
    loaded, _ = load_checkpoint(tmp_path / "ck")
    ids = torch.randint(0, model.layout.total_size, (2, 9))
    with torch.no_grad():
        want = model.backbone(model.backbone.embed(ids)).logits
        got = loaded.backbone(loaded.backbone.embed(ids)).logits
    assert torch.equal(got, want)
    text = "a red square"
    assert loaded.backbone.text_tokenizer(text)["input_ids"] == model.backbone.text_tokenizer(text)["input_ids"]


def test_diffusers_folders_are_not_needed_to_load(tmp_path):
    torch.manual_seed(4)
    vae_only = tmp_path / "vae"
    from diffusers import AutoencoderKL

    AutoencoderKL(
        latent_channels=4,
        block_out_channels=[8, 16],
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
    ).save_pretrained(vae_only)
    # a decoder folder (unet/ + vae/ + scheduler/) with a UNet narrower than the preset's
    first = compose(
        _recipe(
            tmp_path,
            f"detokenizer: {{name: diffusion, preset: tiny-latent, params: {{vae_pretrained: {vae_only}, "
            "block_out_channels: [16, 32], norm_num_groups: 4}}\n",
        )
    )
    decoder = tmp_path / "decoder"
    first.detokenizer.save_pretrained(decoder)
    resolved = _recipe(
        tmp_path, f"detokenizer: {{name: diffusion, preset: tiny-latent, params: {{pretrained: {decoder}}}}}\n"
    )
    model = compose(resolved).eval()
    assert model.detokenizer.params.block_out_channels == [32, 64]  # the recipe's sizes ...
    shown = describe(model, resolved)["components"]["detokenizer"]["params"]
    assert shown["block_out_channels"] == [16, 32] and shown["vae_config"]["block_out_channels"] == [8, 16]  # ... built
    save_checkpoint(model, resolved, tmp_path / "ck")
    shutil.move(decoder, tmp_path / "moved_decoder")
    shutil.move(vae_only, tmp_path / "moved_vae")
    rec = json.loads((tmp_path / "ck" / "illume_kit.json").read_text())["components"]["detokenizer"]["params"]
    assert rec["pretrained"] is None and rec["vae_pretrained"] is None
    loaded, _ = load_checkpoint(tmp_path / "ck")
    want, got = model.detokenizer.state_dict(), loaded.detokenizer.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    codes = model.tokenizer.encode(torch.rand(1, 3, 32, 32)).codes
    a = model.detokenizer.decode(codes, steps=2, seed=0)
    b = loaded.detokenizer.decode(codes, steps=2, seed=0)
    assert torch.equal(a, b)
