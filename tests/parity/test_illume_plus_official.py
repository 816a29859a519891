"""Parity with the official ILLUME+ code: a small random release converted, then run by illume-kit.

The fixture (tests/fixtures/official/mllm/, from ``scripts/official_fixtures/mllm.py`` run on the
official code, commit in its fixture.json) is a release in the release's own formats: an
``illume_qwen2`` MLLM folder with its extended tokenizer, fine-tuned input encoder and MixedProjector,
and separate DualViTok weights. The official outputs recorded there are compared with what
illume-kit computes from ``illume-kit convert illume-plus-official``'s checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from illume_kit.cli.main import main
from illume_kit.model.checkpoint import load_checkpoint
from illume_kit.model.convert_official import ConversionError, convert_illume_plus, split_official_state
from illume_kit.model.prompts import style_of
from illume_kit.model.sequence import Sample, assemble

FIXTURE = Path(__file__).parents[1] / "fixtures" / "official" / "mllm"
META = json.loads((FIXTURE / "fixture.json").read_text())
PARAMS = json.loads((FIXTURE / "dualvitok_params.json").read_text())
IMAGES = load_file(str(FIXTURE / "images.safetensors"))


def image(name: str) -> torch.Tensor:
    """The fixture image as illume-kit takes it: (3, H, W) in [0, 1] (official: x / 127.5 - 1)."""
    return IMAGES[name][0].float() / 255


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("illume_plus") / "ckpt"
    convert_illume_plus(FIXTURE / "mllm", FIXTURE / "dualvitok.safetensors", out, PARAMS)
    return out


@pytest.fixture(scope="module")
def model(converted):
    return load_checkpoint(converted)[0]


def test_the_conversion_keeps_the_release_vocabulary(model):
    layout, backbone = model.layout, model.backbone
    assert layout.text_vocab_size == META["text_tokens"]
    assert [cb.size for cb in layout.codebooks] == META["codebooks"]
    # every row of the release stays: its spare rows are part of its logits
    rows = json.loads((FIXTURE / "mllm" / "config.json").read_text())["vocab_size"]
    assert backbone.vocab_size == rows > layout.total_size
    tok = backbone.text_tokenizer
    assert tok.convert_tokens_to_ids("<|image_level1_0|>") == layout.codebooks[1].start
    assert model.input_encoder is not None and model.prompt_style.name == "official"
    # the release's generation config travels with the checkpoint (its repetition penalty, its eos)
    released = json.loads((FIXTURE / "mllm" / "generation_config.json").read_text())
    config = backbone.model.generation_config
    assert config.repetition_penalty == released["repetition_penalty"] == 1.05
    assert config.eos_token_id == released["eos_token_id"]


def test_separate_input_encoder_holds_the_mllm_weights_not_the_tokenizers(model):
    ours = model.input_encoder.pixel.conv_in.weight
    assert not torch.equal(ours, model.tokenizer.pixel_encoder.conv_in.weight)
    state = load_file(str(FIXTURE / "mllm" / "model.safetensors"))
    assert torch.equal(ours, state["model.vision_tower.pixel_encoder.conv_in.weight"].float())


@pytest.mark.parametrize("case", range(len(META["understanding"])), ids=lambda i: META["understanding"][i]["image"])
def test_understanding_logits_match_the_official_model(model, case):
    u = META["understanding"][case]
    prompt = style_of(model).und_prompt(image(u["image"]), "what colour is the circle?")
    batch = assemble(model, [Sample(prompt=prompt)])
    ids, official = batch.input_ids[0].tolist(), u["prompt_ids"]
    cut = official.index(-200)  # the official placeholder of the image block
    assert ids[:cut] == official[:cut] and ids[len(ids) - (len(official) - cut - 1) :] == official[cut + 1 :]
    with torch.no_grad():
        logits = model.backbone(
            batch.inputs_embeds, attention_mask=batch.attention_mask, position_ids=batch.position_ids, use_cache=False
        ).logits[0, -u["tail"] :]
    expected = load_file(str(FIXTURE / f"understanding_{u['image']}.safetensors"))["logits"]
    assert logits.shape == expected.shape
    assert (logits - expected).abs().max().item() <= 1e-4


def test_the_shared_encoder_would_not_match(converted):
    """The separate encoder matters: the same weights read through the tokenizer's encoders differ."""
    m = load_checkpoint(converted)[0]
    m.input_encoder = None
    u = META["understanding"][0]
    batch = assemble(m, [Sample(prompt=style_of(m).und_prompt(image(u["image"]), "what colour is the circle?"))])
    with torch.no_grad():
        logits = m.backbone(batch.inputs_embeds, attention_mask=batch.attention_mask, use_cache=False).logits[0]
    expected = load_file(str(FIXTURE / f"understanding_{u['image']}.safetensors"))["logits"]
    assert (logits[-u["tail"] :] - expected).abs().max().item() > 1e-2


def test_split_names_every_release_key():
    state = load_file(str(FIXTURE / "mllm" / "model.safetensors"))
    parts = split_official_state(state)
    assert sum(len(p) for p in parts.values()) == len(state)
    assert set(parts["projectors"]) == {
        f"{c}.{i}.{w}" for c in ("semantic", "pixel") for i in (0, 2) for w in ("weight", "bias")
    }
    with pytest.raises(ConversionError, match="vision tower or projector"):
        split_official_state({"model.mm_projector.extra.weight": torch.zeros(1)})


def test_cli_convert_then_understand_generate_and_edit(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "ckpt"
    argv = ["convert", "illume-plus-official", str(FIXTURE / "mllm"), str(out), "--anchor-base", "256"]
    argv += ["--dualvitok", str(FIXTURE / "dualvitok.safetensors")]
    argv += ["--dualvitok-params", str(FIXTURE / "dualvitok_params.json")]
    assert main(argv) == 0
    assert "converted" in capsys.readouterr().out
    source = tmp_path / "in.png"
    Image.fromarray(IMAGES["wide"][0].permute(1, 2, 0).numpy()).save(source)
    assert main(["understand", str(out), str(source), "what colour is the circle?", "--max-new-tokens", "4"]) == 0
    gen, edited = tmp_path / "gen.png", tmp_path / "edit.png"
    assert main(["generate", str(out), "a red circle", "--size", "192x256", "-o", str(gen)]) == 0
    assert Image.open(gen).size == (256, 192)  # the anchor, (width, height)
    assert main(["edit", str(out), str(source), "make the circle blue", "-o", str(edited)]) == 0
    # a 192x256 source snaps to the 256 table's nearest anchor: its own aspect
    assert Image.open(edited).size == (256, 192)
    err = capsys.readouterr().err
    assert "not a size this checkpoint was trained at" not in err


def test_convert_refuses_what_is_not_a_release(tmp_path, capsys):
    fake = tmp_path / "mllm"
    fake.mkdir()
    (fake / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    out = tmp_path / "out"
    code = main(
        ["convert", "illume-plus-official", str(fake), str(out), "--dualvitok", str(FIXTURE / "dualvitok.safetensors")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "model_type is 'qwen2'" in err and "Traceback" not in err
    assert main(["convert", "illume-plus-official", str(FIXTURE / "mllm"), str(out)]) == 2
    assert "--dualvitok" in capsys.readouterr().err
    (fake / "config.json").write_text("{not json")
    assert main(["convert", "illume-plus-official", str(fake), str(out), "--dualvitok", "x"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert not out.exists()


GENERATIONS = META["generation"]


def _gen_id(i: int) -> str:
    r = GENERATIONS[i]
    return f"{r['task']}-{r['size'][0]}x{r['size'][1]}-{'greedy' if r['greedy'] else 'sampled'}"


@pytest.mark.parametrize("case", range(len(GENERATIONS)), ids=_gen_id)
def test_generated_tokens_match_the_official_generate(model, case):
    """Every id of the official ``generate()`` stream: the image's two levels and all its rows, and what
    follows within the official token budget."""
    from illume_kit.model.official_sampling import official_generate, official_settings

    r = GENERATIONS[case]
    style, size, s = style_of(model), tuple(r["size"]), r["settings"]
    if r["task"] == "generation":
        prompt, uncond, task = style.t2i_prompt(r["caption"], size), style.t2i_prompt(None, size), "generate"
    else:
        src = image(r["image"])
        prompt, uncond, task = (
            style.edit_prompt(src, r["instruction"], size),
            style.edit_prompt(src, None, size),
            "edit",
        )
    settings = official_settings(
        model,
        task,
        cfg=s["cfg"],
        temperature=0.0 if r["greedy"] else s["temperature"],
        top_k=s["top_k"],
        top_p=s["top_p"],
    )
    if r["greedy"]:  # the official greedy run warps its levels with the demo's settings too (argmax-neutral)
        assert settings.do_sample is False
    ids = official_generate(model, prompt, uncond, size, settings, seed=r["seed"])
    expected = r["output_ids"]
    first = next((i for i, (a, b) in enumerate(zip(ids, expected)) if a != b), None)
    assert first is None and len(ids) == len(expected), f"first difference at generated token {first}"
    (h1, w1), (h2, w2) = r["grids"]
    lay = model.layout
    assert ids[:2] == [lay.soi, lay.level_start(0)] and ids.count(lay.level_end(1)) >= 1
