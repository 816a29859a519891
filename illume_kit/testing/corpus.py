"""A small real-image corpus built from the sample images scikit-image ships (no download).

``write_corpus(folder)`` writes a few dozen crops of ``skimage.data`` photographs as PNG files, and
three JSON-lines files over them in the forms the ``conversations``, ``captions`` and ``edits``
datasets read: captions naming what each crop shows, question-answer conversations about it
(subject, colour or grayscale, which part of the photograph), and edit pairs whose targets are
made from the sources by a flip, a rotation, a crop or a colour change, with a matching instruction.
Everything is deterministic: the same files come out on every machine with the same scikit-image.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# skimage.data name -> what the photograph shows (only images that ship inside the wheel)
SUBJECTS = {
    "astronaut": "an astronaut",
    "camera": "a cameraman",
    "chelsea": "a cat",
    "coffee": "a cup of coffee",
    "rocket": "a rocket",
    "coins": "coins",
    "moon": "the surface of the moon",
    "page": "a page of text",
    "clock": "a clock",
    "brick": "a brick wall",
    "grass": "grass",
    "colorwheel": "a colour wheel",
    "immunohistochemistry": "stained tissue",
    "hubble_deep_field": "galaxies in deep space",
}
# crops of each photograph: (name, left, top, right, bottom) as fractions of its width and height
CROPS = (("whole", 0.0, 0.0, 1.0, 1.0), ("left", 0.0, 0.0, 0.6, 1.0), ("right", 0.4, 0.0, 1.0, 1.0))
PART = {"whole": "the whole picture", "left": "the left part", "right": "the right part"}
SIDE = 96  # pixels on each side of a written image: small files, larger than the served 64


def _source(name: str) -> Image.Image:
    import skimage.data

    arr = np.asarray(getattr(skimage.data, name)())
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    img = Image.fromarray(arr)
    return img.convert("RGB") if img.mode in ("RGBA", "P") else img


def _crop(img: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
    w, h = img.size
    left, top, right, bottom = box
    img = img.crop((round(left * w), round(top * h), round(right * w), round(bottom * h)))
    return ImageOps.fit(img, (SIDE, SIDE), Image.Resampling.BICUBIC)


# edits: (instruction, function of the source image), cycled over the crops
EDITS = (
    ("flip the image horizontally", ImageOps.mirror),
    ("flip the image upside down", ImageOps.flip),
    ("rotate the image a quarter turn to the left", lambda im: im.transpose(Image.Transpose.ROTATE_90)),
    ("zoom in on the centre", lambda im: ImageOps.fit(im.crop((24, 24, 72, 72)), (SIDE, SIDE))),
    ("make the image black and white", lambda im: ImageOps.grayscale(im).convert("RGB")),
    ("invert the colours", lambda im: ImageOps.invert(im.convert("RGB"))),
    ("swap the red and blue channels", lambda im: Image.merge("RGB", im.convert("RGB").split()[::-1])),
    ("make the image darker", lambda im: im.point(lambda v: v // 2)),
)


def write_corpus(folder: str | Path) -> dict[str, Path]:
    """Write the corpus under ``folder``; returns the paths of ``conversations``, ``captions`` and
    ``edits`` (the jsonl files) and ``root`` (the folder their image paths are relative to)."""
    root = Path(folder)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "edited").mkdir(exist_ok=True)
    conversations, captions, edits = [], [], []
    k = 0
    for name, subject in SUBJECTS.items():
        src = _source(name)
        colour = "grayscale" if src.mode == "L" else "colour"
        for crop, *box in CROPS:
            img = _crop(src, tuple(box)).convert("RGB")
            rel = f"images/{name}_{crop}.png"
            img.save(root / rel)
            part = PART[crop]
            captions.append({"image": rel, "caption": f"{part} of a {colour} photograph of {subject}"})
            conversations.append(
                {
                    "id": f"{name}_{crop}",
                    "image": rel,
                    "conversations": [
                        {"from": "human", "value": "<image>\nWhat does the picture show?"},
                        {"from": "gpt", "value": subject},
                        {"from": "human", "value": "Is it in colour or grayscale?"},
                        {"from": "gpt", "value": colour},
                        {"from": "human", "value": "Which part of the photograph is this?"},
                        {"from": "gpt", "value": part},
                    ],
                }
            )
            instruction, fn = EDITS[k % len(EDITS)]
            k += 1
            target = f"edited/{name}_{crop}.png"
            fn(img).convert("RGB").save(root / target)
            edits.append({"source": rel, "target": target, "instruction": instruction})
    out = {"root": root}
    for kind, records in (("conversations", conversations), ("captions", captions), ("edits", edits)):
        out[kind] = root / f"{kind}.jsonl"
        out[kind].write_text("".join(json.dumps(r) + "\n" for r in records))
    return out
