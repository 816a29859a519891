"""Opening a user's image file with its size checked before any pixel is decoded.

``Image.open`` reads only the header; a small file can declare a huge canvas (a 20000x20000 PNG of
one colour compresses to a few hundred kilobytes and decodes to 1.2 GB), so the declared size is
checked against a pixel budget first: ``MAX_PIXELS`` (64 Mpx), or the environment variable
``ILLUME_KIT_MAX_IMAGE_PIXELS``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import IO

MAX_PIXELS = 64_000_000
ENV = "ILLUME_KIT_MAX_IMAGE_PIXELS"


class ImageTooLarge(ValueError):
    """An image whose declared size is past the pixel budget."""


def pixel_budget() -> int:
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return MAX_PIXELS
    try:
        value = int(float(raw))
    except ValueError:
        raise ValueError(f"{ENV}={raw!r}: expected a number of pixels, e.g. {MAX_PIXELS}") from None
    if value < 1:
        raise ValueError(f"{ENV}={raw!r}: expected a positive number of pixels")
    return value


def check_size(path: str | Path, width: int, height: int, budget: int | None = None) -> None:
    budget = pixel_budget() if budget is None else budget
    if width * height > budget:
        raise ImageTooLarge(
            f"{path}: the image is {width}x{height} = {width * height / 1e6:.0f} Mpx, past the limit of "
            f"{budget / 1e6:g} Mpx (set {ENV} to raise it)"
        )


def open_image(path: str | Path | IO[bytes], budget: int | None = None, name: str | None = None):
    """``PIL.Image.open`` (lazy) after its declared size is checked; errors name the file (or ``name``,
    for an open file object such as a tar member's bytes)."""
    from PIL import Image, UnidentifiedImageError

    path_name = name if name is not None else path
    budget = pixel_budget() if budget is None else budget
    # PIL's own bomb check (at twice its limit) would refuse inside open() without saying the size:
    # the header is read with it off and the size checked here, against the budget
    pil_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        img = Image.open(path)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path_name}: not an image Pillow can read ({type(exc).__name__})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit
    try:
        check_size(path_name, *img.size, budget=budget)
    except ImageTooLarge:
        img.close()
        raise
    return img


def load_rgb(path: str | Path | IO[bytes], budget: int | None = None, name: str | None = None):
    """The image decoded as RGB, its size checked first."""
    img = open_image(path, budget, name)
    with img:
        try:
            with warnings.catch_warnings():  # the size was checked against our budget, not PIL's
                from PIL import Image

                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                return img.convert("RGB")
        except OSError as exc:
            raise ValueError(
                f"{name if name is not None else path}: the image cannot be decoded ({type(exc).__name__}: {exc})"
            ) from None


def fit_image(image, size: tuple[int, int]):
    """A PIL image -> float (3, H, W) in [0, 1]: center-cropped to the aspect of ``size`` (H, W), then
    resized to it (bicubic)."""
    from PIL import Image

    from illume_kit.data.shapes import to_tensor

    h, w = size
    img = image.convert("RGB")
    W, H = img.size
    if W * h > H * w:  # too wide: crop the sides
        cw = round(H * w / h)
        img = img.crop(((W - cw) // 2, 0, (W - cw) // 2 + cw, H))
    elif W * h < H * w:
        ch = round(W * h / w)
        img = img.crop((0, (H - ch) // 2, W, (H - ch) // 2 + ch))
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.BICUBIC)
    return to_tensor(img)
