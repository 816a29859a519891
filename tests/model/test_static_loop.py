"""The sampler's static decode loop (``cache: static``, ``compile``): the dynamic loop's tokens for a
fixed seed, at fixed shapes."""

import pytest
import torch
from model_fakes import image, make_model

from illume_kit.model import static_loop
from illume_kit.model.prompts import style_of
from illume_kit.model.sampler import StructuredSampler, generate_images, image_template, sampling_table
from illume_kit.model.tasks import t2i_prompt

# rows of different structure: other prompt lengths, other grids (so other template lengths and
# level boundaries), and a row that ends long before the others
PROMPTS, SIZES = ["a red circle", "two blue squares at the bottom", "x"], [(32, 48), (64, 32), (16, 16)]
SETTINGS = [
    dict(cfg=2.0, top_k=10, top_p=0.9),
    dict(cfg=3.0, temperature={"semantic": 0.0}, top_p=0.8),  # greedy on one level, sampled on the other
]


def same(a, b):
    return len(a) == len(b) and all(
        a_.keys() == b_.keys() and all(torch.equal(a_[k], b_[k]) for k in a_) for a_, b_ in zip(a, b)
    )


@pytest.mark.parametrize("kw", SETTINGS, ids=["topk-topp", "per-level"])
@pytest.mark.parametrize("seed", [0, [1, 2, 3]], ids=["batch-seed", "row-seeds"])
def test_static_loop_draws_the_dynamic_loops_images(model2, seed, kw):
    dynamic = generate_images(model2, PROMPTS, SIZES, seed=seed, **kw)
    static = generate_images(model2, PROMPTS, SIZES, seed=seed, cache="static", **kw)
    assert same(dynamic, static)
    other = generate_images(model2, PROMPTS, SIZES, seed=5 if seed == 0 else [5, 6, 7], cache="static", **kw)
    assert not same(static, other)  # the seed matters: the equality above is not of constant outputs


@pytest.mark.parametrize("output_positions", ["slot", "next"])
def test_static_loop_adds_image_position_embeddings_as_the_dynamic_loop(output_positions):
    m = make_model(image_positions=8, output_positions=output_positions)
    with torch.no_grad():  # make the position embeddings matter
        for p in m.projectors.values():
            p.row_embed.normal_(0, 1.0)
            p.col_embed.normal_(0, 1.0)
    kw = dict(cfg=2.0, top_k=10, seed=0)
    assert same(generate_images(m, PROMPTS, SIZES, **kw), generate_images(m, PROMPTS, SIZES, cache="static", **kw))


def test_static_loop_text_rows_stop_at_eos_as_the_dynamic_loop(model2, monkeypatch):
    """Rows in text (understanding answers), greedy and sampled with per-row seeds: same ids, same
    lengths, also when every row ends early and the loop stops at its next end check."""
    monkeypatch.setattr(static_loop, "CHECK_EVERY", 8)
    steps, step = [], static_loop.static_step
    monkeypatch.setattr(static_loop, "static_step", lambda *a: steps.append(1) or step(*a))
    prompts = [style_of(model2).und_prompt(image(i), q) for i, q in enumerate(["what", "what is this shape"])]
    lengths, calls = [], []
    for table, seed in (
        (sampling_table(model2, temperature=0.0), 0),
        (sampling_table(model2), [4, 5]),
        (sampling_table(model2), [3, 4]),
    ):
        outs = [
            StructuredSampler(model2, table, seed=seed, cache=c).run(prompts, [None, None], max_new_tokens=70)
            for c in ("dynamic", "static")
        ]
        assert outs[0] == outs[1]
        lengths.append(sorted(map(len, outs[1])))
        calls.append(len(steps))
        steps.clear()
    assert lengths[1][0] < 70 == lengths[1][1]  # one row stopped at eos, the other ran to its budget
    assert lengths[2][1] < 70 - 8  # both stopped early: the loop ended at the next check, not at its budget
    assert calls[2] == -(-lengths[2][1] // 8) * 8 and calls[0] == calls[1] == 70


def test_static_loop_mixes_a_row_starting_its_image_from_text(model2):
    tmpls = [image_template(model2, (32, 48), None), image_template(model2, (32, 32), 0)]
    prompts = [t2i_prompt("x", (32, 48)), t2i_prompt("y", (32, 32))]
    outs = [
        StructuredSampler(model2, sampling_table(model2), seed=[4, 5], cache=c).run(
            prompts, tmpls, max_new_tokens=10, image_from_text=[True, False]
        )
        for c in ("dynamic", "static")
    ]
    assert outs[0] == outs[1]


def test_compiled_step_traces_as_one_graph_and_keeps_the_tokens(model2, monkeypatch):
    """The step as torch.compile sees it (dynamo, one graph: no break, so no host sync inside), run
    without inductor's code generation so the default suite stays fast (the inductor run is the slow
    test below); a second call of the same shapes reuses the graph, every step of it."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(static_loop.static_step, backend=counter, fullgraph=True, dynamic=False)
    monkeypatch.setitem(static_loop._COMPILED, "default", compiled)
    kw = SETTINGS[0]
    for seed in (0, 4, [1, 2, 3]):
        dynamic = generate_images(model2, PROMPTS, SIZES, seed=seed, **kw)
        assert same(dynamic, generate_images(model2, PROMPTS, SIZES, seed=seed, cache="static", compile=True, **kw))
        if seed == 4:
            assert counter.frame_count == 1  # the first step's logits and every later step's share one layout
    assert counter.frame_count == 2  # per-row seeds draw otherwise: a graph of their own


@pytest.mark.slow  # inductor compiles the step on CPU: about a minute
def test_inductor_compiled_loop_keeps_the_tokens(model2):
    kw = SETTINGS[0]
    dynamic = generate_images(model2, PROMPTS, SIZES, seed=0, **kw)
    assert same(dynamic, generate_images(model2, PROMPTS, SIZES, seed=0, cache="static", compile=True, **kw))


def test_static_cache_is_reused_for_the_same_shape(model2):
    bb = model2.backbone
    a = bb.new_static_cache(2, 40)
    assert bb.new_static_cache(2, 40) is a
    assert bb.new_static_cache(3, 40) is not a and bb.new_static_cache(3, 41) is not a


def test_cache_options_are_checked(model2):
    with pytest.raises(ValueError, match="unknown sampler cache 'paged'; caches are dynamic, static"):
        StructuredSampler(model2, cache="paged")
    with pytest.raises(ValueError, match="compile: true needs cache: static"):
        generate_images(model2, ["x"], (16, 16), compile=True)

    class Plain(torch.nn.Module):  # a backbone without a preallocated cache
        def __init__(self, inner):
            super().__init__()
            self.inner, self.text_tokenizer = inner, inner.text_tokenizer

        def embed(self, ids):
            return self.inner.embed(ids)

        def forward(self, *a, **kw):
            return self.inner(*a, **kw)

    m = make_model()
    m.backbone = Plain(m.backbone)
    with pytest.raises(ValueError, match="cache: static needs a backbone with a preallocated KV cache"):
        generate_images(m, ["x"], (16, 16), cache="static")


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_progress_reports_tokens_as_the_batch_decodes(model2, cache):
    """``progress(tokens, budget)``: increasing, about every 1% of the budget, ending at the whole
    length; the images are the ones drawn without it."""
    calls = []
    got = generate_images(model2, PROMPTS, SIZES, seed=0, cache=cache, progress=lambda t, n: calls.append((t, n)))
    assert same(got, generate_images(model2, PROMPTS, SIZES, seed=0, cache=cache))
    budget = calls[0][1]
    assert len(calls) > 3 and all(n == budget for _, n in calls)
    assert [t for t, _ in calls] == sorted(t for t, _ in calls) and calls[-1] == (budget, budget)
    assert len(calls) <= 102
