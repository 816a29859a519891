"""Fashion-MNIST read straight from its gzipped idx files: 70k real images that exist offline.

Debian's ``dataset-fashion-mnist`` installs them under /usr/share/datasets/fashion-mnist; no
torchvision download path is involved (its md5 list differs from Debian's files anyway). Splits:
``train`` = the official training images minus the last ``val_size``, ``val`` = those last
``val_size``, ``test`` = the official test set. Gray 28x28 -> RGB at ``image_size`` (bicubic).
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from illume_kit.data.params import FashionMNISTParams
from illume_kit.data.shapes import to_tensor

CLASSES: tuple[str, ...] = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: Path) -> np.ndarray:
    """Parse one (optionally gzipped) idx file: big-endian magic, dims, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = data[0] * 256 + data[1], data[2], data[3]
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not a uint8 idx file (magic {data[:4].hex()})")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {dims} values, found {arr.size}")
    return arr.reshape(dims)


class FashionMNISTDataset(Dataset):
    """Items: ``image`` (3,H,W) in [0,1], ``caption`` (class name), ``label`` (int)."""

    Params = FashionMNISTParams

    def __init__(self, params: FashionMNISTParams | None = None):
        self.params = p = params if params is not None else FashionMNISTParams()
        root = Path(p.root)
        images_file, labels_file = (root / f for f in FILES["test" if p.split == "test" else "train"])
        for f in (images_file, labels_file):
            if not f.exists():
                raise FileNotFoundError(
                    f"fashion-mnist: {str(f)!r} not found. Install the Debian package "
                    "(apt-get install dataset-fashion-mnist) or set params.root to a folder with the idx files."
                )
        images, labels = read_idx(images_file), read_idx(labels_file)
        if len(images) != len(labels):
            raise ValueError(f"fashion-mnist: {len(images)} images but {len(labels)} labels in {str(root)!r}")
        index = np.arange(len(images))
        if p.split == "train":
            index = index[: len(images) - p.val_size]
        elif p.split == "val":
            index = index[len(images) - p.val_size :]
        if p.num_samples is not None and p.num_samples < len(index):
            index = np.sort(np.random.default_rng(p.seed).choice(index, p.num_samples, replace=False))
        self.images, self.labels, self.index = images, labels, index

    def __len__(self) -> int:
        return len(self.index)

    def size_of(self, index: int) -> tuple[int, int]:
        return (self.params.image_size, self.params.image_size)

    def task_counts(self) -> dict[str, dict[str, int]]:
        return {"fashion-mnist": {"t2i": len(self)}}  # the class name is the caption

    def __getitem__(self, index: int) -> dict[str, Any]:
        j = int(self.index[index])
        img = Image.fromarray(self.images[j]).convert("RGB")
        if img.size != (self.params.image_size,) * 2:
            img = img.resize((self.params.image_size,) * 2, Image.Resampling.BICUBIC)
        label = int(self.labels[j])
        return {"image": to_tensor(img).clamp_(0, 1), "caption": CLASSES[label], "label": label}
