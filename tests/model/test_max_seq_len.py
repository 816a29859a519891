"""``max_seq_len``: training sequences cut to their first N tokens, labels with them (as ILLUME+'s
``model_max_length``), samples left with nothing to learn dropped and counted."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from model_fakes import image, make_model

from illume_kit.model.objective import mllm_loss, mllm_step_fn
from illume_kit.model.sequence import IGNORE, InputImage, Sample, assemble
from illume_kit.model.tasks import edit_sample, t2i_sample, und_sample


def samples():
    return [
        und_sample(image(0), "what color?", "red", more=[("and the shape?", "a circle")]),
        t2i_sample(image(1, 32, 48), "a red circle"),
        edit_sample(image(2, 32, 32), "make it blue", image(3, 32, 32)),
    ]


def first_label(b, row):
    return int((b.labels[row] != IGNORE).nonzero()[0])


def test_cut_sequences_are_the_first_tokens_of_the_whole_ones(model2):
    s = samples()
    full = assemble(model2, s)
    assert full.lengths == [88, 66, 85]  # und, t2i, edit; answers from positions 57, 46 and 68
    L = 70  # und cut in its second turn, edit inside its target image, t2i within the limit
    cut = assemble(model2, s, max_len=L)
    assert cut.dropped == 0 and cut.tasks == full.tasks
    assert max(cut.lengths) <= L and cut.input_ids.shape[1] == L and cut.lengths == [L, 66, L]
    # the same ids, labels, masks and input embeddings (projected features included) as the first L of the whole
    for name in ("input_ids", "labels", "attention_mask", "position_ids"):
        assert torch.equal(getattr(cut, name), getattr(full, name)[:, :L]), name
    assert torch.equal(cut.inputs_embeds, full.inputs_embeds[:, :L])
    # every kept label keeps its loss: the model is causal, so the loss is the whole sequence's CE over
    # the predictions of the first L positions
    logits = model2.backbone(full.inputs_embeds, attention_mask=full.attention_mask, use_cache=False).logits
    want = F.cross_entropy(logits[:, : L - 1].flatten(0, 1), full.labels[:, 1:L].flatten(), ignore_index=IGNORE)
    out = mllm_loss(model2, s, max_seq_len=L)
    torch.testing.assert_close(out["loss"], want, rtol=1e-4, atol=1e-5)
    assert int(out["loss_weight"]) == int((full.labels[:, 1:L] != IGNORE).sum())
    assert float(out["dropped"]) == 0.0
    assert not torch.allclose(out["loss"], mllm_loss(model2, s)["loss"])  # the cut changed what is trained


def test_a_cut_through_an_image_keeps_only_its_slots_and_positions_before_the_cut():
    model = make_model(image_positions=4)  # 2-D positions ride on image tokens: they must stop at the cut too
    # a first turn to learn, then an input image in the second turn: the cut runs through that image
    talk = Sample(["hi"], ["hello"], turns=[([InputImage(image(0)), "what color?"], ["red"])])
    full = assemble(model, [talk])
    assert first_label(full, 0) == 20 and int((full.input_ids[0] == model.layout.soi).nonzero()[0]) == 30
    cut = assemble(model, [talk], max_len=37)
    assert cut.dropped == 0 and torch.equal(cut.inputs_embeds, full.inputs_embeds[:, :37])
    assert torch.equal(cut.labels, full.labels[:, :37])
    # a target image cut after its third token: its positions and labels stop there
    t2i = [t2i_sample(image(1), "a red circle")]
    full = assemble(model, t2i)
    cut = assemble(model, t2i, max_len=51)
    assert torch.equal(cut.inputs_embeds, full.inputs_embeds[:, :51]) and torch.equal(cut.labels, full.labels[:, :51])


def test_a_sequence_within_the_limit_is_unchanged_bitwise(model2):
    s = samples()
    longest = max(assemble(model2, s).lengths)
    plain = mllm_loss(model2, s)
    for limit in (longest, longest + 100):
        out = mllm_loss(model2, s, max_seq_len=limit)
        assert set(out) == set(plain) | {"dropped"} and float(out["dropped"]) == 0.0
        for k in plain:
            assert torch.equal(out[k], plain[k]), k


def test_a_prompt_that_fills_the_limit_drops_its_sample_with_a_counted_warning(model2):
    s = samples()
    full = assemble(model2, s)
    L = first_label(full, 2)  # the edit answer's first token sits at position L: cut away
    assert L == 68 and first_label(full, 0) < L and first_label(full, 1) < L
    cut = assemble(model2, s, max_len=L)
    assert cut.dropped == 1 and cut.tasks == ["und", "t2i"] and cut.labels.shape[0] == 2
    assert torch.equal(cut.labels, full.labels[:2, :L])
    out = mllm_loss(model2, s, max_seq_len=L)
    assert float(out["dropped"]) == pytest.approx(1 / 3) and "gen" in out and "und" in out
    # one more token and the first label is learnt: the sample stays
    assert assemble(model2, s, max_len=L + 1).dropped == 0
    # a batch whose prompts all fill the limit trains nothing: an error naming the option
    with pytest.raises(ValueError, match=r"max_seq_len 40: every sample .* prompt .*raise max_seq_len"):
        mllm_loss(model2, s, max_seq_len=40)

    class Mixer:
        def samples(self, batch, step, offset=0):
            return s

    step = mllm_step_fn(Mixer(), max_seq_len=L)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(4):
            step(model2, None, i)
    shown = [str(w.message) for w in caught]
    # warned at the 1st, 2nd and 4th dropped sample, each message with the count and the option's name
    assert [m.split(": ")[1].split(" ")[0] for m in shown] == ["1", "2", "4"]
    assert all("max_seq_len 68" in m for m in shown)


def test_max_seq_len_is_an_option_with_a_clear_error(capsys):
    from illume_kit.cli.main import main
    from illume_kit.core.options import MllmOptions

    assert MllmOptions().max_seq_len is None
    assert MllmOptions(max_seq_len=2048).max_seq_len == 2048
    code = main(["validate", "recipes/dualvitok_qwen2_mllm_tiny.yaml", "train.stages.1.options.max_seq_len=1"])
    out = "".join(capsys.readouterr())
    assert code == 2 and "max_seq_len" in out and "Traceback" not in out
