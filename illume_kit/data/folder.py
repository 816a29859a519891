"""A folder of images (searched recursively) with optional captions: the user's own data.

Captions come from a JSON-lines file of ``{"file": <path relative to root>, "caption": str}``.
Splits are assigned by the crc32 of each relative path, so adding files never moves old ones
between splits. With ``keep_aspect`` images keep their shape (short side ``image_size``, long side a
multiple of ``multiple_of``), and ``batching.SizeGroupedBatchSampler`` batches them by size.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from illume_kit.data.images import load_rgb, open_image
from illume_kit.data.params import ImageFolderParams
from illume_kit.data.shapes import to_tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _split_of(rel: str, val_fraction: float, test_fraction: float) -> str:
    u = (zlib.crc32(rel.encode()) % 1_000_000) / 1_000_000
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


def target_size(width: int, height: int, p: ImageFolderParams) -> tuple[int, int]:
    """(H, W) an image of this size is served at."""
    if not p.keep_aspect:
        return (p.image_size, p.image_size)
    short, long_ = sorted((width, height))
    new_long = min(long_ * p.image_size / short, p.image_size * p.max_aspect)
    new_long = max(p.multiple_of, int(new_long) // p.multiple_of * p.multiple_of)
    new_short = max(p.multiple_of, p.image_size // p.multiple_of * p.multiple_of)
    return (new_short, new_long) if height <= width else (new_long, new_short)


def resize_crop(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize so the image covers ``size`` (H, W), then center-crop to it."""
    h, w = size
    scale = max(h / img.height, w / img.width)
    rw, rh = max(w, round(img.width * scale)), max(h, round(img.height * scale))
    img = img.resize((rw, rh), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (rw - w) // 2, (rh - h) // 2
    return img.crop((left, top, left + w, top + h))


class ImageFolderDataset(Dataset):
    """Items: ``image`` (3,H,W) in [0,1], ``caption`` ('' when none), ``file`` (relative path)."""

    Params = ImageFolderParams

    def __init__(self, params: ImageFolderParams):
        self.params = p = params
        root = Path(p.root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"image-folder: folder {str(root)!r} does not exist")
        files = sorted(f for f in root.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        if not files:
            raise FileNotFoundError(f"image-folder: no images ({', '.join(IMAGE_SUFFIXES)}) found in {str(root)!r}")
        rels = [f.relative_to(root).as_posix() for f in files]
        chosen = [r for r in rels if _split_of(r, p.val_fraction, p.test_fraction) == p.split]
        if not chosen:
            raise ValueError(
                f"image-folder: split {p.split!r} of {str(root)!r} is empty ({len(rels)} images; "
                f"val_fraction={p.val_fraction}, test_fraction={p.test_fraction})"
            )
        if p.num_samples is not None and p.num_samples < len(chosen):
            keep = np.random.default_rng(p.seed).choice(len(chosen), p.num_samples, replace=False)
            chosen = [chosen[i] for i in sorted(keep)]
        self.root, self.files = root, chosen
        self.captions = self._read_captions(root, p.captions)
        self._sizes: dict[int, tuple[int, int]] = {}

    @staticmethod
    def _read_captions(root: Path, path: str | None) -> dict[str, str]:
        file = Path(path).expanduser() if path else root / "captions.jsonl"
        if not file.exists():
            if path:
                raise FileNotFoundError(f"image-folder: captions file {str(file)!r} does not exist")
            return {}
        out = {}
        for n, line in enumerate(file.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                    out[Path(rec["file"]).as_posix()] = str(rec["caption"])
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"image-folder: {file}:{n}: expected {{'file': ..., 'caption': ...}} ({e})") from e
        return out

    def __len__(self) -> int:
        return len(self.files)

    def size_of(self, index: int) -> tuple[int, int]:
        """(H, W) of item ``index`` without decoding the pixels."""
        if index not in self._sizes:
            with open_image(self.root / self.files[index]) as img:
                self._sizes[index] = target_size(img.width, img.height, self.params)
        return self._sizes[index]

    def task_counts(self) -> dict[str, dict[str, int]]:
        captioned = sum(1 for rel in self.files if self.captions.get(rel))
        return {"image-folder": {"t2i": captioned} if captioned else {}}  # an uncaptioned image serves no task

    def __getitem__(self, index: int) -> dict[str, Any]:
        rel = self.files[index]
        img = load_rgb(self.root / rel)  # its declared size checked against the pixel budget first
        size = target_size(img.width, img.height, self.params)
        self._sizes[index] = size
        image = to_tensor(resize_crop(img, size))
        return {"image": image, "caption": self.captions.get(rel, ""), "file": rel}
