"""Do a tokenizer's features and codes say what is in each cell, and only there? One table.

    python bench/semantic_locality.py runs/siglip_tiny_2x2/checkpoint [more checkpoints] [-n 1000]

For every codebook level of each checkpoint's tokenizer (a tokenizer run or a unified model):

1. locality: held-out scenes rendered twice, once with one shape recoloured (or reshaped); the mean
   cosine between the two renderings' pre-quantisation features over the changed cell's patches and
   over another cell's. A local feature changes where the pixels did (low first number) and stays
   put elsewhere (second number near 1); a feature that holds the whole scene moves everywhere;
2. what survives quantisation: per cell, a multinomial logistic probe (trained on 80% of the
   scenes' cells, scored on the rest) for the cell's shape (or "nothing"), colour and size, on the
   pre-quantisation features and on the quantised code maps (``codes_to_maps``), with every patch
   of the cell concatenated;
3. how predictable the codes are: the entropy in bits of a patch's code given what its cell holds
   (shape, colour, size or nothing) and where the patch sits in the cell. 0 when the codes are a
   function of the cell's content; a language model writing the codes has to guess the rest.

What the measures tell apart: a teacher trained on whole captions alone gives patches that each
hold the whole scene (the other-cell cosine moves as much as the own cell's) and codes that keep
colour for only part of the cells; the teacher's region-text loss (``region_weight``) brings both
near 1.00. Two codebooks that keep every colour can still differ in how writable they are: one
whose empty cells take codes chosen by the other cells (bits given the cell well above 0) is one
a small LLM draws badly through, although its reconstruction ceiling is the same.

Built for the grid worlds of the ``shapes`` data set (the checkpoint's own recipe, held-out ``val``
split); the feature grid side must be a multiple of the world's grid side.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from illume_kit.core.recipe import load_recipe
from illume_kit.data.build import build_dataset
from illume_kit.data.shapes import COLOR_NAMES, SHAPES, SIZES, render, to_tensor
from illume_kit.model.checkpoint import load_checkpoint

ATTRIBUTES = (("shape", (*SHAPES, "nothing")), ("colour", COLOR_NAMES), ("size", SIZES))


def probe_accuracy(x: torch.Tensor, y: torch.Tensor, train: float = 0.8, steps: int = 300) -> float:
    """Held-out accuracy of an L2-regularised multinomial logistic regression on standardised x."""
    n = int(len(y) * train)
    mean, std = x[:n].mean(0), x[:n].std(0) + 1e-5
    x = (x - mean) / std
    classes = int(y.max()) + 1
    w = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    with torch.enable_grad():  # also when called under no_grad
        for _ in range(steps):
            loss = F.cross_entropy(x[:n] @ w + b, y[:n]) + 1e-3 * w.square().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return ((x[n:] @ w + b).argmax(-1) == y[n:]).float().mean().item()


def cell_blocks(maps: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, C, h, w) -> (B, grid*grid cells in reading order, C * (h/grid) * (w/grid))."""
    b, c, h, w = maps.shape
    if h % grid or w % grid:
        raise ValueError(f"a {h}x{w} feature grid does not split into {grid}x{grid} cells")
    x = maps.reshape(b, c, grid, h // grid, grid, w // grid).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, grid * grid, -1)


def code_entropy(codes: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean entropy in bits of a patch's code given its cell's labels and its place in the cell.

    codes (cells, patches per cell) code indices; labels (cells, k) what each cell holds. Each
    (labels, place) group contributes its entropy weighted by its share of the patches.
    """
    groups = torch.cat(
        [labels.repeat_interleave(codes.shape[1], 0), torch.arange(codes.shape[1]).repeat(codes.shape[0])[:, None]], 1
    )
    _, group = groups.unique(dim=0, return_inverse=True)
    pairs, counts = torch.stack([group, codes.reshape(-1)], 1).unique(dim=0, return_counts=True)
    totals = torch.zeros(int(group.max()) + 1).index_add_(0, pairs[:, 0], counts.float())
    p = counts / totals[pairs[:, 0]]
    return float(-(counts * p.log2()).sum() / codes.numel())


def cell_labels(scene: dict) -> torch.Tensor:
    """(cells, 3) indices into ATTRIBUTES' vocabularies; -1 where a cell has no colour / size."""
    g = scene["grid"]
    out = torch.full((g * g, 3), -1, dtype=torch.long)
    out[:, 0] = len(SHAPES)  # "nothing"
    for o in scene["objects"]:
        k = o["cell"][0] * g + o["cell"][1]
        out[k] = torch.tensor([SHAPES.index(o["shape"]), COLOR_NAMES.index(o["color"]), SIZES.index(o["size"])])
    return out


def _as_bchw(t: torch.Tensor, channels: int | None) -> torch.Tensor:
    """Tokenizers return features as (B, h, w, C) or (B, C, h, w)."""
    return t.permute(0, 3, 1, 2) if channels is not None and t.shape[-1] == channels and t.shape[1] != channels else t


def _changed(scene: dict, rng: random.Random, what: str) -> tuple[dict, tuple[int, int]]:
    new = {**scene, "objects": [dict(o) for o in scene["objects"]]}
    o = new["objects"][0]
    if what == "colour":
        o["color"] = rng.choice([c for c in COLOR_NAMES if c != o["color"]])
    else:
        o["shape"] = rng.choice([s for s in SHAPES if s != o["shape"]])
    return new, tuple(o["cell"])


@torch.no_grad()
def measure(checkpoint: Path, n: int) -> list[tuple[str, dict[str, float]]]:
    model, _ = load_checkpoint(checkpoint)
    tok = getattr(model, "tokenizer", model).eval()
    data = build_dataset(load_recipe(checkpoint / "recipe.yaml"), "val", edits=False)
    p = data.params
    scenes = [data.scene(i) for i in range(min(n, len(data)))]
    dims = {cb.name: cb.feature_dim for cb in tok.codebooks}
    feats: dict[str, list] = {k: [] for k in dims}
    quant: dict[str, list] = {k: [] for k in dims}
    codes: dict[str, list] = {k: [] for k in dims}
    for s in range(0, len(scenes), 50):
        images = torch.stack(
            [to_tensor(render(sc, p.image_size, p.supersample, p.jitter)) for sc in scenes[s : s + 50]]
        )
        out = tok.encode(images)
        maps = tok.codes_to_maps(out.codes)
        for k in dims:
            feats[k].append(cell_blocks(_as_bchw(out.features[k], dims[k]).float(), p.grid))
            quant[k].append(cell_blocks(maps[k].float(), p.grid))
            codes[k].append(cell_blocks(out.codes[k][:, None], p.grid))
    labels = torch.stack([cell_labels(sc) for sc in scenes]).reshape(-1, 3)
    rows = []
    rng = random.Random(0)
    for k in dims:
        row: dict[str, float] = {}
        for what in ("colour", "shape"):
            own, other = [], []
            for sc in scenes[:100]:
                new, cell = _changed(sc, rng, what)
                images = torch.stack([to_tensor(render(x, p.image_size, p.supersample, p.jitter)) for x in (sc, new)])
                f = cell_blocks(_as_bchw(tok.encode(images).features[k], dims[k]).float(), p.grid)
                cos = F.cosine_similarity(f[0], f[1], dim=-1)  # per cell, over the cell's patches x channels
                c = cell[0] * p.grid + cell[1]
                own.append(cos[c])
                other.append(cos[(c + 1) % cos.numel()])
            row[f"{what} changed: own cell"] = torch.stack(own).mean().item()
            row[f"{what} changed: other cell"] = torch.stack(other).mean().item()
        for name, x in (("features", feats[k]), ("codes", quant[k])):
            x = torch.cat(x).reshape(len(labels), -1)
            for j, (attr, _) in enumerate(ATTRIBUTES):
                keep = labels[:, j] >= 0
                row[f"{name}: {attr}"] = probe_accuracy(x[keep], labels[keep, j])
        row["codes: bits given the cell"] = code_entropy(torch.cat(codes[k]).reshape(len(labels), -1), labels)
        run = checkpoint.parent.name if checkpoint.name == "checkpoint" else checkpoint.name
        rows.append((f"{run} [{k}]", row))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("-n", type=int, default=1000, help="held-out scenes for the probes (locality uses 100)")
    args = ap.parse_args()
    torch.manual_seed(0)
    results = [r for ck in args.checkpoints for r in measure(ck, args.n)]
    table = Table(title="per-cell locality and what the codes keep (held-out scenes)")
    table.add_column("measure")
    for name, _ in results:
        table.add_column(name, justify="right")
    for key in results[0][1]:
        table.add_row(key, *(f"{row[key]:.3f}" for _, row in results))
    Console().print(table)


if __name__ == "__main__":
    main()
