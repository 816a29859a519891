"""``model.input_encoder: separate``: the LLM reads images through its own copy of the encoders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from illume_kit.core.recipe import load_recipe
from illume_kit.model.checkpoint import load_checkpoint, save_checkpoint
from illume_kit.model.compose import ComposeError, compose
from illume_kit.model.sequence import encode_images

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes/dualvitok_qwen2_tiny.yaml"


@pytest.fixture(scope="module")
def separate(tmp_path_factory):
    resolved = load_recipe(RECIPE, ["model.input_encoder=separate"])
    model = compose(resolved).eval()
    return resolved, model, tmp_path_factory.mktemp("sep")


def test_the_copy_starts_as_the_tokenizers_encoders_and_gives_the_same_features(separate):
    _, model, _ = separate
    enc = model.input_encoder
    assert enc is not None and not any(p.requires_grad for p in enc.parameters())
    assert torch.equal(enc.pixel.conv_in.weight, model.tokenizer.pixel_encoder.conv_in.weight)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = enc(x), model.tokenizer.encode(x).features
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert torch.allclose(ours[k], theirs[k], atol=1e-6)


def test_features_come_from_the_copy_and_codes_from_the_tokenizer(separate):
    _, model, _ = separate
    x = torch.rand(3, 64, 64)
    before = encode_images(model, [x])[0]
    with torch.no_grad():
        model.input_encoder.pixel.conv_out.weight.mul_(2.0)
    after = encode_images(model, [x])[0]
    for k in before["codes"]:
        assert torch.equal(before["codes"][k], after["codes"][k])
    assert not torch.allclose(before["features"]["pixel"], after["features"]["pixel"])
    with torch.no_grad():
        model.input_encoder.pixel.conv_out.weight.div_(2.0)


def test_the_copy_round_trips_through_a_checkpoint(separate):
    resolved, model, tmp = separate
    with torch.no_grad():
        model.input_encoder.pixel.conv_in.bias.add_(0.5)
    folder = save_checkpoint(model, resolved, tmp / "ckpt")
    assert (folder / "input_encoder" / "model.safetensors").is_file()
    loaded, _ = load_checkpoint(folder)
    assert torch.equal(loaded.input_encoder.pixel.conv_in.bias, model.input_encoder.pixel.conv_in.bias)
    assert not torch.equal(loaded.input_encoder.pixel.conv_in.bias, loaded.tokenizer.pixel_encoder.conv_in.bias)


def test_shared_is_the_default_and_holds_no_copy():
    model = compose(load_recipe(RECIPE)).eval()
    assert model.input_encoder is None


def test_a_tokenizer_without_a_copyable_encoder_is_refused():
    resolved = load_recipe(RECIPE, ["tokenizer.name=vqgan", "tokenizer.preset=tiny", "model.input_encoder=separate"])
    with pytest.raises(ComposeError, match="input_encoder 'separate'.*use 'shared'"):
        compose(resolved)


# ------------------------------------------------------------------ the trainable group


@pytest.fixture()
def fresh():
    return compose(load_recipe(RECIPE, ["model.input_encoder=separate"])).train()


def und_batch():
    from illume_kit.model.tasks import und_sample

    return [
        und_sample(torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(i)), "what?", "red") for i in (0, 1)
    ]


def test_the_input_encoder_group_trains_the_copy_only(fresh):
    from illume_kit.model.objective import trainable_parameters

    params = trainable_parameters(fresh, ["input_encoder"])
    assert {id(p) for p in params} == {id(p) for p in fresh.input_encoder.parameters()}
    assert not any(p.requires_grad for p in fresh.tokenizer.parameters())
    # all is the backbone and the projectors: the vision tower trains only when named
    trainable_parameters(fresh, ["all"])
    assert not any(p.requires_grad for p in fresh.input_encoder.parameters())
    shared = compose(load_recipe(RECIPE))
    with pytest.raises(ValueError, match="input_encoder needs model.input_encoder: separate"):
        trainable_parameters(shared, ["input_encoder"])


def test_a_training_input_encoder_gets_gradients_also_through_the_cache(fresh):
    from illume_kit.model.objective import mllm_loss, trainable_parameters
    from illume_kit.model.sequence import EncodeCache

    trainable_parameters(fresh, ["projectors", "input_encoder"])
    # a cache that would keep features: while the encoder trains it holds codes only
    fresh.encode_cache = cache = EncodeCache(keep_features=True)
    for attempt in range(2):  # the second call finds both images' codes cached
        fresh.zero_grad(set_to_none=True)
        mllm_loss(fresh, und_batch())["loss"].backward()
        for name in ("semantic.blocks.0.attn.qkv.weight", "semantic.merger.mlp.0.weight", "pixel.conv_in.weight"):
            grad = fresh.input_encoder.get_parameter(name).grad
            assert grad is not None and grad.abs().sum() > 0, (attempt, name)
        assert all(p.grad is None for p in fresh.tokenizer.parameters())
    assert cache.hits == 2 and all(not e["features"] for e in cache._store.values())
    # a codes-only cache (what the mllm stage sets while the encoder trains) outlives the encoder's updates
    fresh.encode_cache = cache = EncodeCache(keep_features=False)
    mllm_loss(fresh, und_batch())["loss"].backward()
    torch.optim.SGD(fresh.input_encoder.parameters(), lr=0.1).step()
    mllm_loss(fresh, und_batch())
    assert cache.hits == 2 and len(cache) == 2
    # frozen again: features are cached, and a change to the copy's weights empties the cache
    trainable_parameters(fresh, ["projectors"])
    fresh.encode_cache = cache = EncodeCache(keep_features=True)
    with torch.no_grad():
        mllm_loss(fresh, und_batch())
        assert len(cache) == 2 and all(e["features"] for e in cache._store.values())
        fresh.input_encoder.pixel.conv_out.bias.add_(1.0)
        mllm_loss(fresh, und_batch())
    assert cache.hits == 0
