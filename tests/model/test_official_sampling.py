"""The official sampling mode: the token streams ILLUME+'s own generate() + InterleavedLogitsProcessor
wrote (tests/fixtures/official/sampling, by scripts/official_fixtures/sampling.py), reproduced exactly on a
UnifiedModel; its settings, forced structure, eos and budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from illume_kit.core.recipe import RecipeError, load_recipe
from illume_kit.core.schema import ModelOptions
from illume_kit.eval.sampling import task_sampling
from illume_kit.model.compose import assemble as compose_assemble
from illume_kit.model.official_sampling import (
    LevelSampling,
    OfficialSamplingError,
    OfficialSettings,
    first_image,
    official_budget,
    official_generate,
    official_images,
    official_settings,
    stop_ids,
    uncond_tail,
)
from illume_kit.model.sampler import edit_images, generate_images
from illume_kit.model.sequence import Ids, Sample, assemble
from illume_kit.plugins.backbones.hf import Qwen2Backbone
from illume_kit.testing.fakes import FakeTokenizer, level

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "official" / "sampling"
RECORD = json.loads((FIXTURE / "cases.json").read_text())
CASES = RECORD["cases"]
# a small grid for the behaviour tests (the size needs resolution tags: multiples of 64)
SMALL = (64, 128)
SMALL_GRIDS = {"semantic": (2, 3), "pixel": (3, 4)}


class OfficialGrid(FakeTokenizer):
    """The fixture's grids: DualViTok's semantic level maps 256 px to 9 tokens (RESOLUTION_MAPPING)."""

    def grid(self, height, width):
        for case in CASES:
            if tuple(case["size"]) == (height, width):
                return {k: tuple(v) for k, v in case["grids"].items()}
        if (height, width) == SMALL:
            return dict(SMALL_GRIDS)
        raise ValueError(f"no grid for {height}x{width}")


@pytest.fixture(scope="module")
def model():
    tok = OfficialGrid(codebooks=[level("semantic", 64, 4, 28), level("pixel", 192, 4, 16)], multiple=16)
    backbone = Qwen2Backbone(Qwen2Backbone.Params(pretrained=str(FIXTURE / "model")))
    opts = ModelOptions(resolution_step=64, max_resolution=1024, prompt_style="official")
    return compose_assemble(tok, backbone, None, opts).eval()


def settings_of(case, **change) -> OfficialSettings:
    s = case["settings"]
    levels = zip(s["level_temperature"], s["level_top_k"], s["level_top_p"])
    given = dict(
        text=LevelSampling(s["temperature"], s["top_k"], s["top_p"]),
        levels=tuple(LevelSampling(*lv) for lv in levels),
        cfg=s["cfg"],
        do_sample=case["do_sample"],
    )
    return OfficialSettings(**{**given, **change})


def prompts(model, size):
    style = model.prompt_style
    return style.t2i_prompt(RECORD["caption"], size), style.t2i_prompt(None, size)


def test_fixture_is_the_official_layout(model):
    """The stand-in vocabulary is ILLUME+'s layout on a 300-token text vocabulary, 640 logits wide."""
    lay, sid = model.layout, RECORD["special_tokens"]
    assert (lay.soi, lay.eoi, lay.eol) == (sid["start_of_image"], sid["end_of_image"], sid["end_of_line"])
    assert [lay.level_start(0), lay.level_end(0), lay.level_start(1), lay.level_end(1)] == [
        sid["start_of_level0"],
        sid["end_of_level0"],
        sid["start_of_level1"],
        sid["end_of_level1"],
    ]
    assert model.backbone.vocab_size == RECORD["rows"] == 640
    assert stop_ids(model) == (2, 0)  # <|im_end|>, then the generation config's <|endoftext|>
    assert RECORD["official_commit"] == "51de69d"


@pytest.mark.parametrize("case", CASES, ids=[f"{c['name']}-{c['size'][0]}x{c['size'][1]}" for c in CASES])
def test_official_token_stream_is_reproduced(model, case):
    """Greedy and seeded sampling with CFG, generation and editing settings, square and non-square:
    the prompt, the unconditional prompt and every generated id as the official code wrote them."""
    size = tuple(case["size"])
    cond, uncond = prompts(model, size)
    tags = tuple(model.layout.resolution_ids(*size))
    assert assemble(model, [Sample(cond, [Ids(tags)], eos=False)]).input_ids[0].tolist() == case["prompt_ids"]
    assert assemble(model, [Sample(uncond, [Ids(tags)], eos=False)]).input_ids[0].tolist() == case["uncond_ids"]
    got = official_generate(model, cond, uncond, size, settings_of(case), case["seed"])
    assert got == case["generated_ids"]
    # the stream holds text before the image (the unconditional branch appends it), both levels in
    # full, and ends on eos
    grids = model.tokenizer.grid(*size)
    codes = first_image(model, got, size)
    assert [tuple(codes[k].shape) for k in ("semantic", "pixel")] == [grids["semantic"], grids["pixel"]]
    assert got[0] not in (model.layout.soi,) and got[-1] == 2
    assert case["codes_per_level"] == [codes["semantic"].numel(), codes["pixel"].numel()]
    if case["min_greedy_gap"] is not None:  # no near-tie a kernel difference could flip
        assert case["min_greedy_gap"] > 1e-4


def test_the_official_settings_are_what_the_fixture_ran(model):
    """official_settings gives what the official InferenceConfig gave each case (pixel top-k 3x)."""
    for case in CASES:
        task = "edit" if case["name"] == "editing" else "generate"
        s = official_settings(model, task)
        assert s == settings_of(case, do_sample=True), case["name"]
    assert official_budget([(9, 9), (16, 16)]) == CASES[0]["max_new_tokens"]


def test_rewarp_and_the_repetition_penalty_change_the_stream(model):
    """Both official quirks count: without the double warping the editing draws differ; without
    the repetition penalty the crafted model never leaves its first text token."""
    case = next(c for c in CASES if c["name"] == "editing" and c["size"] == [256, 256])
    size = tuple(case["size"])
    cond, uncond = prompts(model, size)
    once = official_generate(model, cond, uncond, size, settings_of(case, rewarp=False), case["seed"])
    assert once != case["generated_ids"]
    assert once[:2] == case["generated_ids"][:2]  # text steps: nothing to choose
    flat = official_generate(
        model, cond, uncond, size, settings_of(case, repetition_penalty=1.0, max_new_tokens=8), case["seed"]
    )
    assert flat == [case["generated_ids"][0]] * 8


def test_forced_structure_eos_and_budget(model):
    """Rows of exactly w codes, h rows per level, level order, then eos; the budget cuts a stream."""
    cond, uncond = prompts(model, SMALL)
    s = official_settings(model, "generate", top_k=64, temperature=1.5)
    ids = official_generate(model, cond, uncond, SMALL, s, seed=5)
    lay = model.layout
    start = ids.index(lay.soi)
    block = [lay.soi, lay.level_start(0)]
    for name, i in (("semantic", 0), ("pixel", 1)):
        h, w = SMALL_GRIDS[name]
        if i:
            block.append(lay.level_start(1))
        cb = lay.codebooks[i]
        for r in range(h):
            row = ids[start + len(block) : start + len(block) + w]
            assert all(cb.start <= t < cb.stop for t in row), (name, r, row)
            block += row + [lay.eol]
        block.append(lay.level_end(i))
    block.append(lay.eoi)
    assert ids[start : start + len(block)] == block
    assert ids[-1] in stop_ids(model) and ids.count(ids[-1]) == 1
    short = official_generate(model, cond, uncond, SMALL, OfficialSettings(max_new_tokens=5, levels=s.levels), 5)
    assert len(short) == 5
    with pytest.raises(OfficialSamplingError, match="no complete image in 5 tokens"):
        first_image(model, short, SMALL)


def test_prompts_are_seeded_one_after_another(model):
    """official_images decodes one prompt at a time, prompt j with seed + j."""
    cond, uncond = prompts(model, SMALL)
    s = official_settings(model, "generate", temperature=2.0, top_k=0)
    both = official_images(model, [cond, cond], [uncond, uncond], [SMALL, SMALL], s, seed=3)
    for j, codes in enumerate(both):
        alone = first_image(model, official_generate(model, cond, uncond, SMALL, s, 3 + j), SMALL)
        assert all(torch.equal(codes[k], alone[k]) for k in codes)
    assert not torch.equal(both[0]["pixel"], both[1]["pixel"])


def test_generate_and_edit_images_dispatch_on_the_mode(model):
    """sampling='official' in generate_images / edit_images runs this mode with the task's settings."""
    cond, uncond = prompts(model, SMALL)
    want = first_image(model, official_generate(model, cond, uncond, SMALL, official_settings(model), 7), SMALL)
    (got,) = generate_images(model, [RECORD["caption"]], SMALL, seed=7, sampling="official")
    assert all(torch.equal(got[k], want[k]) for k in want)
    image = torch.rand(3, *SMALL, generator=torch.Generator().manual_seed(0))
    style = model.prompt_style
    edit = official_settings(model, "edit")
    ids = official_generate(
        model, style.edit_prompt(image, "make it blue"), style.edit_prompt(image, None), SMALL, edit, 2
    )
    (got,) = edit_images(model, [image], ["make it blue"], seed=2, sampling="official")
    assert all(torch.equal(got[k], first_image(model, ids, SMALL)[k]) for k in got)
    with pytest.raises(ValueError, match="unknown sampling mode 'greedy'; modes are structured, official"):
        generate_images(model, ["x"], SMALL, sampling="greedy")


def test_uncond_tail_follows_the_official_rule():
    tags = [10, 11]
    assert uncond_tail(tags, [5, 6]) == [5, 6]  # fewer than three generated: all of them
    assert uncond_tail(tags, [7, 5, 6, 9]) == [5, 6, 9]  # the last three
    assert uncond_tail(tags, [10, 11, 9]) == [9]  # the tags were generated: only the last token
    assert uncond_tail([4, 9], [1, 9]) == []  # the prompt already ends with it


def test_settings_defaults_and_levels(model):
    gen, edit = official_settings(model, "generate"), official_settings(model, "edit")
    assert (gen.text, gen.levels, gen.cfg) == (
        LevelSampling(1.0, 2048, 1.0),
        (LevelSampling(1.0, 2048, 1.0), LevelSampling(1.0, 6144, 1.0)),
        2.0,
    )
    assert (edit.text, edit.levels[1], edit.cfg) == (LevelSampling(0.7, 512, 0.8), LevelSampling(0.7, 1536, 0.8), 1.5)
    assert gen.rewarp and gen.do_sample and gen.repetition_penalty == 1.05
    s = official_settings(model, "generate", temperature={"pixel": 0.5}, top_k={"text": 10, "semantic": 20})
    assert s.text == LevelSampling(1.0, 10, 1.0)
    assert s.levels == (LevelSampling(1.0, 20, 1.0), LevelSampling(0.5, 60, 1.0))
    greedy = official_settings(model, "edit", temperature=0)
    assert not greedy.do_sample and greedy.levels[0].temperature == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -1}, "temperature is -1.0, valid: a number >= 0"),
        ({"top_p": 0}, "top_p is 0.0, valid: a number in (0, 1]"),
        ({"top_k": {"pixel": 1.5}}, "top_k.pixel is 1.5, valid: an integer >= 0"),
        ({"top_k": {"depth": 3}}, "top_k names unknown levels ['depth']; levels are text, semantic, pixel"),
        ({"temperature": "hot"}, "temperature is 'hot', valid: a number"),
        ({"repetition_penalty": 0}, "repetition_penalty is 0.0, valid: a number > 0"),
        ({"max_new_tokens": 0}, "max_new_tokens is 0, valid: an integer >= 1"),
        ({"cfg": -2}, "cfg is -2.0, valid: a number >= 0"),
        ({"rewarp": "yes"}, "rewarp is 'yes', valid: true or false"),
        ({"temperature": {"semantic": 0}}, "temperature.semantic is 0 while the text level samples at 1"),
    ],
)
def test_bad_settings_name_the_key(model, kwargs, message):
    with pytest.raises(OfficialSamplingError) as info:
        official_settings(model, "generate", **kwargs)
    assert str(info.value).startswith("sampling official: ") and message in str(info.value)


def test_guidance_needs_an_unconditional_prompt(model):
    cond, _ = prompts(model, SMALL)
    with pytest.raises(OfficialSamplingError, match="needs an unconditional prompt"):
        official_generate(model, cond, None, SMALL, official_settings(model))


@pytest.mark.parametrize("output_positions", ["slot", "next"])
def test_image_position_embeddings_ride_on_the_fed_codes(monkeypatch, output_positions):
    """A model trained with model.image_positions gets the row/column embedding of each generated code
    when it is fed (output_positions slot: the code's own; next: the code the token predicts)."""
    from model_fakes import make_model

    import illume_kit.model.official_sampling as official

    positioned = make_model(image_positions=8, output_positions=output_positions)
    lay = positioned.layout
    grids = positioned.tokenizer.grid(64, 64)
    sem, pix = grids[lay.codebooks[0].name], grids[lay.codebooks[1].name]
    # the random model is made to start an image at once
    head = torch.zeros(positioned.backbone.vocab_size)
    head[lay.soi] = 1e4
    real_forward = type(positioned.backbone).forward

    def biased(self, *a, **k):
        out = real_forward(self, *a, **k)
        out.logits[..., :] += head
        return out

    fed = []
    real_embed = official._Processor.embed

    def spy(self, token, dev):
        fed.append((token, None if self.fed_position is None else self.fed_position.clone()))
        return real_embed(self, token, dev)

    monkeypatch.setattr(type(positioned.backbone), "forward", biased)
    monkeypatch.setattr(official._Processor, "embed", spy)
    s = official_settings(positioned, "generate", cfg=1.0, top_k=0)
    ids = official_generate(positioned, positioned.prompt_style.t2i_prompt("x", (64, 64)), None, (64, 64), s, 0)
    monkeypatch.undo()
    assert first_image(positioned, ids, (64, 64))  # a whole image
    fed = fed[: [t for t, _ in fed].index(lay.eoi)]  # the first image (soi stays likely: a second one follows)
    codes = [(t, p) for t, p in fed if lay.codebooks[0].start <= t < lay.codebooks[-1].stop]
    with_pos = [p for _, p in fed if p is not None]
    assert len(with_pos) == sem[0] * sem[1] + pix[0] * pix[1]  # one per code slot
    projector = positioned.projectors[lay.codebooks[0].name]
    first = projector.positions(torch.tensor([0]), torch.tensor([0]))[0]
    if output_positions == "slot":
        assert all(p is not None for _, p in codes)
        assert torch.equal(codes[0][1], first)
    else:  # the level start predicts code (0, 0); the last code of a row predicts none
        assert torch.equal(next(p for t, p in fed if t == lay.level_start(0)), first)
        assert sum(p is None for _, p in codes) == sem[0] + pix[0]


def test_eval_options_select_the_mode():
    """eval.options.sampling official: the keys left out take the official task defaults; the others
    and the official keys pass through; structured is unchanged."""
    assert task_sampling({}, "edit") == {"cfg": 1.5, "temperature": 1.0, "top_k": None, "top_p": 1.0}
    assert task_sampling({"sampling": "official"}, "edit") == {
        "cfg": 1.5,
        "temperature": 0.7,
        "top_k": 512,
        "top_p": 0.8,
        "sampling": "official",
        "rewarp": True,
        "repetition_penalty": 1.05,
    }
    got = task_sampling({"sampling": "official", "top_k": None, "temperature": 0.5, "rewarp": False}, "generate")
    assert (got["top_k"], got["temperature"], got["top_p"], got["rewarp"]) == (0, 0.5, 1.0, False)


def test_recipe_options_are_checked():
    recipe = ROOT / "recipes" / "dualvitok_qwen2_mllm_tiny.yaml"
    r = load_recipe(recipe, ["eval.options.sampling=official", "eval.options.repetition_penalty=1.1"])
    got = task_sampling(r.recipe.eval.options, "edit")
    # the recipe's own temperature (0.5) is given; top-k and top-p take the editing recommendation
    assert (got["temperature"], got["top_k"], got["top_p"], got["repetition_penalty"]) == (0.5, 512, 0.8, 1.1)
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe, ["eval.options.sampling=greedy", "eval.options.repetition_penalty=0"])
    text = str(info.value)
    assert "eval.options.sampling" in text and "'structured' or 'official'" in text
    assert "eval.options.repetition_penalty: Input should be greater than 0" in text
