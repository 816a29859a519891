"""The structured sampler: exact grids over sizes and batch mixes, seeding, guidance, per-level sampling."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from model_fakes import image, make_model

from illume_kit.core.protocols import BackboneOutput
from illume_kit.model.image_tokens import extract_images
from illume_kit.model.sampler import (
    StructuredSampler,
    answer,
    decode_images,
    edit_images,
    filter_logits,
    generate_images,
    guided_logprobs,
    image_template,
    sample_images,
    sampling_table,
)
from illume_kit.model.tasks import t2i_prompt

MODELS = {}


def model(n):
    if n not in MODELS:
        MODELS[n] = make_model(("pixel",) if n == 1 else ("semantic", "pixel"))
    return MODELS[n]


sides = st.sampled_from([16, 32, 48, 64])


@settings(max_examples=8, deadline=None)
@given(
    n=st.sampled_from([1, 2]),
    sizes=st.lists(st.tuples(sides, sides), min_size=1, max_size=3),
    cfg=st.sampled_from([1.0, 3.0]),
    seed=st.integers(0, 3),
)
def test_every_image_has_exactly_the_requested_grid(n, sizes, cfg, seed):
    m = model(n)
    prompts = [f"a shape number {i}" * (i + 1) for i in range(len(sizes))]  # mixed prompt lengths
    out = generate_images(m, prompts, sizes, cfg=cfg, seed=seed, top_k=5)
    for codes, (h, w) in zip(out, sizes):
        grids = m.tokenizer.grid(h, w)
        assert set(codes) == set(grids)
        for cb in m.layout.codebooks:
            assert tuple(codes[cb.name].shape) == grids[cb.name]
            assert 0 <= int(codes[cb.name].min()) and int(codes[cb.name].max()) < cb.size


def test_seeded_and_reproducible(model2):
    kw = dict(cfg=2.0, top_k=10, top_p=0.9)
    a = generate_images(model2, ["x", "yy"], [(32, 32), (48, 16)], seed=3, **kw)
    b = generate_images(model2, ["x", "yy"], [(32, 32), (48, 16)], seed=3, **kw)
    c = generate_images(model2, ["x", "yy"], [(32, 32), (48, 16)], seed=4, **kw)
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)
    assert not all(torch.equal(x[k], y[k]) for x, y in zip(a, c) for k in x)


def test_cfg_one_equals_no_guidance_and_guidance_changes_samples(model2):
    prompts, sizes = ["a red circle", "two blue squares at the bottom"], [(32, 48), (64, 32)]
    plain = generate_images(model2, prompts, sizes, cfg=1.0, seed=0)  # no unconditional rows at all
    # the unconditional rows computed in the same batch and mixed with s = 1 change nothing
    mixed = generate_images(model2, prompts, sizes, cfg=1.0, seed=0, skip_unit_guidance=False)
    assert all(torch.equal(x[k], y[k]) for x, y in zip(plain, mixed) for k in x)
    strong = generate_images(model2, prompts, sizes, cfg=4.0, seed=0)
    assert not all(torch.equal(x[k], y[k]) for x, y in zip(plain, strong) for k in x)
    lc, lu = torch.randn(3, 7), torch.randn(3, 7)
    torch.testing.assert_close(guided_logprobs(lc, lu, 1.0), torch.log_softmax(lc, -1))
    torch.testing.assert_close(guided_logprobs(lc, lu, 0.0), torch.log_softmax(lu, -1))
    torch.testing.assert_close(guided_logprobs(lc, lu, 2.0), 2 * torch.log_softmax(lc, -1) - torch.log_softmax(lu, -1))


def test_rows_are_independent_of_their_batch(model2):
    """Greedy: a row decodes the same alone and next to rows with other prompts and sizes."""
    alone = generate_images(model2, ["a red circle"], [(32, 48)], cfg=2.0, temperature=0.0)[0]
    mixed = generate_images(
        model2,
        ["another prompt, much longer than the first", "a red circle", "z"],
        [(64, 64), (32, 48), (16, 16)],
        cfg=2.0,
        temperature=0.0,
    )[1]
    assert all(torch.equal(alone[k], mixed[k]) for k in alone)


def test_per_level_sampling_and_filters(model2):
    # greedy pixel level, sampled semantic level: only semantic codes depend on the seed
    kw = dict(cfg=1.0, temperature={"semantic": 1.0, "pixel": 0.0})
    runs = [generate_images(model2, ["p"], (64, 64), seed=s, **kw)[0] for s in range(4)]
    greedy = generate_images(model2, ["p"], (64, 64), temperature=0.0, cfg=1.0)[0]
    assert len({tuple(r["semantic"].flatten().tolist()) for r in runs}) > 1
    top1 = generate_images(model2, ["p"], (64, 64), seed=9, top_k=1, cfg=1.0)[0]
    tiny_p = generate_images(model2, ["p"], (64, 64), seed=9, top_p=1e-6, cfg=1.0)[0]
    assert all(torch.equal(greedy[k], top1[k]) and torch.equal(greedy[k], tiny_p[k]) for k in greedy)
    # temperature is applied exactly once; top-k keeps k per row; top-p keeps the smallest prefix
    x = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 3.0, 1.0, 2.0]])
    out = filter_logits(x, torch.tensor([2.0, 1.0]), torch.tensor([0, 2]), torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(out[0], x[0] / 2)
    assert torch.isinf(out[1]).tolist() == [True, False, True, False]
    p = torch.softmax(torch.tensor([[3.0, 2.0, 0.0, -5.0]]), -1)
    out = filter_logits(torch.log(p), torch.tensor([1.0]), torch.tensor([0]), torch.tensor([float(p[0, 0]) + 1e-3]))
    assert torch.isinf(out[0]).tolist() == [False, False, True, True]
    with pytest.raises(KeyError, match="unknown sampling levels"):
        sampling_table(model2, temperature={"texture": 1.0})


@pytest.mark.parametrize("kmax", [5, 40, 200])
def test_top_p_over_the_top_k_values_keeps_what_sorting_the_row_keeps(kmax):
    g = torch.Generator().manual_seed(kmax)
    x = torch.randn(6, 120, generator=g) * 3
    x[1, 10:] = float("-inf")  # fewer allowed ids than k
    x[2] = float("-inf")
    x[2, 7] = 0.5  # one allowed id
    temp = torch.tensor([1.0, 0.7, 1.0, 0.0, 1.3, 1.0])
    top_k = torch.randint(1, kmax + 1, (6,), generator=g)
    top_p = torch.tensor([0.9, 0.5, 0.95, 0.99, 1.0, 0.3])
    want = filter_logits(x, temp, top_k, top_p)
    got = filter_logits(x, temp, top_k, top_p, kmax, True, every_row_top_k=True)
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    torch.testing.assert_close(got, want)
    assert (~torch.isinf(got)).sum(1).tolist() != (~torch.isinf(x)).sum(1).tolist()  # it filtered


def test_editing_understanding_and_decoding(model2):
    srcs = [image(0, 32, 32), image(1, 48, 64)]
    edits = edit_images(model2, srcs, ["make it blue", "remove the star"], cfg=1.5, seed=0)
    assert [tuple(e["pixel"].shape) for e in edits] == [(2, 2), (3, 4)]
    imgs = decode_images(model2, edits)
    assert [tuple(i.shape) for i in imgs] == [(3, 32, 32), (3, 48, 64)]
    texts = answer(model2, srcs, ["what?", "how many shapes are there?"], max_new_tokens=4)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


class _Biased(torch.nn.Module):
    """A backbone wrapper that strongly prefers one id whenever it is legal."""

    def __init__(self, inner, favourite):
        super().__init__()
        self.inner, self.favourite = inner, favourite
        self.text_tokenizer = inner.text_tokenizer

    def embed(self, ids):
        return self.inner.embed(ids)

    def new_cache(self):
        return self.inner.new_cache()

    def forward(self, *a, **kw):
        out = self.inner(*a, **kw)
        logits = out.logits.clone()
        logits[..., self.favourite] += 1e4
        return BackboneOutput(logits, out.past_key_values)


def test_image_started_from_text_follows_its_template_once():
    m = make_model()
    h_tag = m.layout.resolution_ids(32, 48)[0]
    m.backbone = _Biased(m.backbone, h_tag)
    s = StructuredSampler(m, sampling_table(m, temperature=0.0))
    tmpl = image_template(m, (32, 48), eos=None)
    out = s.run([t2i_prompt("x", (32, 48))], [tmpl], max_new_tokens=5, image_from_text=[True])[0]
    assert out[0] == h_tag  # the model chose to start the image
    n = len(tmpl)
    assert len(out) == n + 5  # then the whole template, then text only (the tag is no longer legal)
    (img,) = extract_images(m.layout, out)
    assert {k: tuple(v.shape) for k, v in img.codes.items()} == m.tokenizer.grid(32, 48) and img.size == (32, 48)
    assert all(t < m.layout.text_vocab_size for t in out[n:])


def test_errors(model2):
    with pytest.raises(ValueError, match="no resolution tag for height 144"):
        generate_images(model2, ["x"], (144, 16))
    with pytest.raises(ValueError, match="multiples of 16"):
        generate_images(model2, ["x"], (24, 16))
    with pytest.raises(ValueError, match="needs unconditional prompts"):
        sample_images(model2, [t2i_prompt("x", (16, 16))], None, (16, 16), cfg=2.0)
    with pytest.raises(ValueError, match="got 1 sizes for 2 prompts"):
        generate_images(model2, ["x", "y"], [(16, 16)])


@pytest.mark.parametrize(
    "image_positions,output_positions,level_order",
    [(0, "slot", "coarse_first"), (8, "slot", "coarse_first"), (8, "next", "coarse_first"), (8, "slot", "fine_first")],
    ids=["1d", "2d", "2d-next", "2d-fine-first"],
)
def test_greedy_codes_are_the_argmax_of_a_full_forward_of_the_same_sequence(
    image_positions, output_positions, level_order
):
    """The sampler's cached, step-by-step inputs (embeddings, positions, image position embeddings)
    are exactly what training's ``assemble`` builds: replaying the generated image as a training target
    gives logits whose argmax over each slot's codebook is the code the sampler chose."""
    from illume_kit.model.sequence import TargetImage, assemble
    from illume_kit.model.tasks import t2i_sample

    m = make_model(image_positions=image_positions, output_positions=output_positions, level_order=level_order)
    assert [cb.name for cb in m.layout.codebooks] == (
        ["pixel", "semantic"] if level_order == "fine_first" else ["semantic", "pixel"]
    )
    if image_positions:
        with torch.no_grad():  # make the position embeddings matter
            for p in m.projectors.values():
                p.row_embed.normal_(0, 1.0)
                p.col_embed.normal_(0, 1.0)
    captions, sizes = ["a red circle", "two blue squares"], [(32, 48), (48, 32)]
    codes = generate_images(m, captions, sizes, cfg=1.0, seed=0, temperature=0.0)
    for cap, size, got in zip(captions, sizes, codes):
        sample = t2i_sample(torch.zeros(3, *size), cap)
        sample.answer[:] = [TargetImage(None, codes=got, size=size)]
        b = assemble(m, [sample])
        with torch.no_grad():
            logits = m.backbone(b.inputs_embeds, attention_mask=b.attention_mask, position_ids=b.position_ids).logits[0]
        ids = b.input_ids[0]
        for cb in m.layout.codebooks:
            at = ((ids >= cb.start) & (ids < cb.stop)).nonzero().flatten()
            pred = logits[at - 1, cb.start : cb.stop].argmax(-1)
            assert torch.equal(pred, ids[at] - cb.start), cb.name
