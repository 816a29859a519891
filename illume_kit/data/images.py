"""Opening a user's image file with its size checked before any pixel is decoded.

``Image.open`` reads only the header; a small file can declare a huge canvas (a 20000x20000 PNG of
one colour compresses to a few hundred kilobytes and decodes to 1.2 GB), so the declared size is
checked against a pixel budget first: ``MAX_PIXELS`` (64 Mpx), or the environment variable
``ILLUME_KIT_MAX_IMAGE_PIXELS``. Images stored as bytes (a ``datasets`` image column, a tar member)
go through the same checks, named by their source's own words for them (``name``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

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


def open_image(path: str | Path, budget: int | None = None):
    """``PIL.Image.open`` (lazy) after its declared size is checked; errors name the file."""
    return _open(path, path, budget)


def open_image_bytes(data: bytes, name: str, budget: int | None = None):
    """``open_image`` for an image held in memory; errors name it ``name``."""
    import io

    return _open(io.BytesIO(data), name, budget)


def _open(source, path: str | Path, budget: int | None):
    from PIL import Image, UnidentifiedImageError

    budget = pixel_budget() if budget is None else budget
    # PIL's own bomb check (at twice its limit) would refuse inside open() without saying the size:
    # the header is read with it off and the size checked here, against the budget
    pil_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        img = Image.open(source)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path}: not an image Pillow can read ({type(exc).__name__})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit
    try:
        check_size(path, *img.size, budget=budget)
    except ImageTooLarge:
        img.close()
        raise
    return img


def load_rgb(path: str | Path, budget: int | None = None):
    """The image decoded as RGB, its size checked first."""
    return _rgb(open_image(path, budget), path)


def load_rgb_bytes(data: bytes, name: str, budget: int | None = None):
    """``load_rgb`` for an image held in memory; errors name it ``name``."""
    return _rgb(open_image_bytes(data, name, budget), name)


def _rgb(img, path: str | Path):
    with img:
        try:
            with warnings.catch_warnings():  # the size was checked against our budget, not PIL's
                from PIL import Image

                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                return img.convert("RGB")
        except OSError as exc:
            raise ValueError(f"{path}: the image cannot be decoded ({type(exc).__name__}: {exc})") from None
