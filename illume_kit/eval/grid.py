"""A PNG that shows originals next to their reconstructions, for `illume-kit eval` and humans.

Each cell is a pair (original | reconstruction), ``pairs_per_row`` pairs per row, with an optional
label under each pair (e.g. its PSNR). Reconstructions may be larger than the originals (a 2x
super-resolving detokenizer): every image is shown at the largest size, upscaled with nearest
neighbour so pixels stay honest.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) or (1, H, W) float in [0, 1] -> RGB PIL image."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected a (3, H, W) or (1, H, W) image, got {tuple(image.shape)}")
    arr = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    if arr.shape[0] == 1:
        arr = arr.expand(3, -1, -1)
    return Image.fromarray(arr.permute(1, 2, 0).contiguous().numpy(), "RGB")


def make_grid(originals: torch.Tensor, recons: torch.Tensor, labels: Sequence[str] | None = None,
              pairs_per_row: int = 4, pad: int = 2, background: tuple[int, int, int] = (255, 255, 255)
              ) -> Image.Image:
    """Build the grid as a PIL image. ``originals`` and ``recons``: (B, C, H, W) in [0, 1]."""
    if len(originals) != len(recons):
        raise ValueError(f"{len(originals)} originals but {len(recons)} reconstructions")
    if labels is not None and len(labels) != len(originals):
        raise ValueError(f"{len(labels)} labels for {len(originals)} pairs")
    n = len(originals)
    if n == 0:
        raise ValueError("nothing to show")
    h = max(originals.shape[-2], recons.shape[-2])
    w = max(originals.shape[-1], recons.shape[-1])
    font = ImageFont.load_default()
    label_h = 0
    if labels:
        label_h = max(ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), str(t), font=font)[3]
                      for t in labels) + 2 * pad
    cols = min(pairs_per_row, n)
    rows = math.ceil(n / cols)
    cell_w, cell_h = 2 * w + 3 * pad, h + 2 * pad + label_h
    canvas = Image.new("RGB", (cols * cell_w + pad, rows * cell_h), background)
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        r, c = divmod(i, cols)
        x0, y0 = c * cell_w + pad, r * cell_h + pad
        for j, img in enumerate((originals[i], recons[i])):
            canvas.paste(to_pil(img).resize((w, h), Image.NEAREST), (x0 + j * (w + pad), y0))
        if labels:
            draw.text((x0, y0 + h + pad), str(labels[i]), fill=(0, 0, 0), font=font)
    return canvas


def save_grid(originals: torch.Tensor, recons: torch.Tensor, path: str | os.PathLike,
              labels: Sequence[str] | None = None, pairs_per_row: int = 4, pad: int = 2) -> Image.Image:
    """Write the grid to ``path`` (PNG) and return it."""
    grid = make_grid(originals, recons, labels=labels, pairs_per_row=pairs_per_row, pad=pad)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    grid.save(path, format="PNG")
    return grid
