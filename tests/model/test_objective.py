"""MLLM loss and the trainable groups of the training stages."""

import pytest
import torch
import torch.nn.functional as F
from model_fakes import image, make_model

from illume_kit.model.objective import mllm_loss, trainable_parameters
from illume_kit.model.sequence import IGNORE, assemble
from illume_kit.model.tasks import edit_sample, t2i_sample, und_sample


def samples():
    return [
        und_sample(image(0), "what color?", "red"),
        t2i_sample(image(1, 32, 48), "a red circle"),
        edit_sample(image(2, 32, 32), "make it blue", image(3, 32, 32)),
    ]


def test_loss_is_ce_on_labels_with_task_splits(model2):
    s = samples()
    out = mllm_loss(model2, s)
    b = assemble(model2, s)
    logits = model2.backbone(b.inputs_embeds, attention_mask=b.attention_mask, use_cache=False).logits
    want = F.cross_entropy(logits[:, :-1].flatten(0, 1), b.labels[:, 1:].flatten(), ignore_index=IGNORE)
    torch.testing.assert_close(out["loss"], want, rtol=1e-4, atol=1e-5)
    assert int(out["loss_weight"]) == int((b.labels[:, 1:] != IGNORE).sum())  # the tokens averaged over
    und = F.cross_entropy(logits[0, :-1], b.labels[0, 1:], ignore_index=IGNORE)
    torch.testing.assert_close(out["und"], und, rtol=1e-4, atol=1e-5)
    assert "gen" in out and "und" not in mllm_loss(model2, s[1:])


def test_sample_average_weighs_every_sample_alike(model2):
    s = samples()
    out = mllm_loss(model2, s, average="sample")
    b = assemble(model2, s)
    logits = model2.backbone(b.inputs_embeds, attention_mask=b.attention_mask, use_cache=False).logits
    per_sample = [F.cross_entropy(logits[i, :-1], b.labels[i, 1:], ignore_index=IGNORE) for i in range(len(s))]
    torch.testing.assert_close(out["loss"], torch.stack(per_sample).mean(), rtol=1e-4, atol=1e-5)
    assert int(out["loss_weight"]) == len(s)  # the samples averaged over
    token = mllm_loss(model2, s)["loss"]
    assert not torch.allclose(out["loss"], token)  # the one-word answer now weighs as much as an image
    torch.testing.assert_close(out["und"], per_sample[0], rtol=1e-4, atol=1e-5)  # logging is unchanged
    with pytest.raises(ValueError, match="token, sample"):
        mllm_loss(model2, s, average="square")


def test_groups_freeze_and_new_embedding_rows_only():
    m = make_model()
    params = trainable_parameters(m, ["projectors"])
    assert {id(p) for p in params} == {id(p) for p in m.projectors.parameters()}
    assert not any(p.requires_grad for p in m.backbone.parameters())
    assert not any(p.requires_grad for p in m.tokenizer.parameters())

    params = trainable_parameters(m, ["new_embeddings"])
    emb = m.backbone.model.get_input_embeddings().weight
    assert len(params) == 1 and params[0] is emb  # tied LM head: one tensor
    before = emb.detach().clone()
    opt = torch.optim.SGD(params, lr=1.0)
    mllm_loss(m, samples())["loss"].backward()
    opt.step()
    n = m.layout.text_vocab_size
    assert torch.equal(emb[:n], before[:n])  # text rows untouched although text tokens were in the batch
    assert not torch.equal(emb[n:], before[n:])

    params = trainable_parameters(m, ["backbone"])  # replaces the previous choice: no more row mask
    opt = torch.optim.SGD(params, lr=1.0)
    opt.zero_grad()
    mllm_loss(m, samples())["loss"].backward()
    assert emb.grad[:n].abs().sum() > 0 and all(not p.requires_grad for p in m.projectors.parameters())
    assert len(trainable_parameters(m, ["all"])) == len(list(m.backbone.parameters())) + len(
        list(m.projectors.parameters())
    )
    with pytest.raises(ValueError, match="unknown trainable groups"):
        trainable_parameters(m, ["llm"])


def test_tiny_model_learns_a_repeated_sample_and_reproduces_it():
    """~100 AdamW steps on one T2I + one QA sample; greedy sampling then gives both back exactly."""
    from illume_kit.model.sampler import answer, generate_images
    from illume_kit.model.sequence import encode_images

    m = make_model(hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2)
    m.train()
    img, q = image(7, 32, 48), image(8, 32, 32)
    batch = [t2i_sample(img, "a red circle at the top left"), und_sample(q, "what shape is at the center?", "star")]
    opt = torch.optim.AdamW(trainable_parameters(m, ["all"]), lr=3e-3)
    first = None
    for _step in range(120):
        loss = mllm_loss(m, batch)["loss"]
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.05 * first
    m.eval()
    out = generate_images(m, ["a red circle at the top left"], (32, 48), cfg=1.0, temperature=0.0)[0]
    target = encode_images(m, [img])[0]["codes"]
    assert all(torch.equal(out[k], target[k]) for k in target)
    assert answer(m, [q], ["what shape is at the center?"]) == ["star"]
