"""A PNG that shows originals next to their reconstructions, for `illume-kit eval` and humans.

Each cell is a pair (original | reconstruction), ``pairs_per_row`` pairs per row, with an optional
label under each pair (e.g. its PSNR). Reconstructions may be larger than the originals (a 2x
super-resolving detokenizer): every image is shown at the largest size, upscaled with nearest
neighbour so pixels stay honest.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

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


def tile(
    groups: Sequence[Sequence[torch.Tensor]],
    labels: Sequence[str] | None = None,
    per_row: int = 4,
    pad: int = 2,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Groups of (C, H, W) images side by side (e.g. original | reconstruction), ``per_row`` groups per
    line, each with an optional label under it; images are shown at the largest size (nearest)."""
    if not groups:
        raise ValueError("nothing to show")
    if labels is not None and len(labels) != len(groups):
        raise ValueError(f"{len(labels)} labels for {len(groups)} groups")
    k = max(len(g) for g in groups)
    h = max(int(im.shape[-2]) for g in groups for im in g)
    w = max(int(im.shape[-1]) for g in groups for im in g)
    font = ImageFont.load_default()
    label_h = 0
    if labels:
        label_h = (
            max(ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), str(t), font=font)[3] for t in labels)
            + 2 * pad
        )
    cols = min(per_row, len(groups))
    cell_w, cell_h = k * w + (k + 1) * pad, h + 2 * pad + label_h
    canvas = Image.new("RGB", (cols * cell_w + pad, math.ceil(len(groups) / cols) * cell_h), background)
    draw = ImageDraw.Draw(canvas)
    for i, group in enumerate(groups):
        r, c = divmod(i, cols)
        x0, y0 = c * cell_w + pad, r * cell_h + pad
        for j, img in enumerate(group):
            canvas.paste(to_pil(img).resize((w, h), Image.NEAREST), (x0 + j * (w + pad), y0))
        if labels:
            draw.text((x0, y0 + h + pad), str(labels[i]), fill=(0, 0, 0), font=font)
    return canvas


def make_grid(
    originals: torch.Tensor,
    recons: torch.Tensor,
    labels: Sequence[str] | None = None,
    pairs_per_row: int = 4,
    pad: int = 2,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Originals next to reconstructions as a PIL image. Both (B, C, H, W) in [0, 1]."""
    if len(originals) != len(recons):
        raise ValueError(f"{len(originals)} originals but {len(recons)} reconstructions")
    return tile(list(zip(originals, recons)), labels, pairs_per_row, pad, background)


def save_grid(
    originals: torch.Tensor,
    recons: torch.Tensor,
    path: str | os.PathLike,
    labels: Sequence[str] | None = None,
    pairs_per_row: int = 4,
    pad: int = 2,
) -> Image.Image:
    """Write the grid to ``path`` (PNG) and return it."""
    grid = make_grid(originals, recons, labels=labels, pairs_per_row=pairs_per_row, pad=pad)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    grid.save(path, format="PNG")
    return grid
