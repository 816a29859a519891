"""Aspect-ratio buckets as ILLUME+: ``sizing: official`` serves a caption's image at its nearest anchor
and a conversation's at its own aspect within the pixel bounds, reported by ``size_of`` without
decoding; the trainer's loader groups batches by size, covers each epoch, and resumes exactly."""

import json

import pytest
import torch
from PIL import Image

from illume_kit.data.aspect import anchors
from illume_kit.data.jsonl import CaptionsDataset, ConversationsDataset, EditsDataset
from illume_kit.data.params import CaptionsParams, ConversationsParams, EditsParams
from illume_kit.train.data import SizeBuckets, make_loader, size_buckets

QA = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "a block"}]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("aspect")
    shapes = {"wide": (240, 80), "tall": (60, 180), "square": (100, 100), "huge": (900, 300), "tiny": (12, 9)}
    for name, (w, h) in shapes.items():
        Image.new("RGB", (w, h), (10 * len(name), 90, 200)).save(root / f"{name}.png")
    lines = {
        "captions": [{"image": f"{n}.png", "caption": n} for n in shapes],
        "conversations": [{"image": f"{n}.png", "conversations": QA} for n in shapes],
        "edits": [{"source": "wide.png", "target": "tall.png", "instruction": "turn it"}],
    }
    for kind, recs in lines.items():
        (root / f"{kind}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return root


def build(cls, Params, root, kind, image_size=64, **params):
    return cls(Params(path=str(root / f"{kind}.jsonl"), image_size=image_size, **params))


def test_square_sizing_is_the_default(corpus):
    ds = build(CaptionsDataset, CaptionsParams, corpus, "captions")
    assert {ds.size_of(i) for i in range(len(ds))} == {(64, 64)}
    assert tuple(ds[0]["image"].shape) == (3, 64, 64)
    assert size_buckets(ds, 2, 1, 0) is None  # one size: the uniform order, as before


def test_official_captions_snap_a_wide_image_to_a_wide_anchor(corpus):
    ds = build(CaptionsDataset, CaptionsParams, corpus, "captions", image_size=128, sizing="official")
    table = anchors(128)
    sizes = {ds[i]["caption"]: ds.size_of(i) for i in range(len(ds))}
    assert all(s in table for s in sizes.values())
    assert sizes["wide"] == (80, 240) and sizes["tall"] == (240, 80) and sizes["square"] == (128, 128)
    for i in range(len(ds)):  # size_of (from the header) is the size served
        assert tuple(ds[i]["image"].shape[-2:]) == ds.size_of(i)
    # a small base keeps every side on the stride: 64's 3:1 anchor (40x120) becomes 32x128
    small = build(CaptionsDataset, CaptionsParams, corpus, "captions", sizing="official")
    assert all(h % 16 == 0 and w % 16 == 0 for h, w in map(small.size_of, range(len(small))))
    assert all(tuple(small[i]["image"].shape[-2:]) == small.size_of(i) for i in range(len(small)))


def test_official_conversations_keep_their_aspect_within_the_pixel_bounds(corpus):
    ds = build(ConversationsDataset, ConversationsParams, corpus, "conversations", sizing="official")
    lo, hi = ds.params.pixel_bounds()
    assert (lo, hi) == (16, 96 * 96)
    for i in range(len(ds)):
        h, w = ds.size_of(i)
        assert h % 16 == 0 and w % 16 == 0 and h * w <= hi and tuple(ds[i]["image"].shape[-2:]) == (h, w)
    files = [e["image"] for e in ds.entries]
    for name in ("wide", "huge"):  # 3:1 images scaled down into the bounds, keeping about 3:1
        h, w = ds.size_of(files.index(f"{name}.png"))
        assert w / h == pytest.approx(3, rel=0.15) and h * w <= hi
    assert ds.size_of(files.index("tall.png"))[0] > ds.size_of(files.index("tall.png"))[1]
    roomy = build(
        ConversationsDataset, ConversationsParams, corpus, "conversations", sizing="official", max_pixels=20_000
    )
    assert roomy.size_of(files.index("wide.png")) == (80, 240)  # within the bounds already: its own size
    assert roomy.size_of(files.index("tiny.png")) == (16, 16)  # never below one multiple


def test_official_edits_put_both_images_at_the_sources_anchor(corpus):
    ds = build(EditsDataset, EditsParams, corpus, "edits", image_size=128, sizing="official")
    item = ds[0]
    assert ds.size_of(0) == (80, 240)  # the wide source decides, not the tall target
    assert tuple(item["image"].shape[-2:]) == tuple(item["edit"]["image"].shape[-2:]) == ds.size_of(0)


def test_official_sizing_needs_an_anchor_base():
    with pytest.raises(ValueError, match="multiple of 8"):
        CaptionsParams(path="x", image_size=60, sizing="official")
    with pytest.raises(ValueError, match="min_pixels"):
        ConversationsParams(path="x", sizing="official", min_pixels=10_000, max_pixels=100)


class Sized(torch.utils.data.Dataset):
    """Items that are their index, in one of three sizes."""

    SIZES = ((8, 8), (8, 16), (16, 8))

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def size_of(self, i):
        return self.SIZES[(i * 7) % 3 if i % 5 else 0]

    def __getitem__(self, i):
        return i


def batches(ds, start, steps, batch_size=4, rank=0, world=1, seed=0):
    loader = make_loader(
        ds,
        batch_size=batch_size,
        seed=seed,
        start_step=start,
        steps=steps,
        rank=rank,
        world_size=world,
        collate_fn=list,
    )
    return list(loader)


def test_size_grouped_batches_never_mix_sizes_and_cover_the_epoch():
    ds = Sized(53)
    buckets = size_buckets(ds, 4, 1, 0)
    assert isinstance(buckets, SizeBuckets)
    out = batches(ds, 0, buckets.per_epoch)
    assert all(len(b) == 4 and len({ds.size_of(i) for i in b}) == 1 for b in out)
    assert sorted(set(i for b in out for i in b)) == list(range(53))
    assert out != batches(ds, 0, buckets.per_epoch, seed=1)
    nxt = batches(ds, buckets.per_epoch, 2 * buckets.per_epoch)  # the next epoch: another order, same cover
    assert nxt != out and sorted(set(i for b in nxt for i in b)) == list(range(53))


def test_size_grouped_batches_resume_exactly_and_split_over_ranks():
    ds = Sized(40)
    whole = batches(ds, 0, 30)
    for s in (1, 7, 13, 29):
        assert batches(ds, s, 30) == whole[s:]
    # the same global batch (4 x 2 ranks) whatever the world size splits it into
    two = [batches(ds, 0, 10, batch_size=4, rank=r, world=2) for r in (0, 1)]
    one = batches(ds, 0, 10, batch_size=8)
    assert [a + b for a, b in zip(*two)] == one
