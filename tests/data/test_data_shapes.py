import random

import pytest
import torch
from pydantic import ValidationError

from illume_kit.data import shapes as S
from illume_kit.data.params import ShapesParams
from illume_kit.data.shapes import ShapesDataset


def ds(**kw):
    return ShapesDataset(ShapesParams(**{"num_samples": 50, **kw}))


def test_item_format_and_range():
    item = ds(image_size=32)[0]
    img = item["image"]
    assert img.dtype == torch.float32 and img.shape == (3, 32, 32)
    assert 0.0 <= img.min() and img.max() <= 1.0
    assert isinstance(item["caption"], str) and item["caption"].startswith("a ")
    assert item["edit"]["image"].shape == (3, 32, 32)
    assert all(isinstance(q, str) and isinstance(a, str) for q, a in item["qa"])


def test_deterministic_per_seed_split_index():
    a, b = ds()[7], ds()[7]
    assert a["caption"] == b["caption"] and torch.equal(a["image"], b["image"]) and a["qa"] == b["qa"]
    assert a["edit"]["instruction"] == b["edit"]["instruction"]
    assert [ds(seed=1)[i]["caption"] for i in range(10)] != [ds()[i]["caption"] for i in range(10)]


def test_splits_do_not_share_captions():
    caps = {}
    for split in ("train", "val", "test"):
        d = ds(split=split, num_samples=300)
        caps[split] = {S.caption_of(d.scene(i)) for i in range(300)}
    assert not caps["train"] & caps["test"] and not caps["train"] & caps["val"] and not caps["val"] & caps["test"]
    assert len(caps["test"]) > 200  # the rejection sampler still yields varied scenes


def test_attributes_are_exact_ground_truth():
    d = ds(grid=3, min_objects=1, max_objects=3)
    for i in range(30):
        sc = d.scene(i)
        objs = sc["objects"]
        assert sc["count"] == len(objs) and 1 <= len(objs) <= 3
        assert len({o["cell"] for o in objs}) == len(objs)  # one object per cell
        for o in objs:
            assert o["shape"] in S.SHAPES and o["color"] in S.COLORS and o["size"] in S.SIZES
            assert o["position"] == S.GRID_POSITIONS[3][o["cell"][0]][o["cell"][1]]
            assert S.describe(o) in S.caption_of(sc)
        qa = dict(S.questions_of(sc, random.Random(0)))
        assert qa["how many shapes are there?"] == S.NUMBER_WORDS[len(objs)]
        for o in objs:
            assert qa[f"what color is the shape at the {o['position']}?"] == o["color"]
            assert qa[f"what shape is at the {o['position']}?"] == o["shape"]


def test_pixels_match_attributes():
    """The centre pixel of a large object's cell has that object's colour (no jitter, no gradient)."""
    sc = {
        "grid": 2,
        "background": "black",
        "shade": 0.0,
        "count": 2,
        "objects": [
            {
                "shape": "square",
                "color": "red",
                "size": "large",
                "position": "top left",
                "cell": (0, 0),
                "offset": (0, 0),
            },
            {
                "shape": "circle",
                "color": "blue",
                "size": "large",
                "position": "bottom right",
                "cell": (1, 1),
                "offset": (0, 0),
            },
        ],
    }
    img = S.to_tensor(S.render(sc, 32)) * 255
    assert torch.allclose(img[:, 8, 8], torch.tensor(S.COLORS["red"], dtype=torch.float32), atol=2)
    assert torch.allclose(img[:, 24, 24], torch.tensor(S.COLORS["blue"], dtype=torch.float32), atol=2)
    assert torch.allclose(img[:, 8, 24], torch.tensor(S.BACKGROUNDS["black"], dtype=torch.float32), atol=2)
    # antialiasing: the circle's rim has values between background and fill
    rim = img[2, 16:, 16:]
    assert ((rim > 40) & (rim < 200)).sum() >= 8


@pytest.mark.parametrize("seed", range(40))
def test_edit_target_differs_by_exactly_the_instruction(seed):
    sc = S.sample_scene(random.Random(seed), 3, 1, 3)
    text, tgt = S.sample_edit(sc, random.Random(seed + 100), 1, 3)
    before = {o["position"]: o for o in sc["objects"]}
    after = {o["position"]: o for o in tgt["objects"]}
    verb = text.split()[0]
    if verb == "make":
        assert len(after) == len(before) and sum(before[p]["color"] != after[p]["color"] for p in before) == 1
        assert text.endswith(next(after[p]["color"] for p in before if before[p]["color"] != after[p]["color"]))
    elif verb == "move":
        assert len(set(before) ^ set(after)) == 2 and text.endswith(next(iter(set(after) - set(before))))
    elif verb == "add":
        (new,) = set(after) - set(before)
        assert text == f"add {S.describe(after[new])}"
    else:
        assert verb == "remove" and len(after) == len(before) - 1
    assert tgt["count"] == len(tgt["objects"]) and sc["count"] == len(sc["objects"])  # source untouched


def test_vocabulary_constants_cover_captions_and_answers():
    d = ds(num_samples=100)
    words = set()
    for i in range(100):
        it = d[i]
        words |= set(it["caption"].split()) | set(it["edit"]["instruction"].split())
        words |= {w for _, a in it["qa"] for w in a.split()}
    known = set(S.SHAPES) | set(S.SIZES) | set(S.COLORS) | {w for p in S.POSITIONS for w in p.split()}
    known |= set(S.NUMBER_WORDS) | {
        "a",
        "at",
        "the",
        "and",
        "make",
        "move",
        "to",
        "add",
        "remove",
        "yes",
        "no",
        "nothing",
    }
    assert words <= known, words - known
    assert len(words) < 50


def test_params_validation():
    assert ShapesParams(grid=2, max_objects=4).max_objects == 4
    with pytest.raises(ValidationError):
        ShapesParams(max_objects=5)
    with pytest.raises(ValidationError, match="min_objects"):
        ShapesParams(min_objects=3, max_objects=2)
    with pytest.raises(ValidationError):
        ShapesParams(colour="red")
    with pytest.raises(IndexError):
        ds(num_samples=3)[3]


def test_scenes_survive_a_json_round_trip():
    import json

    sc = ds().scene(5)
    back = json.loads(json.dumps(sc))
    assert S.caption_of(back) == S.caption_of(sc)
    assert torch.equal(S.to_tensor(S.render(back, 32)), S.to_tensor(S.render(sc, 32)))
    assert S.sample_edit(back, random.Random(1))[0] == S.sample_edit(sc, random.Random(1))[0]


def test_zero_jitter_centres_every_shape_and_keeps_the_scenes():
    jittered = ShapesDataset(ShapesParams(num_samples=40, grid=2, varied_background=False, edits=False))
    centred = ShapesDataset(ShapesParams(num_samples=40, grid=2, varied_background=False, edits=False, jitter=0.0))
    assert [jittered.scene(i) for i in range(40)] == [centred.scene(i) for i in range(40)]  # same draws
    single = {
        "grid": 2,
        "background": "black",
        "shade": 0.0,
        "count": 1,
        "objects": [
            {
                "shape": "square",
                "color": "red",
                "size": "small",
                "position": "top left",
                "cell": (0, 0),
                "offset": (0.5, -0.5),
            }
        ],
    }
    img = S.to_tensor(S.render(single, 64, 4, jitter=0.0))
    lit = img.sum(0) > 0.5
    rows, cols = lit.any(1).nonzero().flatten(), lit.any(0).nonzero().flatten()
    assert (rows.min() + rows.max()) / 2 == pytest.approx(15.5, abs=0.6)  # centred in the 32 px cell
    assert (cols.min() + cols.max()) / 2 == pytest.approx(15.5, abs=0.6)
    other_offset = {**single, "objects": [{**single["objects"][0], "offset": (-0.3, 0.2)}]}
    assert torch.equal(S.to_tensor(S.render(other_offset, 64, 4, jitter=0.0)), img)  # pixels = f(attributes)
    moved = S.to_tensor(S.render(single, 64, 4, jitter=1.0))
    assert not torch.equal(moved, img)
    assert not torch.equal(jittered[0]["image"], centred[0]["image"])
    with pytest.raises(ValidationError, match="jitter"):
        ShapesParams(jitter=1.5)


@pytest.mark.parametrize("grid", [2, 3])
def test_regions_name_what_each_cell_holds(grid):
    d = ds(grid=grid, image_size=48, jitter=0.0, edits=False)
    for i in range(10):
        item = d[i]
        regions, held = item["regions"], {tuple(o["cell"]): o for o in item["attributes"]["objects"]}
        assert len(regions) == grid * grid
        for k, r in enumerate(regions):
            cell = divmod(k, grid)
            x0, y0, x1, y1 = r["box"]
            assert (x0, y0) == (cell[1] / grid, cell[0] / grid)
            assert (x1, y1) == pytest.approx(((cell[1] + 1) / grid, (cell[0] + 1) / grid))
            o = held.get(cell)
            assert r["text"] == (f"a {o['size']} {o['color']} {o['shape']}" if o else "nothing")
            # the box is where the pixels are: an empty cell is background, a held one is not
            px = item["image"][:, round(y0 * 48) : round(y1 * 48), round(x0 * 48) : round(x1 * 48)]
            assert (px.amax() - px.amin() > 0.2) == (o is not None)
