import gzip
import struct

import numpy as np
import pytest

from illume_kit.data.fashion_mnist import CLASSES, FashionMNISTDataset, read_idx
from illume_kit.data.params import FASHION_MNIST_DIR, FashionMNISTParams


def write_idx(path, arr):
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture
def fake_root(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 10)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return tmp_path


def test_reads_idx_round_trip(fake_root):
    arr = read_idx(fake_root / "train-images-idx3-ubyte.gz")
    assert arr.shape == (30, 28, 28) and arr.dtype == np.uint8


def test_splits_and_items(fake_root):
    def mk(**kw):
        return FashionMNISTDataset(FashionMNISTParams(root=str(fake_root), val_size=5, image_size=32, **kw))

    tr, va, te = mk(), mk(split="val"), mk(split="test")
    assert (len(tr), len(va), len(te)) == (25, 5, 10)
    assert set(tr.index) & set(va.index) == set()
    item = va[0]
    assert item["image"].shape == (3, 32, 32) and 0 <= item["image"].min() and item["image"].max() <= 1
    assert torch_equal_channels(item["image"])
    assert item["caption"] == CLASSES[item["label"]] == CLASSES[25 % 10]
    assert len(mk(num_samples=7)) == 7


def torch_equal_channels(img):
    return bool((img[0] == img[1]).all() and (img[1] == img[2]).all())


def test_missing_files_error_names_path_and_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist") as e:
        FashionMNISTDataset(FashionMNISTParams(root=str(tmp_path)))
    assert str(tmp_path) in str(e.value)


@pytest.mark.skipif(not __import__("os").path.isdir(FASHION_MNIST_DIR), reason="dataset-fashion-mnist not installed")
def test_real_debian_files():
    ds = FashionMNISTDataset(FashionMNISTParams(split="test", num_samples=20, image_size=28))
    assert len(ds) == 20 and ds[0]["image"].shape == (3, 28, 28) and ds[0]["caption"] in CLASSES
    assert len(FashionMNISTDataset(FashionMNISTParams(split="test"))) == 10_000
