"""The shipped tiny unified checkpoint at work: one load, then answers, drawings and edits.

    python examples/demo.py checkpoints/dualvitok_qwen2_mllm_tiny --image checkpoints/scene.png -o runs/demo/demo.png

Prints the answers as a table and writes one PNG with a line per generation (the image, its caption)
and a line per edit (source | edited, the instruction). The model speaks the shapes world's language
(`illume-kit show dataset shapes` lists it): 2x2 cells, five shapes, six colours, two sizes.
Sampling follows the checkpoint recipe's ``eval.options``, as `illume-kit generate` and `edit` do.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

QUESTIONS = ("how many shapes are there?", "what shape is at the top left?", "what color is the shape at the top left?")
CAPTIONS = (
    "a large red circle at the top left",
    "a small blue square at the bottom right",
    "a large green triangle at the top right",
    "a large yellow star at the bottom left",
)
EDITS = (
    "make the {shape} at the {position} blue",
    "remove the {shape} at the {position}",
    "add a large purple diamond at the top right",
)


def contact_sheet(rows, labels, scale: int = 2, pad: int = 4):
    """One line per row: its images side by side (nearest-upscaled ``scale`` x), then its label."""
    from PIL import Image, ImageDraw, ImageFont

    from illume_kit.eval.grid import to_pil

    font = ImageFont.load_default()
    lines = [[to_pil(im) for im in row] for row in rows]
    lines = [
        [im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST) for im in ims] for ims in lines
    ]
    row_h = max(im.height for ims in lines for im in ims)
    img_w = max(sum(im.width + pad for im in ims) for ims in lines)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = int(max(probe.textlength(label, font=font) for label in labels))
    sheet = Image.new("RGB", (pad + img_w + text_w + pad, pad + len(lines) * (row_h + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (ims, label) in enumerate(zip(lines, labels)):
        x, y = pad, pad + i * (row_h + pad)
        for im in ims:
            sheet.paste(im, (x, y))
            x += im.width + pad
        draw.text((pad + img_w, y + row_h // 2 - 5), label, fill=(0, 0, 0), font=font)
    return sheet


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?", default="checkpoints/dualvitok_qwen2_mllm_tiny")
    ap.add_argument("--image", default="checkpoints/scene.png", help="a scene of the shapes world")
    ap.add_argument("-o", "--output", default="runs/demo/demo.png")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch
    from rich.console import Console
    from rich.table import Table

    from illume_kit.cli.generate_cmds import load_image, recipe_image_size, recipe_sampling
    from illume_kit.data.shapes import SHAPES
    from illume_kit.model.checkpoint import load_checkpoint
    from illume_kit.model.sampler import answer, decode_images, edit_images, generate_images

    console = Console()
    start = time.perf_counter()
    model, _ = load_checkpoint(args.checkpoint)
    size = recipe_image_size(args.checkpoint)
    scene = load_image(args.image, size)
    torch.manual_seed(args.seed)

    answers = answer(model, [scene] * len(QUESTIONS), list(QUESTIONS))
    table = Table(title=f"understand {args.image}")
    table.add_column("question")
    table.add_column("answer")
    for q, a in zip(QUESTIONS, answers):
        table.add_row(q, a)
    console.print(table)

    # the edits name what the model itself sees at the top left, so they apply to any scene
    shape = answer(model, [scene], ["what shape is at the top left?"])[0].strip()
    known = shape in SHAPES
    instructions = [e.format(shape=shape, position="top left") for e in EDITS] if known else [EDITS[-1]]

    with torch.no_grad():
        drawn = decode_images(
            model,
            generate_images(
                model, list(CAPTIONS), size, seed=args.seed, **recipe_sampling(args.checkpoint, "generate")
            ),
        )
        edited = decode_images(
            model,
            edit_images(
                model,
                [scene] * len(instructions),
                instructions,
                seed=args.seed,
                **recipe_sampling(args.checkpoint, "edit"),
            ),
        )
    rows = [(im.float().cpu(),) for im in drawn] + [(scene, im.float().cpu()) for im in edited]
    labels = [f"gen: {c}" for c in CAPTIONS] + [f"edit: {i}" for i in instructions]
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(rows, labels).save(out)
    console.print(
        f"[green]wrote[/] {out}: {len(CAPTIONS)} generations, then {len(instructions)} edits "
        f"(source | edited), in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
