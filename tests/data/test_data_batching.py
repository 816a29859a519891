import torch

from illume_kit.data.batching import SizeGroupedBatchSampler, collate, make_loader
from illume_kit.data.params import ShapesParams
from illume_kit.data.shapes import ShapesDataset

SIZES = [(32, 32)] * 7 + [(32, 64)] * 5 + [(64, 32)] * 4


def test_batches_never_mix_sizes_and_cover_every_index():
    s = SizeGroupedBatchSampler(SIZES, batch_size=3, seed=1)
    batches = list(s)
    assert all(len({SIZES[i] for i in b}) == 1 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(len(SIZES)))
    assert len(s) == len(batches) == 3 + 2 + 2


def test_drop_last_seeded_and_epoch_dependent():
    s = SizeGroupedBatchSampler(SIZES, batch_size=3, seed=1, drop_last=True)
    assert all(len(b) == 3 for b in s) and len(s) == 2 + 1 + 1
    again = SizeGroupedBatchSampler(SIZES, batch_size=3, seed=1, drop_last=True)
    assert list(s) == list(again)
    first = list(s)
    s.set_epoch(1)
    assert list(s) != first


def test_ranks_get_disjoint_equal_shares():
    shards = [list(SizeGroupedBatchSampler(SIZES, 2, seed=0, num_replicas=2, rank=r)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) > 0
    flat = [i for sh in shards for b in sh for i in b]
    assert len(flat) == len(set(flat))


def test_collate_shapes_items_keeps_ground_truth():
    ds = ShapesDataset(ShapesParams(num_samples=8, image_size=32))
    batch = next(iter(make_loader(ds, batch_size=4, shuffle=False)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["edit"]["image"].shape == (4, 3, 32, 32)
    assert len(batch["caption"]) == 4 and isinstance(batch["qa"][0], list)
    assert batch["attributes"][0] == ds.scene(0) and len(batch["edit"]["instruction"]) == 4
    assert torch.equal(batch["image"][1], ds[1]["image"])


def test_collate_numbers_become_tensors():
    out = collate([{"label": 1, "x": torch.zeros(2)}, {"label": 3, "x": torch.ones(2)}])
    assert out["label"].tolist() == [1, 3] and out["x"].shape == (2, 2)
