"""extend_vocab: layout ids in the tokenizer, resized embeddings, new-row init options, clear errors."""

import pytest
import torch

from illume_kit.core.layout import VocabLayout
from illume_kit.plugins.backbones.hf import GPT2Backbone, LlamaBackbone, Qwen2Backbone
from illume_kit.plugins.backbones.params import GPT2_PRESETS, LLAMA_PRESETS, QWEN2_PRESETS

FAMILIES = [(Qwen2Backbone, QWEN2_PRESETS), (LlamaBackbone, LLAMA_PRESETS), (GPT2Backbone, GPT2_PRESETS)]


def tiny(cls, presets, **overrides):
    torch.manual_seed(0)
    return cls(cls.Params(**{**presets["tiny"], **overrides}))


def layout(text_vocab_size, sizes=(("semantic", 64), ("pixel", 96))):
    return VocabLayout.build(text_vocab_size, list(sizes), resolution_step=64, max_resolution=256)


@pytest.fixture(params=FAMILIES, ids=["qwen2", "llama", "gpt2"])
def family(request):
    return request.param


def test_extend_vocab_puts_tokens_at_the_layout_ids(family):
    b = tiny(*family)
    lay = layout(b.text_vocab_size)
    b.extend_vocab(lay)
    tok = b.text_tokenizer
    for t in lay.special_tokens:
        assert tok.convert_tokens_to_ids(t) == lay.token_id(t)
    assert tok("x<start_of_image><end_of_line>")["input_ids"][-2:] == [lay.soi, lay.eol]
    assert tok.decode([lay.resolution_ids(128, 64)[0]]) == "<height_128>"
    assert b.text_vocab_size == 512  # unchanged: where the structure tokens start
    assert lay.total_size == 512 + 7 + 8 + 160 and b.vocab_size == 704  # 687 rounded up to a multiple of 64
    head = b.model.get_output_embeddings().weight
    assert head.shape[0] == b.vocab_size
    logits = b(b.embed(torch.tensor([[lay.codebook("pixel").stop - 1]]))).logits
    assert logits.shape[-1] == b.vocab_size


def test_no_padding_when_multiple_is_one():
    b = tiny(Qwen2Backbone, QWEN2_PRESETS, pad_vocab_to_multiple_of=1)
    lay = layout(512)
    b.extend_vocab(lay)
    assert b.vocab_size == lay.total_size


def test_mean_init_sets_new_rows_to_the_text_mean_in_embedding_and_untied_head(family):
    b = tiny(*family, new_rows_init="mean", tie_word_embeddings=False)
    emb_mean = b.model.get_input_embeddings().weight[:512].mean(0).detach().clone()
    head_mean = b.model.get_output_embeddings().weight[:512].mean(0).detach().clone()
    old = b.model.get_input_embeddings().weight[:512].detach().clone()
    b.extend_vocab(layout(512))
    emb = b.model.get_input_embeddings().weight
    head = b.model.get_output_embeddings().weight
    assert emb is not head
    torch.testing.assert_close(emb[512:], emb_mean.expand(b.vocab_size - 512, -1))
    torch.testing.assert_close(head[512:], head_mean.expand(b.vocab_size - 512, -1))
    assert torch.equal(emb[:512], old)  # text rows untouched


def test_normal_init_draws_from_initializer_range(family):
    b = tiny(*family, new_rows_init="normal")
    b.extend_vocab(layout(512, (("semantic", 2000),)))
    new = b.model.get_input_embeddings().weight[512:].detach()
    assert abs(new.mean().item()) < 0.002
    assert new.std().item() == pytest.approx(b.model.config.initializer_range, rel=0.05)
    assert new[0].ne(new[1]).any()


def test_initializer_range_sets_the_init_scale_of_weights_and_new_rows(family):
    b = tiny(*family, new_rows_init="normal", initializer_range=0.1)
    assert b.initializer_range == 0.1
    b.extend_vocab(layout(512, (("semantic", 2000),)))
    new = b.model.get_input_embeddings().weight[512:].detach()
    assert new.std().item() == pytest.approx(0.1, rel=0.05)
    mats = [m.weight for m in b.model.modules() if isinstance(m, torch.nn.Linear) and m.weight.numel() > 10_000]
    # GPT-2's Conv1D layers are not nn.Linear; its token and position tables are
    mats = mats or [b.model.transformer.wpe.weight]
    assert all(w.std().item() == pytest.approx(0.1, rel=0.1) for w in mats)


def test_default_init_is_transformers_mean_resizing(family):
    b = tiny(*family, new_rows_init="default")
    w0 = b.model.get_input_embeddings().weight.detach().clone()
    b.extend_vocab(layout(512))
    w = b.model.get_input_embeddings().weight.detach()
    assert torch.equal(w[:512], w0)
    new = w[512:]
    assert torch.isfinite(new).all() and new[0].ne(new[1]).any()  # sampled, not one constant row
    # mean_resizing samples around the old rows' mean: far closer to it than the rows' own spread
    assert (new.mean(0) - w0.mean(0)).norm() < 0.5 * w0.std(0).norm()


def test_tied_head_follows_the_embedding(family):
    b = tiny(*family, new_rows_init="mean")
    b.extend_vocab(layout(512))
    assert b.model.get_output_embeddings().weight.data_ptr() == b.model.get_input_embeddings().weight.data_ptr()


def test_layout_for_another_text_vocab_is_rejected(family):
    b = tiny(*family)
    with pytest.raises(ValueError, match=r"starts its structure tokens at id 600.*has 512 tokens"):
        b.extend_vocab(layout(600))
    assert len(b.text_tokenizer) == 512  # nothing was added


def test_second_extend_same_layout_is_a_noop_other_layout_is_an_error(family):
    b = tiny(*family)
    lay = layout(512)
    b.extend_vocab(lay)
    n = len(b.text_tokenizer)
    b.extend_vocab(lay)
    assert len(b.text_tokenizer) == n
    with pytest.raises(ValueError, match="already extended with a different layout"):
        b.extend_vocab(layout(512, (("semantic", 10),)))


def test_retrain_keeps_size_and_layout_ids(family):
    b = tiny(*family)
    lay = layout(512)
    b.extend_vocab(lay)
    before = b.text_tokenizer.get_vocab()
    text = " the purple hexagon rotates slowly"
    n_before = len(b.text_tokenizer(text)["input_ids"])
    b.retrain_text_tokenizer(["the purple hexagon rotates slowly"] * 30)
    tok = b.text_tokenizer
    assert tok.get_vocab() != before
    assert b.text_vocab_size == 512 and len(tok) == len(before)
    assert tok.convert_tokens_to_ids("<end_of_image>") == lay.eoi
    assert len(tok(text)["input_ids"]) < n_before  # merges learned from the new corpus
