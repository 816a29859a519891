"""Task samples from shapes items: templates, CFG dropout rates, seeding, mixing, texts."""

import random

import pytest
import torch

from model_fakes import image
from illume_kit.data.batching import collate
from illume_kit.data.params import ShapesParams
from illume_kit.data.shapes import ShapesDataset
from illume_kit.model.objective import mllm_loss
from illume_kit.model.sequence import Tag, TargetImage
from illume_kit.model.tasks import (EDIT_UNCOND, T2I_UNCOND, TaskMixer, edit_prompt, edit_sample, t2i_prompt,
                                    task_texts, uncollate)


def item(seed=0, edit=True):
    it = {"image": image(seed, 32, 32), "caption": "a small red circle at the top left",
          "qa": [("how many shapes are there?", "one"), ("is there a star?", "no")], "attributes": {}}
    if edit:
        it["edit"] = {"instruction": "make the circle at the top left blue", "image": image(seed + 1, 32, 32)}
    return it


def test_t2i_cfg_dropout_rate_and_unconditional_prompt():
    mixer = TaskMixer({"t2i": 1.0}, cfg_dropout=0.1)
    rng, it = random.Random(0), item()
    samples = [mixer.sample(it, rng) for _ in range(2000)]
    unc = [s for s in samples if s.prompt[0] == T2I_UNCOND]
    assert 0.07 < len(unc) / len(samples) < 0.13
    assert unc[0].prompt == t2i_prompt(None, (32, 32)) == [T2I_UNCOND, Tag(32, 32)]
    cond = next(s for s in samples if s.prompt[0] != T2I_UNCOND)
    assert cond.prompt[-1].endswith(it["caption"]) and cond.task == "t2i"
    assert isinstance(cond.answer[0], TargetImage) and cond.answer[0].image is it["image"]
    assert all(s.prompt[0] == T2I_UNCOND for s in (TaskMixer({"t2i": 1}, 1.0).sample(it, rng) for _ in range(20)))


def test_edit_dropout_becomes_reconstruction():
    it = item()
    s = TaskMixer({"edit": 1.0}, cfg_dropout=1.0).sample(it, random.Random(0))
    assert s.prompt == edit_prompt(it["image"], None) and s.prompt[-1] == EDIT_UNCOND
    assert s.answer[0].image is it["image"]  # target = source, as the reference's reconstruction samples
    s = TaskMixer({"edit": 1.0}, cfg_dropout=1.0, edit_uncond_target="target").sample(it, random.Random(0))
    assert s.answer[0].image is it["edit"]["image"]
    s = TaskMixer({"edit": 1.0}, cfg_dropout=0.0).sample(it, random.Random(0))
    assert s.prompt[-1].endswith(it["edit"]["instruction"]) and s.answer[0].image is it["edit"]["image"]
    assert s.prompt[0] == Tag(32, 32) and s.prompt[1] is it["image"]


def test_mixer_weights_seeding_and_unservable_tasks():
    mixer = TaskMixer({"und": 3.0, "t2i": 1.0, "edit": 0.0}, seed=1)
    items = [item(i) for i in range(400)]
    tasks = [s.task for s in mixer.samples(items, step=5)]
    assert set(tasks) == {"und", "t2i"} and 0.65 < tasks.count("und") / len(tasks) < 0.85
    again = [s.task for s in mixer.samples(items, step=5)]
    assert tasks == again and tasks != [s.task for s in mixer.samples(items, step=6)]
    und = next(s for s in mixer.samples(items, 0) if s.task == "und")
    assert und.answer[0] in ("one", "no") and und.prompt[0] is not None
    only_edit = TaskMixer({"edit": 1.0})
    with pytest.raises(ValueError, match="serves none of the weighted tasks"):
        only_edit.sample(item(edit=False), random.Random(0))
    with pytest.raises(ValueError, match="unknown tasks"):
        TaskMixer({"caption": 1.0})


def test_shapes_batch_to_loss_and_texts(model2):
    ds = ShapesDataset(ShapesParams(image_size=32, num_samples=4, supersample=1))
    items = [ds[i] for i in range(4)]
    batch = collate(items)
    back = uncollate(batch)
    assert len(back) == 4 and back[2]["caption"] == items[2]["caption"]
    assert torch.equal(back[1]["edit"]["image"], items[1]["edit"]["image"])
    samples = TaskMixer(cfg_dropout=0.0).samples(batch, step=0)
    out = mllm_loss(model2, samples)
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
    texts = task_texts(items)
    assert any(items[0]["caption"] in t for t in texts)
    assert items[0]["qa"][0][1] in texts and any(items[3]["edit"]["instruction"] in t for t in texts)


def test_multi_turn_understanding_labels_every_answer(model2):
    from illume_kit.model.sequence import IGNORE, assemble

    it = item()
    it["qa"] = [("how many shapes are there?", "one"), ("is there a star?", "no"), ("what size is it?", "small")]
    mixer = TaskMixer({"und": 1.0}, qa_turns=3)
    s = mixer.sample(it, random.Random(0))
    assert len(s.turns) == 2 and {s.answer[0], *(a[0] for _, a in s.turns)} == {"one", "no", "small"}
    single = TaskMixer({"und": 1.0}).sample(it, random.Random(0))
    assert single.turns == []
    batch = assemble(model2, [s, single])
    eos = model2.backbone.text_tokenizer.eos_token_id
    labelled = batch.labels != IGNORE
    # one eos per answer is labelled: 3 in the conversation, 1 in the single-turn sample
    assert ((batch.labels == eos) & labelled).sum(1).tolist() == [3, 1]
    # the follow-up questions are in the sequence, but carry no loss
    tok = model2.backbone.text_tokenizer
    q_ids = tok(s.turns[0][0][0], add_special_tokens=False)["input_ids"]
    row = batch.input_ids[0].tolist()
    start = next(i for i in range(len(row)) if row[i:i + len(q_ids)] == q_ids)
    assert not labelled[0, start:start + len(q_ids)].any()
    with pytest.raises(ValueError, match="qa_turns"):
        TaskMixer(qa_turns=0)


def test_instruction_first_editing_keeps_the_source_a_fixed_distance_before_the_target():
    """``model.edit_order: instruction_first``: however long the instruction, the source image's first
    code sits the same number of tokens before the target's (image_first: it moves with the text)."""
    from model_fakes import make_model

    from illume_kit.model.sequence import assemble

    src, tgt = image(0, 32, 32), image(1, 32, 32)
    gaps = {}
    for order in ("image_first", "instruction_first"):
        m = make_model(image_input="discrete", edit_order=order)
        mixer = TaskMixer({"edit": 1.0}, cfg_dropout=0.0, edit_order=order)
        assert mixer.edit_order == order
        out = []
        for ins in ("make it red", "move the small blue square at the top left to the bottom right", None):
            b = assemble(m, [edit_sample(src, ins, tgt, order)])
            ids = b.input_ids[0].tolist()
            sois = [i for i, t in enumerate(ids) if t == m.layout.soi]
            assert len(sois) == 2
            out.append(sois[1] - sois[0])
        gaps[order] = out
    assert len(set(gaps["instruction_first"])) == 1
    assert len(set(gaps["image_first"])) == 3
    parts = edit_prompt(src, "make it red", order="instruction_first")
    assert isinstance(parts[0], str) and parts[0].endswith("make it red\n") and parts[2] is src
    with pytest.raises(ValueError, match="instruction_first"):
        TaskMixer(edit_order="last")
