"""The training caches stay within their recipe-set budgets, say so when a split will not fit, and never
change what a stage trains."""

import pytest
import torch
from torch.utils.data import IterableDataset

from illume_kit.data.params import ShapesParams
from illume_kit.data.shapes import ShapesDataset
from illume_kit.train.caches import MIB, CachedDataset, cached_split, code_cache, tensor_bytes


def shapes(n: int) -> ShapesDataset:
    return ShapesDataset(ShapesParams(image_size=16, num_samples=n, supersample=1))


def test_tensor_bytes_counts_nested_tensors_only():
    item = {"image": torch.zeros(3, 4, 4), "edit": {"image": torch.zeros(3, 4, 4, dtype=torch.uint8)}, "caption": "x"}
    assert tensor_bytes(item) == 3 * 16 * 4 + 3 * 16
    assert tensor_bytes([torch.zeros(2, dtype=torch.float64), "a", 3]) == 16


def test_a_split_under_budget_is_cached_whole():
    ds = shapes(4)
    data, notice = cached_split(ds, 1.0, "stage 'x'")
    assert notice is None and isinstance(data, CachedDataset) and data.max_bytes == MIB
    first = [data[i] for i in range(len(data))]
    again = [data[i] for i in range(len(data))]
    assert data.misses == 4 and data.hits == 4 and all(a is b for a, b in zip(first, again))
    assert data.bytes == 4 * tensor_bytes(ds[0])
    assert all(torch.equal(a["image"], ds[i]["image"]) for i, a in enumerate(first))


def test_a_split_over_budget_is_not_cached_and_the_notice_names_the_option():
    ds = shapes(4)
    one = tensor_bytes(ds[0])
    data, notice = cached_split(ds, 3.5 * one / MIB, "stage 'mllm'")
    assert data is ds
    assert notice.startswith("stage 'mllm': cache_data is off") and "4 items" in notice
    assert "cache_data_mb=" in notice and "raise cache_data_mb" in notice and "\n" not in notice


def test_stored_bytes_never_pass_the_budget():
    ds = shapes(6)
    one = tensor_bytes(ds[0])
    data = CachedDataset(ds, max_bytes=int(2.5 * one))
    for _ in range(2):
        items = [data[i] for i in range(len(data))]
        assert data.bytes <= data.max_bytes
    assert data.bytes == 2 * one and len(data._items) == 2
    assert data.hits == 2 and data.misses == 10  # the two kept items hit the second time, the rest are rebuilt
    assert all(torch.equal(it["image"], ds[i]["image"]) for i, it in enumerate(items))


class _Stream(IterableDataset):
    def __iter__(self):
        yield {"image": torch.zeros(3, 4, 4)}


def test_a_stream_is_not_cached():
    stream = _Stream()
    data, notice = cached_split(stream, 1024.0, "stage 's'")
    assert data is stream and "cache_data is off: the training split streams" in notice
    cache, notice = code_cache(None, stream, True, 1024.0, "stage 's'")
    assert cache is None and "cache_codes is off" in notice


@pytest.fixture(scope="module")
def fsq_model():
    pytest.importorskip("illume_kit_fsq")
    from illume_kit.core.recipe import load_recipe
    from illume_kit.model.compose import compose

    return compose(load_recipe("recipes/examples/fsq_qwen2_tiny.yaml"))


def test_code_cache_is_on_under_budget_and_off_over_it(fsq_model):
    from illume_kit.model.sequence import EncodeCache

    items = [shapes(4)[i] for i in range(4)]
    keep = fsq_model.image_input != "discrete"
    sentinel = object()
    fsq_model.encode_cache = sentinel
    state = torch.get_rng_state()
    cache, notice = code_cache(fsq_model, items, keep, 64.0, "stage 'mllm'")
    assert isinstance(cache, EncodeCache) and notice is None and cache.max_bytes == 64 * MIB
    assert cache.keep_features == keep and len(cache) == 0
    # the estimate encodes one image outside the caches and leaves the random state as it was
    assert fsq_model.encode_cache is sentinel and torch.equal(torch.get_rng_state(), state)
    cache, notice = code_cache(fsq_model, items, keep, 1e-6, "stage 'mllm'")
    assert cache is None
    n_images = sum(1 + ("edit" in it) for it in items[:1]) * len(items)
    assert notice.startswith(f"stage 'mllm': cache_codes is off: the split's {n_images} images need about")
    assert "cache_codes_mb=1e-06" in notice and "raise cache_codes_mb" in notice
    fsq_model.encode_cache = None


def test_code_cache_bytes_never_pass_its_budget(fsq_model):
    from illume_kit.model.sequence import EncodeCache, encode_images

    images = [shapes(6)[i]["image"] for i in range(6)]
    fsq_model.encode_cache = probe = EncodeCache()
    encode_images(fsq_model, images[:1])
    one = probe.bytes
    fsq_model.encode_cache = cache = EncodeCache(max_bytes=int(2.5 * one))
    try:
        for _ in range(2):
            encode_images(fsq_model, images)
            assert 0 < cache.bytes <= cache.max_bytes
        assert len(cache) == 2 and cache.hits == 2
    finally:
        fsq_model.encode_cache = None


RECIPE = "recipes/tokenizers/siglip_tiny.yaml"
# 8 items in batches of 4 for 3 steps: the third step meets items again, from the cache when it is on
SMALL = [
    "train.stages.0.steps=3",
    "train.stages.0.batch_size=4",
    "train.stages.0.warmup_steps=0",
    "data.params.num_samples=8",
    "data.params.supersample=1",
]


def teacher_weights(out, *options):
    from safetensors.torch import load_file

    from illume_kit.cli.main import main

    assert main(["train", RECIPE, *SMALL, *options, f"run.output_dir={out}", "--stage", "teacher"]) == 0
    return load_file(str(out / "teacher" / "model.safetensors"))


def test_a_stage_trains_the_same_weights_with_and_without_the_data_cache(tmp_path, capsys):
    cached = teacher_weights(tmp_path / "cached")
    assert "cache_data is off" not in capsys.readouterr().err
    plain = teacher_weights(tmp_path / "plain", "train.stages.0.options.cache_data=false")
    assert "cache_data is off" not in capsys.readouterr().err
    over = teacher_weights(tmp_path / "over", "train.stages.0.options.cache_data_mb=0.1")
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "cache_data is off" in line]
    assert lines == [
        "stage 'teacher': cache_data is off: the training split needs about 384.0 KiB (8 items x 48.0 KiB), "
        "over cache_data_mb=0.1; raise cache_data_mb to cache it"
    ]
    assert cached.keys() == plain.keys() == over.keys() and len(cached) > 0
    assert all(torch.equal(cached[k], plain[k]) and torch.equal(cached[k], over[k]) for k in cached)


def test_mllm_stage_trains_the_same_numbers_with_and_without_the_code_cache(fsq_model):
    """The cache encodes each image alone (``EncodeCache``), the uncached path a batch at once: the codes
    are the same, the continuous features the same up to float rounding."""
    from types import SimpleNamespace

    from illume_kit.model.sequence import EncodeCache
    from illume_kit.train.mllm_stage import stage_setup

    ds = ShapesDataset(ShapesParams(image_size=64, num_samples=4, supersample=1))
    items = [ds[i] for i in range(4)]
    notes: list[str] = []

    def setup(**options):
        stage = SimpleNamespace(
            name="mllm", target="mllm", trainable=None, options={"retrain_text_tokenizer": False, **options}
        )
        runner = SimpleNamespace(
            model=fsq_model,
            images=lambda s: items,
            note_trained=lambda texts, sizes: None,
            recipe=SimpleNamespace(train=SimpleNamespace(stages=[stage]), run=SimpleNamespace(seed=0)),
            callback=SimpleNamespace(message=notes.append),
        )
        return stage_setup(runner, stage)[1]

    step = setup(cache_codes_mb=64)
    cache = fsq_model.encode_cache
    assert isinstance(cache, EncodeCache) and cache.max_bytes == 64 * MIB and notes == []
    first = step(fsq_model, items, 0)["loss"]
    cached = step(fsq_model, items, 0)["loss"]
    assert cache.hits == cache.misses > 0
    step = setup(cache_codes_mb=1e-6)
    assert fsq_model.encode_cache is None and len(notes) == 1 and "raise cache_codes_mb" in notes[0]
    plain = step(fsq_model, items, 0)["loss"]
    assert torch.equal(first, cached)
    torch.testing.assert_close(plain, first, rtol=1e-5, atol=0)
