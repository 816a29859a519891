"""Image sizing the way the released ILLUME+ sizes its images (``preprocess: official``).

Two rules, read from the reference code (``illume/data/aspect_ratio_utils.py`` and the MoVQ image
processor of its vision tokenizer):

- **understanding** keeps the image's own aspect: each side is rounded to a multiple of the
  tokenizer's stride, then the whole image is scaled down (up) when its area is past ``max_pixels``
  (below ``min_pixels``), flooring (ceiling) the sides to the multiple; bicubic resampling.
- **generation and editing** work at one of a fixed table of *anchors* (height, width) of about the
  same area: eleven aspect ratios from 1:1 to 1:4 and 4:1. At base 512 the table is the released
  model's; other bases scale it by ``base / 512``. An input image is matched to the anchor whose
  width/height ratio is closest (ties: the anchor nearest in size), then resized with Lanczos to fit
  inside it and padded with white (inference), or resized to cover it and center-cropped (training).

Torch-free: sizes are plain integers, images are PIL images.
"""

from __future__ import annotations

import math
from typing import Literal

# (height, width) anchors of the released model, base 512: the order matters for ties
BASE = 512
RATIOS_512: tuple[tuple[int, int], ...] = (
    (512, 512),
    (384, 512),
    (512, 384),
    (384, 768),
    (768, 384),
    (384, 576),
    (576, 384),
    (320, 960),
    (960, 320),
    (256, 1024),
    (1024, 256),
)
# the bases the released model and its demo work at (the diffusion decoder doubles the side)
OFFICIAL_BASES: tuple[int, ...] = (256, 384, 512, 768, 1024)
# every anchor side at base 512 is a multiple of 64, so any base that is a multiple of 8 gives integer sides
BASE_MULTIPLE = 8
# the released understanding bounds (3B and 7B stage-3 configs) and the DualViTok stride they round to
OFFICIAL_MIN_PIXELS = 32 * 32
OFFICIAL_MAX_PIXELS = 768 * 768
OFFICIAL_MULTIPLE = 16
PAD_FILL = (255, 255, 255)

Fit = Literal["pad", "crop"]


def check_base(base: int) -> int:
    """``base`` when it is a positive multiple of :data:`BASE_MULTIPLE`, else ValueError."""
    if isinstance(base, bool) or not isinstance(base, int) or base < BASE_MULTIPLE or base % BASE_MULTIPLE:
        raise ValueError(
            f"anchor base {base!r}: expected a positive multiple of {BASE_MULTIPLE} "
            f"(the released model's: {', '.join(map(str, OFFICIAL_BASES))})"
        )
    return base


def anchors(base: int = BASE) -> tuple[tuple[int, int], ...]:
    """The (height, width) anchors at ``base``: the released table scaled by ``base / 512``."""
    check_base(base)
    return tuple((h * base // BASE, w * base // BASE) for h, w in RATIOS_512)


def nearest_anchor(height: int, width: int, base: int = BASE, table=None) -> tuple[int, int]:
    """The anchor of ``table`` (default: :func:`anchors` of ``base``) an image of this size snaps to.

    Closest width/height ratio; among equally close ones, the smallest squared distance between
    the image's and the anchor's sides; then the table's order.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size {height}x{width}: sides must be positive")
    table = tuple(table) if table is not None else anchors(base)
    aspect = width / height
    diffs = [abs(w / h - aspect) for h, w in table]
    best = min(diffs)
    tied = [i for i, d in enumerate(diffs) if d == best]
    i = min(tied, key=lambda j: ((height - table[j][0]) ** 2 + (width - table[j][1]) ** 2, j))
    return table[i]


def fit_size(height: int, width: int, anchor: tuple[int, int], fit: Fit = "pad") -> tuple[int, int]:
    """(height, width) the image is resized to before it is padded (``pad``: the largest size of
    its aspect inside the anchor) or center-cropped (``crop``: the smallest covering it)."""
    ah, aw = anchor
    if fit == "pad":
        scale = min(aw / width, ah / height)
        return int(height * scale), int(width * scale)
    if fit == "crop":
        if height / ah > width / aw:  # relatively taller: the width fills the anchor
            return int(aw / width * height), aw
        return ah, int(ah / height * width)
    raise ValueError(f"fit {fit!r}: expected pad or crop")


def snap(image, anchor: tuple[int, int], fit: Fit = "pad", fill=PAD_FILL):
    """A PIL image -> the anchor's size (height, width): Lanczos-resized to fit inside and padded
    evenly with ``fill`` (``pad``, inference), or resized to cover and center-cropped (``crop``)."""
    from PIL import Image

    ah, aw = anchor
    w0, h0 = image.size
    nh, nw = fit_size(h0, w0, anchor, fit)
    # Pillow refuses a zero side; an image far thinner than the anchor keeps one pixel
    resized = image.resize((max(nw, 1), max(nh, 1)), Image.Resampling.LANCZOS)
    if fit == "crop":
        left, top = (resized.width - aw) // 2, (resized.height - ah) // 2
        return resized.crop((left, top, left + aw, top + ah))
    canvas = Image.new(resized.mode, (aw, ah), fill if resized.mode == "RGB" else 255)
    canvas.paste(resized, ((aw - resized.width) // 2, (ah - resized.height) // 2))
    return canvas


def native_size(
    height: int,
    width: int,
    min_pixels: int = OFFICIAL_MIN_PIXELS,
    max_pixels: int = OFFICIAL_MAX_PIXELS,
    multiple: int = OFFICIAL_MULTIPLE,
) -> tuple[int, int]:
    """(height, width) of an image of this size at its own aspect, sides multiples of ``multiple``,
    area within [min_pixels, max_pixels] (as near as the rounding allows; never below one multiple)."""
    if height < 1 or width < 1:
        raise ValueError(f"image size {height}x{width}: sides must be positive")
    if multiple < 1 or min_pixels < 1 or max_pixels < min_pixels:
        raise ValueError(
            f"need multiple >= 1 and 1 <= min_pixels <= max_pixels, got {multiple}, {min_pixels}, {max_pixels}"
        )
    h = round(height / multiple) * multiple
    w = round(width / multiple) * multiple
    if h * w > max_pixels:
        shrink = math.sqrt(height * width / max_pixels)
        h = math.floor(height / shrink / multiple) * multiple
        w = math.floor(width / shrink / multiple) * multiple
    elif h * w < min_pixels:
        grow = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * grow / multiple) * multiple
        w = math.ceil(width * grow / multiple) * multiple
    return max(h, multiple), max(w, multiple)


def native_resize(
    image,
    min_pixels: int = OFFICIAL_MIN_PIXELS,
    max_pixels: int = OFFICIAL_MAX_PIXELS,
    multiple: int = OFFICIAL_MULTIPLE,
):
    """A PIL image -> bicubic-resized to :func:`native_size` (unchanged when already that size)."""
    from PIL import Image

    h, w = native_size(image.height, image.width, min_pixels, max_pixels, multiple)
    if (h, w) == (image.height, image.width):
        return image
    return image.resize((w, h), Image.Resampling.BICUBIC)


__all__ = [
    "BASE",
    "OFFICIAL_BASES",
    "OFFICIAL_MAX_PIXELS",
    "OFFICIAL_MIN_PIXELS",
    "OFFICIAL_MULTIPLE",
    "RATIOS_512",
    "anchors",
    "check_base",
    "fit_size",
    "native_resize",
    "native_size",
    "nearest_anchor",
    "snap",
]
