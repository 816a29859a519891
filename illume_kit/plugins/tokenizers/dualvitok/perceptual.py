"""LPIPS perceptual distance (Zhang et al. 2018) from a local weights file.

ILLUME+ trains DualViTok with LPIPS-VGG at weight 1. The VGG16 and LPIPS linear weights cannot be
downloaded here, so they come from one local file (``.safetensors`` or a ``weights_only`` torch file)
holding this module's keys (``vgg.<i>.*``, ``lin.<k>.weight``) or the usual upstream names:
torchvision's ``features.<i>.*`` and the lpips package's ``lin<k>.model.1.weight``. Without a file the
VGG is randomly initialised (linear weights 1, LPIPS' uncalibrated baseline), which only exercises
the code path (tests).
"""

from __future__ import annotations

import re

import torch
from torch import nn

_CUTS = (4, 9, 16, 23, 30)  # after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_WIDTHS = (64, 128, 256, 512, 512)


def _translate(key: str) -> str:
    key = re.sub(r"^(?:net\.)?features\.", "vgg.", key)
    return re.sub(r"^lin(\d)\.model\.1\.", r"lin.\1.", key)


class LPIPS(nn.Module):
    """d(x, y) for images in [-1, 1]: a frozen metric, gradients flow to the inputs only."""

    def __init__(self, weights: str | None = None):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        self.vgg = make_layers(cfgs["D"])[: _CUTS[-1]]  # VGG16's conv trunk (no 100M-param classifier)
        self.lin = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _WIDTHS)
        for lin in self.lin:  # LPIPS' uncalibrated "baseline": every channel weighted 1
            nn.init.ones_(lin.weight)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        if weights:
            self.load_state_dict(self._read(weights), strict=True)
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def _read(path: str) -> dict[str, torch.Tensor]:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        return {_translate(k): v for k, v in state.items() if not k.startswith("classifier.")}

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
