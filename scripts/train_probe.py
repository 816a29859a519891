"""Train the shapes attribute probe that ``illume-kit eval`` reads generated images with.

The probe (``illume_kit.eval.probe.ShapesProbe``) is a small cell classifier. It learns from the
shapes dataset's own renderer, with its own seed stream restricted to the *train* caption bucket (no
val/test scene is ever seen), on 3x3 and 2x2 grids, with JPEG, blur, resampling, colour-gain and
noise corruptions (``illume_kit.eval.probe.corrupt``), because generated images come back through a
detokenizer. The shipped weights were written by

    python scripts/train_probe.py --out illume_kit/eval/probe_weights      # ~3 min on 2 cores

and ``python scripts/train_probe.py --eval`` reports the held-out accuracy of the shipped weights.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from illume_kit.data.shapes import COLOR_NAMES, SIZES, caption_of, caption_split, render, sample_scene
from illume_kit.eval.probe import (
    PATCH,
    SHAPE_CLASSES,
    SIDE,
    WEIGHTS,
    WEIGHTS_DIR,
    ShapesProbe,
    cells,
    corrupt,
    heldout_accuracy,
    load_probe,
)


def save_probe(probe: ShapesProbe, folder: str | Path, report: dict | None = None) -> Path:
    """Write ``shapes_probe.safetensors`` (fp16 floats) and ``shapes_probe.json`` into ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in probe.state_dict().items()}
    path = folder / WEIGHTS.name
    save_file(sd, str(path), metadata={"patch": str(PATCH), "side": str(SIDE)})
    (folder / "shapes_probe.json").write_text(json.dumps({"patch": PATCH, "side": SIDE, **(report or {})}, indent=2))
    return path


# ---------------------------------------------------------------- training data


def probe_scene(rng: random.Random, grid: int) -> dict[str, Any]:
    """A training scene: 0..4 objects, from the *train* caption bucket only (disjoint from val/test)."""
    while True:
        scene = sample_scene(rng, grid, 0, min(4, grid * grid), rng.random() < 0.85)
        if not scene["objects"] or caption_split(caption_of(scene)) == "train":
            return scene


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def render_set(n: int, seed: int, grid: int, jpeg_p: float = 0.3) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``n`` rendered training scenes at SIDE px (uint8 (n, 3, SIDE, SIDE)) and per-cell targets
    (shape, colour, size: (n, grid*grid) long; colour/size -100 where empty)."""
    rng = random.Random(f"probe/{seed}/{grid}")
    imgs = np.empty((n, SIDE, SIDE, 3), dtype=np.uint8)
    tgt = {k: torch.full((n, grid * grid), -100, dtype=torch.long) for k in ("shape", "color", "size")}
    tgt["shape"].zero_()
    for i in range(n):
        scene = probe_scene(rng, grid)
        img = render(scene, SIDE, rng.choice((1, 2, 4, 4, 4)))
        if rng.random() < jpeg_p:
            img = _jpeg(img, rng.randint(25, 90))
        imgs[i] = np.asarray(img)
        for o in scene["objects"]:
            k = o["cell"][0] * grid + o["cell"][1]
            tgt["shape"][i, k] = SHAPE_CLASSES.index(o["shape"])
            tgt["color"][i, k] = COLOR_NAMES.index(o["color"])
            tgt["size"][i, k] = SIZES.index(o["size"])
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), tgt


# ---------------------------------------------------------------- training


def _loss(probe: ShapesProbe, patches: torch.Tensor, tgt: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = probe(patches)
    loss = F.cross_entropy(logits["shape"], tgt["shape"])
    for k in ("color", "size"):
        if bool((tgt[k] >= 0).any()):
            loss = loss + F.cross_entropy(logits[k], tgt[k], ignore_index=-100)
    return loss


def train_probe(
    steps: int = 700,
    batch_images: int = 40,
    n_scenes: int = 10_000,
    seed: int = 0,
    lr: float = 4e-3,
    max_seconds: float | None = None,
    heldout: int = 400,
    quiet: bool = False,
) -> tuple[ShapesProbe, dict[str, Any]]:
    """Train a probe from scratch on rendered ground truth (3x3 and 2x2 grids, 70/30); returns
    (probe, report) with held-out accuracies on ``heldout`` val-split scenes (0: skip), clean and corrupted."""
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    sets = {3: render_set(int(n_scenes * 0.7), seed, 3), 2: render_set(n_scenes - int(n_scenes * 0.7), seed, 2)}
    t_render = time.perf_counter() - t0
    probe = ShapesProbe()
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    probe.train()
    losses = []
    for step in range(steps):
        g = 3 if float(torch.rand((), generator=gen)) < 0.7 else 2
        imgs, tgt = sets[g]
        idx = torch.randint(0, imgs.shape[0], (batch_images,), generator=gen)
        x = corrupt(imgs[idx].float() / 255, gen)
        patches = cells(x, g)
        t = {k: v[idx].reshape(-1) for k, v in tgt.items()}
        # keep every occupied cell and about as many empty ones: empty cells are easy and plentiful
        keep = (t["shape"] > 0) | (torch.rand(t["shape"].shape, generator=gen) < 0.4)
        loss = _loss(probe, patches[keep], {k: v[keep] for k, v in t.items()})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if not quiet and (step % 100 == 0 or step == steps - 1):
            print(
                f"step {step:4d}  loss {sum(losses[-50:]) / len(losses[-50:]):.4f}  {time.perf_counter() - t0:.0f}s",
                flush=True,
            )
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            break
    probe.eval()
    report = {
        "steps": step + 1,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "render_seconds": round(t_render, 1),
        "first_loss": round(losses[0], 4),
        "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
    }
    if heldout:
        report["heldout"] = heldout_accuracy(probe, heldout, seed=seed + 1)
    return probe, report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python scripts/train_probe.py", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(WEIGHTS_DIR), help="folder for shapes_probe.safetensors + .json")
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--scenes", type=int, default=10_000, help="rendered training scenes")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy machine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=None, help="stop training early after this long")
    ap.add_argument("--heldout", type=int, default=400, help="held-out scenes per grid for the report (0: skip)")
    ap.add_argument(
        "--eval",
        metavar="WEIGHTS",
        nargs="?",
        const=str(WEIGHTS),
        help="only report the held-out accuracy of these weights (default: the shipped ones)",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.eval:
        print(json.dumps(heldout_accuracy(load_probe(args.eval)), indent=2))
        return 0
    probe, report = train_probe(
        args.steps, n_scenes=args.scenes, seed=args.seed, max_seconds=args.max_seconds, heldout=args.heldout
    )
    path = save_probe(probe, args.out, report)
    print(json.dumps(report, indent=2))
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
