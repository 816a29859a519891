"""Tiny unified models for the model tests: a fake 1- or 2-codebook tokenizer + tiny Qwen2.

The fake tokenizer is deterministic and cheap: features are a fixed random projection of
average-pooled pixels, codes the argmax against a fixed random codebook; ``semantic`` uses stride
32 with a ceil grid (so its grid is not a plain fraction of the pixel one), ``pixel`` stride 16.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from illume_kit.model.compose import assemble as compose_assemble
from illume_kit.core.protocols import CodebookSpec, TokenizerOutput
from illume_kit.core.schema import ModelOptions
from illume_kit.plugins.backbones.hf import Qwen2Backbone
from illume_kit.plugins.backbones.params import QWEN2_PRESETS
from illume_kit.plugins.decoders.vq import VQDetokenizer

SPECS = {"semantic": (24, 32, 12), "pixel": (40, 16, 8)}  # name -> (size, stride, feature_dim)


class FakeTokenizer(nn.Module):
    has_pixel_decoder = True

    def __init__(self, names=("semantic", "pixel")):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.names = tuple(names)
        self._codebooks = tuple(CodebookSpec(n, SPECS[n][0], SPECS[n][2], SPECS[n][1], SPECS[n][2]) for n in names)
        self.proj = nn.ParameterDict({n: nn.Parameter(torch.randn(3, SPECS[n][2], generator=g), requires_grad=False)
                                      for n in names})
        self.book = {n: torch.randn(SPECS[n][2], SPECS[n][0], generator=g) for n in names}

    @property
    def codebooks(self):
        return self._codebooks

    def grid(self, height, width):
        if height % 16 or width % 16 or height <= 0 or width <= 0:
            raise ValueError(f"sides must be positive multiples of 16, got {height}x{width}")
        return {n: (math.ceil(height / SPECS[n][1]), math.ceil(width / SPECS[n][1])) for n in self.names}

    def encode(self, images):
        codes, feats = {}, {}
        for n in self.names:
            s = SPECS[n][1]
            pooled = F.avg_pool2d(images * 2 - 1, s, ceil_mode=True).permute(0, 2, 3, 1)  # (B, h, w, 3)
            f = pooled @ self.proj[n]
            feats[n], codes[n] = f, (f @ self.book[n]).argmax(-1)
        return TokenizerOutput(codes=codes, features=feats)

    def decode(self, codes):
        n = self.names[-1]
        c = codes[n].float() / SPECS[n][0]
        img = c[:, None].repeat(1, 3, 1, 1)
        return F.interpolate(img, scale_factor=SPECS[n][1], mode="nearest")


def make_model(names=("semantic", "pixel"), image_input="continuous", image_positions=0, output_positions="slot",
               edit_order="image_first", level_order="coarse_first", **backbone):
    torch.manual_seed(0)
    bb = Qwen2Backbone(Qwen2Backbone.Params(**{**QWEN2_PRESETS["tiny"], "new_rows_init": "normal", **backbone}))
    opts = ModelOptions(image_input=image_input, resolution_step=16, max_resolution=128, image_positions=image_positions,
                        output_positions=output_positions, edit_order=edit_order, level_order=level_order)
    return compose_assemble(FakeTokenizer(names), bb, VQDetokenizer(), opts).eval()


def image(seed=0, h=64, w=64):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))
