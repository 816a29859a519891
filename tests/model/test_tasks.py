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
from illume_kit.model.tasks import (
    EDIT_UNCOND,
    T2I_UNCOND,
    TaskMixer,
    edit_prompt,
    edit_sample,
    t2i_prompt,
    task_texts,
    uncollate,
)


def item(seed=0, edit=True):
    it = {
        "image": image(seed, 32, 32),
        "caption": "a small red circle at the top left",
        "qa": [("how many shapes are there?", "one"), ("is there a star?", "no")],
        "attributes": {},
    }
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


def _described(sample):
    """A sample as comparable values: tensors by identity (the items' own images), the rest as is."""

    def part(p):
        if isinstance(p, torch.Tensor):
            return ("tensor", id(p))
        if isinstance(p, TargetImage):
            return ("target", id(p.image), id(p.copy_from) if p.copy_from is not None else None)
        return p

    turns = [([part(x) for x in q], [part(x) for x in a]) for q, a in sample.turns]
    return sample.task, [part(p) for p in sample.prompt], [part(p) for p in sample.answer], turns


def test_a_sample_draws_by_its_place_in_the_step_not_by_its_batch():
    mixer = TaskMixer(cfg_dropout=0.3, qa_turns=2, seed=3)
    items = [item(i) for i in range(8)]
    for it in items[::3]:
        it["qa"].append(("what colour is it?", "red"))
    one = [_described(s) for s in mixer.samples(items, step=7)]
    two = [_described(s) for s in mixer.samples(items[:4], 7, offset=0) + mixer.samples(items[4:], 7, offset=4)]
    assert two == one
    assert len({t for t, *_ in one}) > 1  # the draws do vary over the batch
    # the offset is what places a batch: two batches both taken to start the step draw otherwise
    unplaced = [_described(s) for s in mixer.samples(items[:4], 7) + mixer.samples(items[4:], 7)]
    assert unplaced != one
    # the same place at another step, or under another seed, draws from another stream
    assert [_described(s) for s in mixer.samples(items, step=8)] != one
    assert [_described(s) for s in TaskMixer(cfg_dropout=0.3, qa_turns=2, seed=4).samples(items, 7)] != one


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
    start = next(i for i in range(len(row)) if row[i : i + len(q_ids)] == q_ids)
    assert not labelled[0, start : start + len(q_ids)].any()
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


def test_copy_unchanged_takes_the_source_codes_wherever_the_pixels_did_not_change():
    from illume_kit.model.sequence import copy_unchanged

    src = image(0, 64, 64)
    tgt = src.clone()
    tgt[:, 36:44, 5:12] = 1.0  # inside pixel token (2, 0) (stride 16) and semantic token (1, 0) (stride 32)
    codes_src = {"pixel": torch.arange(16).view(4, 4), "semantic": torch.tensor([[0, 1], [2, 3]])}
    codes_tgt = {"pixel": 100 + torch.arange(16).view(4, 4), "semantic": torch.tensor([[10, 11], [12, 13]])}
    out = copy_unchanged(codes_tgt, codes_src, tgt, src)
    want_pixel = codes_src["pixel"].clone()
    want_pixel[2, 0] = 108
    assert torch.equal(out["pixel"], want_pixel)
    assert torch.equal(out["semantic"], torch.tensor([[0, 1], [12, 3]]))
    assert torch.equal(copy_unchanged(codes_tgt, codes_src, src, src)["pixel"], codes_src["pixel"])
    with pytest.raises(ValueError, match="differ in size"):
        copy_unchanged(codes_tgt, codes_src, tgt[:, :32], src)


def test_edit_target_copy_unchanged_makes_the_untouched_part_of_an_edit_a_copy(monkeypatch):
    """A tokenizer whose codes depend on the whole image (as a ViT's or a wide conv's do) re-encodes an
    edited image with new codes everywhere; ``edit_target: copy_unchanged`` trains on the source's codes
    outside the edit, ``encoded`` (ILLUME+) on the re-encoded ones."""
    from model_fakes import make_model

    from illume_kit.core.protocols import TokenizerOutput
    from illume_kit.model.image_tokens import extract_images
    from illume_kit.model.sequence import IGNORE, assemble

    m = make_model(image_input="discrete")
    local = m.tokenizer.encode
    sizes = {cb.name: cb.size for cb in m.tokenizer.codebooks}

    def context_dependent(images):
        out = local(images)
        shift = (images.mean((1, 2, 3)) * 1000).long()[:, None, None]
        return TokenizerOutput(codes={n: (c + shift) % sizes[n] for n, c in out.codes.items()}, features=out.features)

    monkeypatch.setattr(m.tokenizer, "encode", context_dependent)
    src = image(0, 64, 64)
    tgt = src.clone()
    tgt[:, 0:16, 0:16] = 1.0  # only the top-left pixel token (and semantic token) changes
    it = {"image": src, "edit": {"instruction": "make it white", "image": tgt}}
    codes_src = context_dependent(src[None]).codes
    codes_tgt = context_dependent(tgt[None]).codes
    assert not torch.equal(codes_src["pixel"][0, 1:], codes_tgt["pixel"][0, 1:])  # the context moved them
    written = {}
    for target in ("encoded", "copy_unchanged"):
        s = TaskMixer({"edit": 1.0}, cfg_dropout=0.0, edit_target=target).sample(it, random.Random(0))
        b = assemble(m, [s])
        labels = b.labels[0][b.labels[0] != IGNORE].tolist()
        (parsed,) = extract_images(m.layout, labels)
        written[target] = parsed.codes
    assert torch.equal(written["encoded"]["pixel"], codes_tgt["pixel"][0])
    copied = written["copy_unchanged"]["pixel"]
    assert copied[0, 0] == codes_tgt["pixel"][0, 0, 0]
    keep = torch.ones(4, 4, dtype=torch.bool)
    keep[0, 0] = False
    assert torch.equal(copied[keep], codes_src["pixel"][0][keep])
    assert written["copy_unchanged"]["semantic"][0, 0] == codes_tgt["semantic"][0, 0, 0]
    assert torch.equal(written["copy_unchanged"]["semantic"][1:], codes_src["semantic"][0, 1:])
    with pytest.raises(ValueError, match="copy_unchanged"):
        TaskMixer(edit_target="spliced")
