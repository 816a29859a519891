"""An attribute probe for the shapes world: reads a (generated) image back into a scene.

Generation and editing are scored by what the picture shows, not by its tokens: a small CNN reads
the image and says, per cell of the scene's position grid, "empty" or (shape, colour, size). Count,
per-object shape / colour / position follow, and compare with the caption's scene exactly.

Why per cell: the shapes world puts each object inside its own grid cell and sizes it as a fraction
of the cell side. So the image is resized to 64x64 (any input size works), each cell is cut out and
resized to ``PATCH`` x ``PATCH``, and ONE cell classifier serves the 2x2 and the 3x3 grid alike.

This module reads and scores; ``scripts/train_probe.py`` (in a checkout) trains the probe on the
dataset's own renderer, with its own seed stream restricted to the *train* caption bucket (so no
val/test scene is ever seen), with blur / noise / JPEG / colour-gain corruptions (``corrupt``),
because generated images come back through a detokenizer. The shipped weights
(``probe_weights/shapes_probe.safetensors``, fp16, < 1 MB) are retrained with
``python scripts/train_probe.py --out illume_kit/eval/probe_weights`` (~3 min on 2 cores).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from illume_kit.data.shapes import COLOR_NAMES, GRID_POSITIONS, SHAPES, SIZES

SIDE = 64  # every image is first resized to SIDE x SIDE
PATCH = 24  # then every grid cell to PATCH x PATCH
SHAPE_CLASSES = ("empty",) + SHAPES
WEIGHTS_DIR = Path(__file__).parent / "probe_weights"
WEIGHTS = WEIGHTS_DIR / "shapes_probe.safetensors"


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ShapesProbe(nn.Module):
    """Cell classifier: (N, 3, PATCH, PATCH) in [0, 1] -> logits for shape (empty + shapes), colour, size."""

    def __init__(self, widths: Sequence[int] = (16, 24, 32, 48, 48, 64), hidden: int = 64) -> None:
        super().__init__()
        strides = (1, 2, 1, 2, 1, 2)
        layers, cin = [], 3
        for w, s in zip(widths, strides):
            layers.append(_block(cin, w, s))
            cin = w
        self.trunk = nn.Sequential(*layers)
        self.mlp = nn.Sequential(nn.Linear(2 * cin, hidden), nn.ReLU(inplace=True))
        self.shape = nn.Linear(hidden, len(SHAPE_CLASSES))
        self.color = nn.Linear(hidden, len(COLOR_NAMES))
        self.size = nn.Linear(hidden, len(SIZES))

    def forward(self, patches: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.trunk(patches * 2 - 1)
        h = self.mlp(torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1))
        return {"shape": self.shape(h), "color": self.color(h), "size": self.size(h)}


# ---------------------------------------------------------------- images -> cells -> scenes


def to_side(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 3, SIDE, SIDE), antialiased."""
    images = images.float()
    if images.shape[-2:] == (SIDE, SIDE):
        return images
    return F.interpolate(images, size=(SIDE, SIDE), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def cells(images: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, 3, SIDE, SIDE) -> (B * grid * grid, 3, PATCH, PATCH), cells in reading order."""
    B = images.shape[0]
    x = F.interpolate(images, size=(grid * PATCH, grid * PATCH), mode="bilinear", antialias=True, align_corners=False)
    x = x.reshape(B, 3, grid, PATCH, grid, PATCH).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B * grid * grid, 3, PATCH, PATCH)


def scene_from_cells(shape: Sequence[int], color: Sequence[int], size: Sequence[int], grid: int) -> dict[str, Any]:
    objects = []
    for k, s in enumerate(shape):
        if s == 0:
            continue
        r, c = divmod(k, grid)
        objects.append(
            {
                "shape": SHAPE_CLASSES[s],
                "color": COLOR_NAMES[color[k]],
                "size": SIZES[size[k]],
                "position": GRID_POSITIONS[grid][r][c],
                "cell": (r, c),
            }
        )
    return {"grid": grid, "objects": objects, "count": len(objects)}


@torch.no_grad()
def read_scenes(
    probe: ShapesProbe,
    images: torch.Tensor | Sequence[torch.Tensor],
    grid: int | Sequence[int] = 3,
    batch_size: int = 256,
) -> list[dict[str, Any]]:
    """What the probe sees in each image: scenes ``{grid, objects: [{shape, color, size, position,
    cell}], count}``. ``grid`` is one size for all images or one per image."""
    dev = next(probe.parameters()).device
    images = [im for im in images]
    grids = [grid] * len(images) if isinstance(grid, int) else list(grid)
    if len(grids) != len(images):
        raise ValueError(f"{len(grids)} grids for {len(images)} images")
    was = probe.training
    probe.eval()
    out: list[dict | None] = [None] * len(images)
    try:
        for g in sorted(set(grids)):
            if g not in GRID_POSITIONS:
                raise ValueError(f"the probe reads grids {sorted(GRID_POSITIONS)}, got {g}")
            idx = [i for i, gi in enumerate(grids) if gi == g]
            per = max(1, batch_size // (g * g))
            for s in range(0, len(idx), per):
                chunk = idx[s : s + per]
                x = to_side(torch.stack([images[i].to(dev) for i in chunk]))
                logits = probe(cells(x, g))
                pred = {k: v.argmax(-1).reshape(len(chunk), g * g).tolist() for k, v in logits.items()}
                for j, i in enumerate(chunk):
                    out[i] = scene_from_cells(pred["shape"][j], pred["color"][j], pred["size"][j], g)
    finally:
        probe.train(was)
    return out  # type: ignore[return-value]


ATTRIBUTES = ("shape", "colour", "position", "count")  # what `attributes` averages


def compare(pred: dict[str, Any], truth: dict[str, Any]) -> dict[str, int]:
    """Per-scene tallies: ``exact`` (same occupied cells, each with the right shape and colour),
    ``count``; per truth object: the probe sees an object / the right shape / colour / size there."""
    seen = {tuple(o["cell"]): o for o in pred["objects"]}
    t = {
        "exact": 0,
        "count": int(pred["count"] == len(truth["objects"])),
        "objects": len(truth["objects"]),
        "position": 0,
        "shape": 0,
        "colour": 0,
        "size": 0,
    }
    for o in truth["objects"]:
        p = seen.get(tuple(o["cell"]))
        if p is None:
            continue
        t["position"] += 1
        t["shape"] += p["shape"] == o["shape"]
        t["colour"] += p["color"] == o["color"]
        t["size"] += p["size"] == o["size"]
    cells_match = set(seen) == {tuple(o["cell"]) for o in truth["objects"]}
    t["exact"] = int(cells_match and t["shape"] == t["colour"] == len(truth["objects"]))
    return t


def score(preds: Sequence[dict], truths: Sequence[dict]) -> dict[str, float]:
    """Scene accuracy (``accuracy``: count, positions, shapes and colours all right), ``count`` (per
    scene), ``shape`` / ``colour`` / ``position`` / ``size`` (per captioned object) and
    ``attributes``: the mean of the shape, colour, position and count accuracies (the attribute
    accuracy of a generation benchmark, which credits a scene drawn partly right)."""
    if len(preds) != len(truths):
        raise ValueError(f"{len(preds)} readings for {len(truths)} scenes")
    if not preds:
        return {}
    tallies = [compare(p, t) for p, t in zip(preds, truths)]
    n_obj = max(1, sum(t["objects"] for t in tallies))
    out = {
        "accuracy": sum(t["exact"] for t in tallies) / len(tallies),
        "count": sum(t["count"] for t in tallies) / len(tallies),
    }
    for k in ("shape", "colour", "position", "size"):
        out[k] = sum(t[k] for t in tallies) / n_obj
    out["attributes"] = sum(out[k] for k in ATTRIBUTES) / len(ATTRIBUTES)
    return out


# ---------------------------------------------------------------- weights


def load_probe(path: str | Path | None = None, device: str | torch.device = "cpu") -> ShapesProbe:
    """The shipped probe (or the safetensors file at ``path``), in eval mode."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else WEIGHTS
    if path.is_dir():
        path = path / WEIGHTS.name
    if not path.is_file():
        raise FileNotFoundError(
            f"probe weights {path} are missing; retrain them from a checkout with "
            f"`python scripts/train_probe.py --out {path.parent}`"
        )
    probe = ShapesProbe()
    sd = load_file(str(path))
    ref = probe.state_dict()
    probe.load_state_dict({k: v.to(ref[k].dtype) if k in ref else v for k, v in sd.items()})
    return probe.to(device).eval()


# ---------------------------------------------------------------- corruptions


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Per-image separable gaussian blur; ``sigma`` (B,), 0 = unchanged."""
    B, C, H, W = x.shape
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(C, 0)  # (B*C, K)
    y = F.pad(x.reshape(1, B * C, H, W), (radius,) * 4, mode="reflect")
    y = F.conv2d(y, k[:, None, :, None], groups=B * C)
    y = F.conv2d(y, k[:, None, None, :], groups=B * C)
    return y.reshape(B, C, H, W)


def corrupt(x: torch.Tensor, gen: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Mild, random, per-image corruptions of what a detokenizer might return: blur, down-up
    resampling, colour gain/offset, gaussian noise. ``x`` (B, 3, SIDE, SIDE) in [0, 1]."""
    B = x.shape[0]

    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(B, *shape, generator=gen)

    def coin(p):
        return torch.rand(B, generator=gen) < p * min(1.0, strength)

    sigma = torch.where(coin(0.5), u(0.2, 1.1 * strength), torch.zeros(B))
    x = gaussian_blur(x, sigma)
    m = coin(0.15)
    if bool(m.any()):  # resample down and up again: what a lower-resolution decode looks like
        s = int(SIDE * (0.5 + 0.3 * float(torch.rand((), generator=gen))))
        m = m[:, None, None, None]
        du = F.interpolate(
            F.interpolate(x, size=(s, s), mode="bilinear", antialias=True), size=(SIDE, SIDE), mode="bilinear"
        )
        x = torch.where(m, du, x)
    gain = torch.where(coin(0.5)[:, None], u(1 - 0.1 * strength, 1 + 0.1 * strength, 3), torch.ones(B, 3))
    off = torch.where(coin(0.5)[:, None], u(-0.04 * strength, 0.04 * strength, 3), torch.zeros(B, 3))
    x = x * gain[:, :, None, None] + off[:, :, None, None]
    std = torch.where(coin(0.5), u(0.0, 0.05 * strength), torch.zeros(B))
    x = x + std[:, None, None, None] * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 1)


# ---------------------------------------------------------------- held-out ground truth


def heldout_scenes(n: int, seed: int = 1, grid: int = 3, image_size: int = SIDE) -> tuple[torch.Tensor, list[dict]]:
    """Ground-truth val-split items of the shapes dataset (never seen in probe training)."""
    from illume_kit.data.params import ShapesParams
    from illume_kit.data.shapes import ShapesDataset

    ds = ShapesDataset(
        ShapesParams(split="val", num_samples=n, seed=seed, grid=grid, edits=False, image_size=image_size)
    )
    items = [ds[i] for i in range(n)]
    return torch.stack([it["image"] for it in items]), [it["attributes"] for it in items]


def heldout_accuracy(probe: ShapesProbe, n: int = 400, seed: int = 1) -> dict[str, float]:
    """Scene accuracy on held-out ground truth: clean 3x3 and 2x2, and 3x3 with mild corruption."""
    out = {}
    for g in (3, 2):
        imgs, truths = heldout_scenes(n, seed, g)
        out[f"grid{g}/clean"] = score(read_scenes(probe, imgs, g), truths)["accuracy"]
        if g == 3:
            noisy = corrupt(to_side(imgs), torch.Generator().manual_seed(seed), strength=0.8)
            out[f"grid{g}/corrupted"] = score(read_scenes(probe, noisy, g), truths)["accuracy"]
    return out
