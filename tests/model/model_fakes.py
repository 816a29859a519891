"""Tiny unified models for the model tests: the testing FakeTokenizer with 1 or 2 codebooks + tiny Qwen2."""

import torch

from illume_kit.core.schema import ModelOptions
from illume_kit.model.compose import assemble as compose_assemble
from illume_kit.plugins.backbones.hf import Qwen2Backbone
from illume_kit.plugins.backbones.params import QWEN2_PRESETS
from illume_kit.plugins.decoders.vq import VQDetokenizer
from illume_kit.testing.fakes import FakeTokenizer, level


def fake_tokenizer(names=("semantic", "pixel")):
    """Semantic stride 32 with a ceil grid (not a plain fraction of the pixel one), pixel stride 16."""
    specs = {"semantic": level("semantic", 24, 12, 32), "pixel": level("pixel", 40, 8, 16)}
    return FakeTokenizer(codebooks=[specs[n] for n in names], multiple=16)


def make_model(
    names=("semantic", "pixel"),
    image_input="continuous",
    image_positions=0,
    output_positions="slot",
    edit_order="image_first",
    level_order="coarse_first",
    **backbone,
):
    torch.manual_seed(0)
    bb = Qwen2Backbone(Qwen2Backbone.Params(**{**QWEN2_PRESETS["tiny"], "new_rows_init": "normal", **backbone}))
    opts = ModelOptions(
        image_input=image_input,
        resolution_step=16,
        max_resolution=128,
        image_positions=image_positions,
        output_positions=output_positions,
        edit_order=edit_order,
        level_order=level_order,
    )
    return compose_assemble(fake_tokenizer(names), bb, VQDetokenizer(), opts).eval()


def image(seed=0, h=64, w=64):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))
