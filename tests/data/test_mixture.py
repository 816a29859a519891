"""The ``mixture`` dataset: per-part sample counts and weights, deterministic with the seed, parts
validated through the registry with messages naming the part's key, items tagged with their source;
with a streaming part, a seeded weighted interleave whose state resumes it exactly."""

from collections import Counter
from pathlib import Path

import pytest
from torch.utils.data import IterableDataset

from illume_kit.core.plugins import get_registry
from illume_kit.core.recipe import RecipeError, load_recipe
from illume_kit.data.mixture import IndexStream, Mixture, MixtureStream, mixture, plan_counts
from illume_kit.data.params import MixtureParams

ROOT = Path(__file__).parents[2]


def shapes(n, **more):
    return {"name": "shapes", "params": {"num_samples": n, **more}}


def mix(*parts, **params):
    return mixture(MixtureParams(parts=list(parts), image_size=16, **params))


def test_samples_subsample_or_repeat_a_part_and_len_is_their_sum():
    m = mix({**shapes(10), "samples": 25}, {**shapes(10, seed=1), "samples": 4})
    assert isinstance(m, Mixture) and len(m) == 29 and m.counts == [25, 4]
    first = Counter(m.locate(i)[1] for i in range(25))
    assert all(m.locate(i)[0] == 0 for i in range(25))
    assert sorted(first) == list(range(10)) and set(first.values()) == {2, 3}  # two passes + 5 more
    second = [m.locate(i) for i in range(25, 29)]
    assert {j for j, _ in second} == {1} and len({k for _, k in second}) == 4  # a subset, no repeats


def test_a_part_with_neither_samples_nor_weight_is_read_once():
    m = mix(shapes(7), {**shapes(5, seed=3), "samples": 5})
    assert m.counts == [7, 5] and sorted(m.locate(i)[1] for i in range(7)) == list(range(7))


def test_weights_share_num_samples_after_the_parts_with_samples():
    assert mix({**shapes(10), "weight": 3}, {**shapes(10, seed=1), "weight": 1}, num_samples=40).counts == [30, 10]
    m = mix(
        {**shapes(10), "samples": 6}, {**shapes(10, seed=1), "weight": 1}, {**shapes(9), "weight": 2}, num_samples=36
    )
    assert m.counts == [6, 10, 20] and len(m) == 36
    # without num_samples the weighted parts share their own lengths added up
    assert mix({**shapes(10), "weight": 1}, {**shapes(20, seed=1), "weight": 1}).counts == [15, 15]


def test_num_samples_scales_counts_when_no_part_is_weighted():
    assert mix({**shapes(10), "samples": 30}, {**shapes(10, seed=1), "samples": 10}, num_samples=20).counts == [15, 5]


def test_the_index_table_is_a_function_of_the_seed():
    parts = [{**shapes(50), "samples": 20}, {**shapes(50, seed=1), "samples": 70}]
    a, b, c = mix(*parts), mix(*parts), mix(*parts, seed=5)
    table = [a.locate(i) for i in range(len(a))]
    assert table == [b.locate(i) for i in range(len(b))]
    assert table != [c.locate(i) for i in range(len(c))]


def test_items_carry_their_source_and_sizes_are_the_parts():
    m = mix(
        {**shapes(3), "samples": 3}, {**shapes(3, image_size=24, seed=1), "samples": 2}, {**shapes(2), "samples": 2}
    )
    assert m.labels == ["shapes[0]", "shapes[1]", "shapes[2]"]
    assert [m[i]["source"] for i in (0, 3, 5)] == ["shapes[0]", "shapes[1]", "shapes[2]"]
    # image_size of the mixture applies to a part that does not set its own
    assert m.size_of(0) == (16, 16) == tuple(m[0]["image"].shape[-2:])
    assert m.size_of(3) == (24, 24) == tuple(m[3]["image"].shape[-2:])
    item = m[3]
    assert {"caption", "qa", "edit"} <= set(item)


def test_split_applies_to_every_part_and_other_splits_never_repeat():
    m = mix({**shapes(4), "samples": 10}, split="val")
    assert m.datasets[0].params.split == "val" and m.counts == [4]
    own = mix({**shapes(4, split="test"), "samples": 3}, split="val")
    assert own.datasets[0].params.split == "test"


def test_task_counts_are_per_part_in_the_mixtures_counts():
    m = mix({**shapes(10), "samples": 20}, {**shapes(10, edits=False, seed=1), "samples": 5})
    assert m.task_counts() == {
        "shapes[0]": {"und": 20, "t2i": 20, "edit": 20},
        "shapes[1]": {"und": 5, "t2i": 5},
    }


def test_bad_parts_name_the_part_and_what_is_valid():
    with pytest.raises(ValueError, match=r"parts\[1\]\.name: unknown dataset 'shapez'.*available: .*captions.*shapes"):
        mix(shapes(3), {"name": "shapez", "params": {}})
    with pytest.raises(
        ValueError, match=r"parts\[0\]\.params\.gird: unknown key\. Did you mean grid\?.*valid: .*jitter"
    ):
        mix({"name": "shapes", "params": {"gird": 2}})
    with pytest.raises(ValueError, match="sets both samples and weight"):
        MixtureParams(parts=[{**shapes(3), "samples": 2, "weight": 1.0}])
    with pytest.raises(ValueError, match="leaves nothing for the weighted parts"):
        mix({**shapes(3), "samples": 10}, {**shapes(3), "weight": 1}, num_samples=10)


def test_a_recipe_names_a_bad_part_by_its_full_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"extends: [{ROOT / 'tests/fixtures/recipes/jsonl_mllm_tiny.yaml'}]\n"
        "data:\n  name: mixture\n  params:\n    parts:\n"
        "      - {name: shapes, params: {gird: 2}, samples: 4}\n"
        "      - {name: captionz}\n"
    )
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe, registry=get_registry())
    text = str(err.value)
    assert "data.params.parts[0].params.gird: unknown key. Did you mean grid?" in text
    assert "data.params.parts[1].name: unknown dataset 'captionz'" in text and "available:" in text


def test_plan_counts_needs_a_size_for_a_stream_without_samples():
    parts = MixtureParams(parts=[shapes(3), {"name": "captions", "weight": 1.0}]).parts
    with pytest.raises(ValueError, match="'captions' stream.*set the mixture's num_samples"):
        plan_counts(parts, [3, None], None, "train")
    assert plan_counts(parts, [3, None], 10, "train") == [3, 7]
    unsized = MixtureParams(parts=[{"name": "captions"}]).parts
    with pytest.raises(ValueError, match="'captions' streams .*set its samples or weight"):
        plan_counts(unsized, [None], None, "train")


# ---- streaming parts -------------------------------------------------------------------------
class Counting(IterableDataset):
    """A resumable stream of ``n`` numbered items per epoch (the IterableDataset + state_dict protocol)."""

    def __init__(self, name, n):
        self.name, self.n, self.epoch, self.position, self._pending = name, n, 0, 0, None

    def set_epoch(self, epoch):
        self.epoch = epoch

    def state_dict(self):
        return {"position": self.position, "epoch": self.epoch}

    def load_state_dict(self, state):
        self._pending = dict(state)

    def __iter__(self):
        start = 0
        if self._pending is not None:
            start, self.epoch, self._pending = self._pending["position"], self._pending["epoch"], None
        for k in range(start, self.n):
            self.position = k + 1
            yield {"id": f"{self.name}/{self.epoch}/{k}", "caption": "x"}
        self.position = 0


def stream(weights=(3.0, 1.0), seed=0, n=(50, 7), num_samples=None):
    parts = [{"name": "captions", "weight": w} for w in weights]
    params = MixtureParams(parts=parts, seed=seed, num_samples=num_samples)
    return MixtureStream(params, [Counting(f"p{j}", n[j]) for j in range(len(n))], ["a", "b"], list(weights))


def take(it, k):
    return [next(it) for _ in range(k)]


def test_a_stream_interleaves_parts_by_weight_with_the_seed():
    items = take(iter(stream()), 2000)
    share = Counter(it["source"] for it in items)
    assert 0.70 < share["a"] / 2000 < 0.80
    assert [it["id"] for it in items[:50]] == [it["id"] for it in take(iter(stream()), 50)]
    assert [it["id"] for it in items[:50]] != [it["id"] for it in take(iter(stream(seed=1)), 50)]
    # a part that runs out starts its next epoch
    assert {it["id"].split("/")[1] for it in items if it["source"] == "b"} >= {"0", "1", "2"}


def test_a_stream_resumes_exactly_from_its_state():
    whole = [it["id"] for it in take(iter(stream()), 120)]
    first = stream()
    it = iter(first)
    head = [x["id"] for x in take(it, 45)]
    state = first.state_dict()
    assert state["draws"] == 45 and state["parts"][1]["epoch"] >= 1
    again = stream()
    again.load_state_dict(state)
    tail = [x["id"] for x in take(iter(again), 75)]
    assert head + tail == whole


def test_num_samples_bounds_a_stream_and_a_map_part_streams_in_a_seeded_order():
    assert len(list(stream(num_samples=33))) == 33
    from illume_kit.data.params import ShapesParams
    from illume_kit.data.shapes import ShapesDataset

    part = IndexStream(ShapesDataset(ShapesParams(num_samples=6, image_size=8)), seed=0)
    order = [x["caption"] for x in part]
    assert len(order) == 6 and order == [x["caption"] for x in part]
    part.set_epoch(1)
    assert sorted(x["caption"] for x in part) == sorted(order)


def test_a_mixture_with_a_tar_part_streams_resumes_exactly_and_has_a_head(tmp_path):
    """A webdataset part makes the mixture a stream: its head is the same in every process (the stage
    trains its text tokenizer on it) and a StatefulDataLoader with 2 workers resumes it exactly."""
    from illume_kit.data.mixture import MixtureStream, mixture
    from illume_kit.data.params import MixtureParams
    from illume_kit.testing.corpus import write_corpus_forms
    from illume_kit.train.data import first_items, make_stream_loader

    forms = write_corpus_forms(tmp_path, ["jsonl", "webdataset"])
    params = MixtureParams.model_validate(
        {
            "image_size": 32,
            "parts": [
                {
                    "name": "captions",
                    "params": {
                        "format": "webdataset",
                        "path": str(forms["webdataset"]["captions"]),
                        "shuffle_buffer": 8,
                    },
                    "weight": 1,
                },
                {"name": "edits", "params": {"format": "jsonl", "path": str(forms["jsonl"]["edits"])}, "weight": 1},
            ],
        }
    )
    data = mixture(params)
    assert isinstance(data, MixtureStream)
    head = first_items(data, 6)
    assert [it["file"] for it in head] == [it["file"] for it in first_items(mixture(params), 6)]
    assert {it["source"] for it in head} == {"captions", "edits"}

    def files(it, k):
        return [[x["file"] for x in next(it)] for _ in range(k)]

    loader = make_stream_loader(data, batch_size=4, seed=0, num_workers=2, collate_fn=list)
    it = iter(loader)
    files(it, 3)
    state = loader.state_dict()
    rest = files(it, 3)
    again = make_stream_loader(mixture(params), batch_size=4, seed=0, num_workers=2, collate_fn=list)
    again.load_state_dict(state)
    assert files(iter(again), 3) == rest
