"""The three transformers backbone families: build, forward, KV cache, learning, save/load, errors."""

import time

import pytest
import torch
import torch.nn.functional as F

from illume_kit.core.layout import VocabLayout
from illume_kit.core.protocols import BackboneOutput, LanguageBackbone
from illume_kit.core.registry import import_target
from illume_kit.plugins.backbones.hf import GPT2Backbone, LlamaBackbone, Qwen2Backbone
from illume_kit.plugins.backbones.params import GPT2_PRESETS, LLAMA_PRESETS, QWEN2_PRESETS

FAMILIES = [(Qwen2Backbone, QWEN2_PRESETS), (LlamaBackbone, LLAMA_PRESETS), (GPT2Backbone, GPT2_PRESETS)]
IDS = ["qwen2", "llama", "gpt2"]


def tiny(cls, presets, **overrides):
    torch.manual_seed(0)
    return cls(cls.Params(**{**presets["tiny"], **overrides}))


def layout_for(backbone, sizes=(("semantic", 64), ("pixel", 96))):
    return VocabLayout.build(backbone.text_vocab_size, list(sizes), resolution_step=64, max_resolution=256)


@pytest.fixture(params=FAMILIES, ids=IDS)
def family(request):
    return request.param


def test_tiny_builds_fast_and_satisfies_the_protocol(family):
    cls, presets = family
    t0 = time.perf_counter()
    b = tiny(cls, presets)
    assert time.perf_counter() - t0 < 2.0
    assert isinstance(b, LanguageBackbone)
    assert b.hidden_size == 128 and b.text_vocab_size == 512 and b.vocab_size == 512
    assert len(b.text_tokenizer) == 512
    cfg = b.model.config
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (1, 2, 0)  # inside the small vocab, not 50256
    out = b(b.embed(torch.tensor([[5, 6, 7]])))
    assert isinstance(out, BackboneOutput) and out.logits.shape == (1, 3, 512)


def test_registry_targets_resolve_to_these_classes():
    from importlib import resources

    import yaml

    reg = yaml.safe_load(resources.files("illume_kit").joinpath("registry.yaml").read_text())["backbone"]
    for name, cls in zip(IDS, (Qwen2Backbone, LlamaBackbone, GPT2Backbone)):
        assert import_target(reg[name]["target"]) is cls
        assert import_target(reg[name]["params"]) is cls.Params
        assert "tiny" in import_target(reg[name]["presets"])


def test_kv_cache_step_by_step_matches_full_forward(family):
    b = tiny(*family).eval()
    b.extend_vocab(layout_for(b))
    ids = torch.randint(0, b.vocab_size, (2, 10))
    x = b.embed(ids)
    with torch.no_grad():
        full = b(x, use_cache=False)
        assert full.past_key_values is None
        out = b(x[:, :4])  # prompt, then one token at a time
        steps, cache = [out.logits], out.past_key_values
        for t in range(4, 10):
            out = b(x[:, t : t + 1], past_key_values=cache)
            steps.append(out.logits)
            cache = out.past_key_values
    assert cache.get_seq_length() == 10
    torch.testing.assert_close(torch.cat(steps, 1), full.logits, atol=1e-4, rtol=1e-4)


def test_kv_cache_with_left_padding_mask_and_positions(family):
    """Batched prompts of different lengths (as a CFG sampler builds them) decode like unpadded ones."""
    b = tiny(*family).eval()
    torch.manual_seed(1)
    seq, other = torch.randint(3, 512, (8,)), torch.randint(3, 512, (12,))
    with torch.no_grad():
        ref = b(b.embed(seq[None]), use_cache=False).logits[0]
        # row 0: three pads then seq[:3]; row 1: six real tokens. Then one token per step for each row.
        prompt = torch.stack([torch.cat([torch.zeros(3, dtype=torch.long), seq[:3]]), other[:6]])
        mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1] * 6])
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = b(b.embed(prompt), attention_mask=mask, position_ids=pos, past_key_values=b.new_cache())
        got, cache = [out.logits[0, -1]], out.past_key_values
        for t in range(3, 7):
            mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
            step = torch.stack([seq[t], other[t + 3]])[:, None]
            out = b(
                b.embed(step), attention_mask=mask, position_ids=torch.tensor([[t], [t + 3]]), past_key_values=cache
            )
            got.append(out.logits[0, -1])
            cache = out.past_key_values
    torch.testing.assert_close(torch.stack(got), ref[2:7], atol=1e-4, rtol=1e-4)


def test_static_cache_with_left_padding_decodes_like_unpadded_rows(family):
    """The preallocated cache (the sampler's static loop): the mask covers the whole cache from the
    first step on, and the rows decode as the full forward of the unpadded sequence; a second call of
    the same shape gets the same cache, emptied."""
    from illume_kit.testing.conformance import backbone_capabilities

    b = tiny(*family).eval()
    torch.manual_seed(1)
    seq, other = torch.randint(3, 512, (8,)), torch.randint(3, 512, (12,))
    prompt = torch.stack([torch.cat([torch.zeros(3, dtype=torch.long), seq[:3]]), other[:6]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1] * 6])
    full = torch.cat([mask, torch.ones(2, 4, dtype=torch.long)], 1)
    with torch.no_grad():
        ref = b(b.embed(seq[None]), use_cache=False).logits[0]
        for _ in range(2):
            cache = b.new_static_cache(2, 10)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            out = b(b.embed(prompt), attention_mask=mask, position_ids=pos, past_key_values=cache)
            got = [out.logits[0, -1]]
            for t in range(3, 6):
                step = torch.stack([seq[t], other[t + 3]])[:, None]
                pos = torch.tensor([[t], [t + 3]])
                got.append(b(b.embed(step), attention_mask=full, position_ids=pos, past_key_values=cache).logits[0, -1])
            torch.testing.assert_close(torch.stack(got), ref[2:6], atol=1e-4, rtol=1e-4)
    assert b.new_static_cache(2, 10) is cache
    backbone_capabilities(lambda: tiny(*family))  # the conformance suite's own check agrees


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_static_cache_window_reads_no_position_past_it(family, attn):
    """A 4D mask (the static loop's window) limits attention to its positions: NaN written into the
    cache past the window changes nothing; the same NaN inside a full-length 2D mask's reach does."""
    from illume_kit.testing.conformance import backbone_capabilities

    b = tiny(*family, attn_implementation=attn).eval()
    torch.manual_seed(2)
    seq = torch.randint(3, 512, (2, 7))
    with torch.no_grad():
        ref = b(b.embed(seq), use_cache=False).logits[:, -1]
        got = {}
        for kind in ("4d", "2d"):
            cache = b.new_static_cache(2, 16)
            b(b.embed(seq[:, :6]), attention_mask=torch.ones(2, 6, dtype=torch.long), past_key_values=cache)
            for layer in cache.layers:  # positions 8.. are never written: poison them
                layer.keys[:, :, 8:] = float("nan")
                layer.values[:, :, 8:] = float("nan")
            mask = torch.ones(2, 8 if kind == "4d" else 16, dtype=torch.bool)
            mask[:, 7:] = False  # position 7 lies inside the window but is not filled yet
            mask = mask[:, None, None, :] if kind == "4d" else mask.long()
            pos = torch.full((2, 1), 6)
            got[kind] = b(b.embed(seq[:, 6:]), attention_mask=mask, position_ids=pos, past_key_values=cache).logits[
                :, -1
            ]
    torch.testing.assert_close(got["4d"], ref, atol=1e-4, rtol=1e-4)
    assert got["2d"].isnan().any()  # the poison is reachable without the window
    backbone_capabilities(lambda: tiny(*family, attn_implementation=attn))


def _lm_loss(b, ids):
    logits = b(b.embed(ids)).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def test_adamw_steps_lower_the_loss_on_a_fixed_batch(family):
    b = tiny(*family).train()
    b.extend_vocab(layout_for(b))
    torch.manual_seed(0)
    ids = torch.randint(0, b.vocab_size, (2, 32))
    opt = torch.optim.AdamW(b.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = _lm_loss(b, ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_gradient_checkpointing_gives_the_same_gradients():
    a = tiny(Qwen2Backbone, QWEN2_PRESETS).train()
    b = tiny(Qwen2Backbone, QWEN2_PRESETS, gradient_checkpointing=True).train()
    b.load_state_dict(a.state_dict())
    ids = torch.randint(0, 512, (2, 16))
    _lm_loss(a, ids).backward()
    _lm_loss(b, ids).backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_hidden_states_are_returned_on_request(family):
    b = tiny(*family).eval()
    out = b(b.embed(torch.tensor([[4, 5]])), output_hidden_states=True)
    assert out.hidden_states.shape == (1, 2, 128)
    assert b(b.embed(torch.tensor([[4, 5]]))).hidden_states is None


def test_pretrained_round_trip_gives_identical_logits(family, tmp_path):
    cls, presets = family
    b = tiny(cls, presets).eval()
    b.retrain_text_tokenizer(["a small red circle above a big blue square"] * 20)
    layout = layout_for(b)
    b.extend_vocab(layout)
    with torch.no_grad():  # make the new rows distinguishable from a fresh init
        b.model.get_input_embeddings().weight[layout.text_vocab_size :].normal_()
    b.save_pretrained(tmp_path / "bb")
    assert (tmp_path / "bb" / "model.safetensors").is_file() and (tmp_path / "bb" / "tokenizer.json").is_file()

    back = cls(cls.Params(pretrained=str(tmp_path / "bb"))).eval()  # the `pretrained:` param
    assert back.vocab_layout == layout and back.text_vocab_size == 512 and back.vocab_size == b.vocab_size
    text = "<height_64><width_128> a small red circle<start_of_image>"
    assert back.text_tokenizer(text)["input_ids"] == b.text_tokenizer(text)["input_ids"]
    ids = torch.tensor([[1, 5, layout.soi, layout.codebook("pixel").start + 7, layout.eoi]])
    with torch.no_grad():
        torch.testing.assert_close(back(back.embed(ids)).logits, b(b.embed(ids)).logits, atol=0, rtol=0)
    back.extend_vocab(layout)  # compose calls it again on a reloaded backbone: a no-op
    assert back.vocab_size == b.vocab_size
    with pytest.raises(ValueError, match="scramble"):
        back.retrain_text_tokenizer(["anything"])


def test_missing_pretrained_folder_names_the_path_and_local_only(family, tmp_path):
    cls, _ = family
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError) as e:
        cls(cls.Params(pretrained=str(missing)))
    assert str(missing) in str(e.value) and "local_files_only=True" in str(e.value)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        cls(cls.Params(pretrained=str(tmp_path)))


def test_folder_of_another_family_is_rejected(tmp_path):
    tiny(GPT2Backbone, GPT2_PRESETS).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'gpt2' model but Qwen2Backbone"):
        Qwen2Backbone.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "cls,presets,name,billions",
    [
        (Qwen2Backbone, QWEN2_PRESETS, "qwen2.5-3b", 3.09),
        (Qwen2Backbone, QWEN2_PRESETS, "qwen2.5-7b", 7.62),
        (LlamaBackbone, LLAMA_PRESETS, "llama-3.2-1b", 1.24),
        (GPT2Backbone, GPT2_PRESETS, "gpt2", 0.124),
    ],
)
def test_official_presets_have_the_published_parameter_counts(cls, presets, name, billions):
    config = cls.make_config(cls.Params(**presets[name]))
    with torch.device("meta"):  # shapes only, no memory
        model = cls.model_cls(config)
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, rel=0.005)
