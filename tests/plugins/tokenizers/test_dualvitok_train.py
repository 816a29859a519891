"""Tiny DualViTok overfits a handful of real 64x64 images in ~50 CPU steps."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from illume_kit.plugins.tokenizers.dualvitok.model import DualViTok
from illume_kit.plugins.tokenizers.dualvitok.params import PRESETS


def astronaut_crops() -> torch.Tensor:
    from skimage import data

    img = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255
    crops = torch.stack([img[:, y : y + 256, x : x + 256] for y in (0, 256) for x in (0, 256)])
    return F.interpolate(crops, size=(64, 64), mode="area")


def test_tiny_overfits():
    images = astronaut_crops()
    torch.manual_seed(0)
    model = DualViTok(DualViTok.Params(**PRESETS["tiny"])).train()
    opt = torch.optim.Adam(model.generator_parameters(), lr=2e-3, betas=(0.9, 0.95))
    history = []
    for step in range(50):
        out = model.loss(images, step)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        history.append({k: v.item() for k, v in out.items()})
    first, last = history[0], history[-1]
    assert last["pixel_rec"] < 0.4 * first["pixel_rec"], (first, last)
    assert last["semantic_rec"] < 0.5 * first["semantic_rec"], (first, last)
    assert last["loss"] < 0.5 * first["loss"]
    model.eval()
    with torch.no_grad():
        psnr = -10 * torch.log10(F.mse_loss(model(images), images))
    assert psnr > 14.0
    assert model.codebook_usage()["pixel"]["usage"] > 0
