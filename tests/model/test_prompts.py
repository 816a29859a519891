"""Prompt styles (``model.prompt_style``): plain keeps every id, chat_template follows the tokenizer's own
template, official reproduces ILLUME+'s prompt strings; the choice reaches training and inference."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from illume_kit.core.build import ComposeError
from illume_kit.core.recipe import load_recipe
from illume_kit.model.compose import compose
from illume_kit.model.prompts import ChatTemplateStyle, OfficialStyle, PromptStyleError, prompt_style
from illume_kit.model.sequence import Ids, Sample, Tag, assemble
from illume_kit.plugins.backbones.hf import Qwen2Backbone
from illume_kit.plugins.backbones.params import Qwen2Params

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
OFFICIAL = json.loads((FIXTURES / "official" / "prompts.json").read_text())

# a Qwen2-style chat template: a default system turn, <|im_start|>role\n ... <|im_end|>\n
QWEN2_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "Generate an image of a red circle, the content of image is a cat wearing a hat.",
    "Please edit the image according to the instruction: make the circle blue. Remove the square",
    "Reconstruct the image according to the given image. Generate a random image of",
    "what colour is the circle? Describe the image. You are a helpful assistant. system user assistant red",
]


def chat_tokenizer(template: str | None = QWEN2_TEMPLATE) -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE with <|im_start|>/<|im_end|> as special tokens and a Qwen2-style chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=template
    )


@pytest.fixture(scope="module")
def chat_backbone(tmp_path_factory):
    """A pretrained-backbone folder whose tokenizer has the chat tokens and a chat template."""
    folder = tmp_path_factory.mktemp("chat") / "qwen"
    tok = chat_tokenizer()
    torch.manual_seed(0)
    Qwen2Backbone(
        Qwen2Params(
            hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=1, intermediate_size=96, vocab_size=len(tok)
        )
    ).save_pretrained(folder)
    tok.save_pretrained(str(folder))
    return folder


def _recipe(tmp_path, style: str, backbone: Path | None = None, extra: str = ""):
    path = tmp_path / f"{style}.yaml"
    body = (
        "extends: [base/tiny.yaml]\nname: styled\ntokenizer: {name: dualvitok, preset: tiny}\ndetokenizer: {name: vq}\n"
    )
    if backbone is not None:
        body += f"backbone: {{name: qwen2, preset: tiny, params: {{pretrained: {backbone}}}}}\n"
    body += f"model: {{prompt_style: {style}, max_resolution: 1024, resolution_step: 64{extra}}}\n"
    path.write_text(body)
    return load_recipe(str(path))


def _text(model, ids: list[int]) -> str:
    """Decoded ids, each input image block (start .. end of image) shown as ``<image>``."""
    tok, lay = model.backbone.text_tokenizer, model.layout
    out, i = [], 0
    while lay.soi in ids[i:]:
        j = ids.index(lay.soi, i)
        out.append(tok.decode(ids[i:j]))
        out.append("<image>")
        i = ids.index(lay.eoi, j) + 1
    out.append(tok.decode(ids[i:]))
    return "".join(out)


def _prompt_text(model, prompt, head=()) -> str:
    batch = assemble(model, [Sample(list(prompt), [Ids(tuple(head))], eos=False)])
    return _text(model, batch.input_ids[0].tolist())


def _official_ids(model, prompt, head, text: str) -> None:
    """The prompt's ids are the official tokenization of ``text``: each piece between ``<image>`` marks
    tokenized whole (as the official ``tokenizer_image_token`` does), an input image block in each mark."""
    tok, lay = model.backbone.text_tokenizer, model.layout
    ids = assemble(model, [Sample(list(prompt), [Ids(tuple(head))], eos=False)]).input_ids[0].tolist()
    pieces, i = [], 0
    while lay.soi in ids[i:]:
        j = ids.index(lay.soi, i)
        pieces.append(ids[i:j])
        i = ids.index(lay.eoi, j) + 1
    pieces.append(ids[i:])
    assert pieces == [tok(chunk, add_special_tokens=False)["input_ids"] for chunk in text.split("<image>")]


# ---------------------------------------------------------------- plain


def test_plain_keeps_every_id_of_the_shipped_checkpoint():
    """Ids, labels, prompt lengths, templates and sampler outputs as captured before prompt styles existed
    (scripts/plain_prompt_ids.py)."""
    from illume_kit.model.checkpoint import load_checkpoint

    model, _ = load_checkpoint(ROOT / "checkpoints" / "dualvitok_qwen2_mllm_tiny")
    assert model.prompt_style.name == "plain"
    capture = runpy.run_path(str(ROOT / "scripts" / "plain_prompt_ids.py"))["capture"]
    want = json.loads((FIXTURES / "plain_prompt_ids.json").read_text())
    got = json.loads(json.dumps(capture(model)))
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key] == want[key], key


# ---------------------------------------------------------------- chat_template


def test_chat_template_style_wraps_turns_in_the_tokenizers_template(tmp_path, chat_backbone):
    model = compose(_recipe(tmp_path, "chat_template", chat_backbone))
    assert isinstance(model.prompt_style, ChatTemplateStyle)
    tok = model.backbone.text_tokenizer
    image = torch.rand(3, 64, 64)
    sample = Sample(model.prompt_style.und_prompt(image, "what colour is the circle?"), ["red"])
    batch = assemble(model, [sample])
    ids = batch.input_ids[0].tolist()
    want = tok.apply_chat_template(
        [
            {"role": "user", "content": "<image>\nwhat colour is the circle?"},
            {"role": "assistant", "content": "red"},
        ],
        tokenize=False,
    )
    assert _text(model, ids) == want
    # the loss covers the answer and the turn's closing text, nothing of the user turn
    labelled = [t for t in batch.labels[0].tolist() if t != -100]
    assert tok.decode(labelled) == "red<|im_end|>\n"
    assert model.prompt_style.stop_id(tok) == tok.convert_tokens_to_ids("<|im_end|>")
    # a second turn opens without the system text
    two = Sample(sample.prompt, ["red"], turns=[(["where is it?"], ["top left"])])
    text = _text(model, assemble(model, [two]).input_ids[0].tolist())
    assert text == want + "<|im_start|>user\nwhere is it?<|im_end|>\n<|im_start|>assistant\ntop left<|im_end|>\n"


def test_chat_template_is_refused_for_a_tokenizer_without_one(tmp_path):
    """A from-scratch backbone's BPE has no chat template (nor <|im_start|>/<|im_end|> tokens)."""
    with pytest.raises(ComposeError, match="prompt_style 'chat_template' needs a text tokenizer with a chat template"):
        compose(_recipe(tmp_path, "chat_template"))
    with pytest.raises(ComposeError, match=r"'official' needs <\|im_start\|> and <\|im_end\|> as single tokens"):
        compose(_recipe(tmp_path, "official"))
    with pytest.raises(PromptStyleError, match="has none"):
        prompt_style("chat_template", chat_tokenizer(template=None))


# ---------------------------------------------------------------- official


@pytest.fixture(scope="module")
def official_model(tmp_path_factory, chat_backbone):
    return compose(_recipe(tmp_path_factory.mktemp("official"), "official", chat_backbone))


def test_official_fixture_is_from_the_official_commit():
    assert OFFICIAL["official_commit"].startswith("51de69d")
    conv = OFFICIAL["conversation_qwen2"]
    assert OfficialStyle.first == conv["system"] + conv["sep"] + conv["roles"][0]


def test_official_understanding_prompt_is_the_official_text(official_model):
    model, style = official_model, official_model.prompt_style
    assert isinstance(style, OfficialStyle)
    image = torch.rand(3, 64, 64)
    for case in OFFICIAL["understanding"]:
        assert _prompt_text(model, style.und_prompt(image, case["question"])) == case["prompt"]
        _official_ids(model, style.und_prompt(image, case["question"]), (), case["prompt"])


def test_official_generation_prompts_are_the_official_text(official_model):
    """Conditional and unconditional, with the size tag after the assistant prefix (the image's head)."""
    model, style = official_model, official_model.prompt_style
    for case in OFFICIAL["generation"]:
        size = tuple(case["size"])
        tag = model.layout.resolution_ids(*size)
        assert _prompt_text(model, style.t2i_prompt(case["caption"], size), tag) == case["prompt"]
        assert _prompt_text(model, style.t2i_prompt(None, size), tag) == case["uncond"]
        _official_ids(model, style.t2i_prompt(case["caption"], size), tag, case["prompt"])


def test_official_editing_prompts_are_the_official_text(official_model):
    model, style = official_model, official_model.prompt_style
    image = torch.rand(3, 64, 64)
    for case in OFFICIAL["editing"]:
        size = tuple(case["size"])
        tag = model.layout.resolution_ids(*size)
        cond = style.edit_prompt(image, case["instruction"], size)
        assert _prompt_text(model, cond, tag) == case["prompt"]
        assert _prompt_text(model, style.edit_prompt(image, None, size), tag) == case["uncond"]
        _official_ids(model, cond, tag, case["prompt"])


def test_official_answer_ends_with_the_official_turn_end(official_model):
    """As the official training labels it: the answer, <|im_end|> and the newline; decoding stops at <|im_end|>."""
    model = official_model
    tok = model.backbone.text_tokenizer
    batch = assemble(model, [Sample([Tag(64, 64), "hi"], ["red"])])
    labelled = [t for t in batch.labels[0].tolist() if t != -100]
    assert tok.decode(labelled) == "red<|im_end|>\n"
    assert model.prompt_style.stop_id(tok) == tok.convert_tokens_to_ids("<|im_end|>")


def test_official_refuses_instruction_first_edits(tmp_path, chat_backbone):
    with pytest.raises(ComposeError, match="use model.edit_order image_first"):
        compose(_recipe(tmp_path, "official", chat_backbone, ", edit_order: instruction_first"))


# ---------------------------------------------------------------- training and inference


@pytest.mark.parametrize("style", ["official", "chat_template"])
def test_a_styled_model_trains_and_samples_in_its_style(tmp_path, chat_backbone, style):
    """The mllm stage hands the style to its task mixer; the sampler prompts in it too."""
    from illume_kit.data.params import ShapesParams
    from illume_kit.data.shapes import ShapesDataset
    from illume_kit.model.sampler import answer, generate_images
    from illume_kit.train.mllm_stage import stage_setup

    model = compose(_recipe(tmp_path, style, chat_backbone))
    ds = ShapesDataset(ShapesParams(image_size=64, num_samples=4, supersample=1))
    items = [ds[i] for i in range(4)]
    stage = SimpleNamespace(
        name="mllm",
        target="mllm",
        trainable=["projectors", "new_embeddings"],
        options={"retrain_text_tokenizer": False, "cache_codes": False},
    )
    runner = SimpleNamespace(
        model=model,
        images=lambda s: items,
        note_trained=lambda texts, sizes: None,
        recipe=SimpleNamespace(train=SimpleNamespace(stages=[stage]), run=SimpleNamespace(seed=0)),
    )
    model, step_fn, _, _ = stage_setup(runner, stage)
    turns = []
    user_turn = model.prompt_style.user_turn
    model.prompt_style.user_turn = lambda prompt, turn: turns.append(turn) or user_turn(prompt, turn)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(4):
        loss = step_fn(model, items, 0)["loss"]  # the same tasks on the same items each step
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert turns, "the task mixer's samples were not wrapped in the model's prompt style"
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    model.eval()
    turns.clear()
    codes = generate_images(model, ["a red circle"], (64, 64), cfg=2.0, seed=0)
    assert turns and set(codes[0]) == {cb.name for cb in model.layout.codebooks}
    assert isinstance(answer(model, [items[0]["image"]], ["what colour is it?"], max_new_tokens=3)[0], str)


@pytest.mark.parametrize("style", ["official", "chat_template"])
def test_a_checkpoint_keeps_its_prompt_style(tmp_path, chat_backbone, style):
    """The style is a recipe option and the tokenizer (with its chat template) travels with the checkpoint."""
    from illume_kit.model.checkpoint import load_checkpoint, save_checkpoint

    resolved = _recipe(tmp_path, style, chat_backbone)
    model = compose(resolved)
    save_checkpoint(model, resolved, tmp_path / "ck")
    loaded, _ = load_checkpoint(tmp_path / "ck")
    assert loaded.prompt_style.name == style
    image = torch.rand(3, 64, 64)
    sample = Sample(loaded.prompt_style.edit_prompt(image, "make it blue", (64, 64)), ["ok"])
    assert torch.equal(assemble(loaded, [sample]).input_ids, assemble(model, [sample]).input_ids)


def test_the_cli_verbs_prompt_an_official_checkpoint_in_its_style(tmp_path, chat_backbone, capsys):
    from PIL import Image

    from illume_kit.cli.main import main
    from illume_kit.model.checkpoint import save_checkpoint

    resolved = _recipe(tmp_path, "official", chat_backbone)
    save_checkpoint(compose(resolved), resolved, tmp_path / "ck")
    ck, scene = str(tmp_path / "ck"), str(ROOT / "checkpoints" / "scene.png")
    assert main(["understand", ck, scene, "what colour is the circle?", "--max-new-tokens", "3"]) == 0
    assert main(["generate", ck, "a red circle", "-o", str(tmp_path / "g.png"), "--size", "64x64"]) == 0
    assert main(["edit", ck, scene, "make the circle blue", "-o", str(tmp_path / "e.png")]) == 0
    assert Image.open(tmp_path / "g.png").size == (64, 64) and Image.open(tmp_path / "e.png").size == (64, 64)
