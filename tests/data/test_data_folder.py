import json

import numpy as np
import pytest
from PIL import Image

from illume_kit.data.batching import collate, dataset_sizes, make_loader
from illume_kit.data.folder import ImageFolderDataset
from illume_kit.data.params import ImageFolderParams


def write_images(root, sizes):
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        sub = root / ("sub" if i % 2 else ".")
        sub.mkdir(exist_ok=True)
        ext = "png" if i % 3 else "jpg"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(sub / f"img{i}.{ext}")


def test_square_resize_crop_and_captions(tmp_path):
    write_images(tmp_path, [(40, 30), (30, 50), (64, 64)])
    (tmp_path / "captions.jsonl").write_text(json.dumps({"file": "img0.jpg", "caption": "a noisy picture"}) + "\n")
    ds = ImageFolderDataset(ImageFolderParams(root=str(tmp_path), image_size=32))
    assert len(ds) == 3
    items = [ds[i] for i in range(3)]
    assert all(it["image"].shape == (3, 32, 32) for it in items)
    assert all(0 <= it["image"].min() and it["image"].max() <= 1 for it in items)
    caps = {it["file"]: it["caption"] for it in items}
    assert caps["img0.jpg"] == "a noisy picture" and caps["sub/img1.png"] == ""


def test_keep_aspect_sizes_are_multiples_and_match_items(tmp_path):
    write_images(tmp_path, [(64, 32), (32, 64), (40, 40), (200, 20)])
    ds = ImageFolderDataset(ImageFolderParams(root=str(tmp_path), image_size=32, keep_aspect=True, multiple_of=16))
    sizes = dataset_sizes(ds)
    assert sorted(sizes) == sorted([(32, 64), (64, 32), (32, 32), (32, 64)])  # 200x20 capped at max_aspect 2
    for i, s in enumerate(sizes):
        assert tuple(ds[i]["image"].shape[1:]) == s


def test_missing_or_empty_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataset(ImageFolderParams(root=str(tmp_path / "nope")))
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        ImageFolderDataset(ImageFolderParams(root=str(tmp_path)))


def test_splits_partition_files(tmp_path):
    write_images(tmp_path, [(16, 16)] * 40)

    def files_of(split):
        p = ImageFolderParams(root=str(tmp_path), split=split, val_fraction=0.25, test_fraction=0.25)
        return set(ImageFolderDataset(p).files)

    files = {s: files_of(s) for s in ("train", "val", "test")}
    assert sum(map(len, files.values())) == 40 and len(set().union(*files.values())) == 40
    assert all(len(f) > 0 for f in files.values())
    with pytest.raises(ValueError, match="split 'val'.*empty"):
        ImageFolderDataset(ImageFolderParams(root=str(tmp_path), split="val"))


def test_mixed_sizes_batch_by_size_and_collate_refuses_mixing(tmp_path):
    write_images(tmp_path, [(64, 32)] * 5 + [(32, 64)] * 3 + [(32, 32)] * 4)
    ds = ImageFolderDataset(ImageFolderParams(root=str(tmp_path), image_size=32, keep_aspect=True))
    seen = []
    for batch in make_loader(ds, batch_size=2, seed=3):
        assert batch["image"].shape[0] <= 2 and len(batch["caption"]) == batch["image"].shape[0]
        seen += batch["file"]
    assert sorted(seen) == sorted(ds.files)
    with pytest.raises(ValueError, match="SizeGroupedBatchSampler"):
        other = next(i for i in range(len(ds)) if ds.size_of(i) != ds.size_of(0))
        collate([ds[0], ds[other]])


def test_an_image_past_the_pixel_budget_is_refused_before_decoding(tmp_path, monkeypatch):
    write_images(tmp_path, [(40, 30), (64, 64)])
    monkeypatch.setenv("ILLUME_KIT_MAX_IMAGE_PIXELS", "2000")  # 40x30 fits, 64x64 does not
    ds = ImageFolderDataset(ImageFolderParams(root=str(tmp_path), image_size=32))
    assert ds[0]["image"].shape == (3, 32, 32)
    with pytest.raises(ValueError, match=r"img1\.png: the image is 64x64 = .* past the limit of 0\.002 Mpx"):
        ds[1]
    with pytest.raises(ValueError, match="ILLUME_KIT_MAX_IMAGE_PIXELS"):
        ds.size_of(1)
