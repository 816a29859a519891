"""LPIPS perceptual distance (Zhang et al. 2018) from a local weights file.

ILLUME+ trains DualViTok with LPIPS-VGG at weight 1. The VGG16 and LPIPS linear weights cannot be
downloaded here, so they come from one local file (``.safetensors`` or a ``weights_only`` torch file)
holding this module's keys (``vgg.<i>.*``, ``lin.<k>.weight``) or the usual upstream names:
torchvision's ``features.<i>.*`` and the lpips package's (``net.slice<n>.<i>.*``, ``lin<k>.model.1.weight``;
``lpips_key_map``). ``RANDOM`` instead of a file builds a randomly initialised VGG (linear weights 1,
LPIPS' uncalibrated baseline): an explicit choice for tests and smoke runs, with a warning, since the
distance it measures is not LPIPS.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

RANDOM = "random"  # the perceptual_weights value that asks for a random VGG
_CUTS = (4, 9, 16, 23, 30)  # after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_WIDTHS = (64, 128, 256, 512, 512)


def _translate(key: str) -> str | None:
    """This module's name for an upstream key; None for keys it has no use for."""
    if key.startswith(("classifier.", "scaling_layer.", "lins.")):  # lins.<k> repeats lin<k> in the lpips package
        return None
    key = re.sub(r"^(?:net\.)?features\.", "vgg.", key)
    key = re.sub(r"^net\.slice\d\.", "vgg.", key)  # the lpips package keeps torchvision's layer indices
    return re.sub(r"^lin(\d)\.model\.1\.", r"lin.\1.", key)


def lpips_key_map(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An lpips-package (or torchvision VGG16) state dict under this module's key names."""
    out = {}
    for k, v in state.items():
        name = _translate(k)
        if name is not None:
            out[name] = v
    return out


class LPIPS(nn.Module):
    """d(x, y) for images in [-1, 1]: a frozen metric, gradients flow to the inputs only.

    ``weights``: a local weights file, or ``RANDOM`` (a random VGG, with a warning)."""

    def __init__(self, weights: str):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        self.vgg = make_layers(cfgs["D"])[: _CUTS[-1]]  # VGG16's conv trunk (no 100M-param classifier)
        self.lin = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _WIDTHS)
        for lin in self.lin:  # LPIPS' uncalibrated "baseline": every channel weighted 1
            nn.init.ones_(lin.weight)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        if weights == RANDOM:
            warnings.warn(
                "perceptual_weights: random: the perceptual loss uses a randomly initialised VGG, not LPIPS "
                "(fine for tests and smoke runs; give a local LPIPS-VGG weights file to train for real)",
                stacklevel=2,
            )
        else:
            self.load_state_dict(self._read(weights), strict=True)
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def _read(path: str) -> dict[str, torch.Tensor]:
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"perceptual_weights: {path} is not a file (a local .safetensors/.pt with VGG16 + LPIPS "
                f"linear weights, or {RANDOM!r} for a random VGG)"
            )
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        return lpips_key_map(state)

    def train(self, mode: bool = True):
        return super().train(False)

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats, start = [], 0
        for cut in _CUTS:
            x = self.vgg[start:cut](x)
            feats.append(x)
            start = cut
        return feats

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS distance over the batch (a scalar)."""
        fx = self._features((x - self.shift) / self.scale)
        fy = self._features((y - self.shift) / self.scale)
        total = x.new_zeros(())
        for lin, a, b in zip(self.lin, fx, fy):
            a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
            b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
            total = total + lin((a - b) ** 2).mean()
        return total
