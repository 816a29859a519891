"""`--preprocess official` on the shipped checkpoint: native-aspect understanding, anchor-snapped
generation and editing, and anchors the model cannot take refused with the valid ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from illume_kit.cli.generate_cmds import anchor_of
from illume_kit.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
CKPT = str(ROOT / "checkpoints" / "dualvitok_qwen2_mllm_tiny")
# the shipped model: sides multiples of 16 (its strides and tag step), tags up to 512, trained at 64;
# of the base-64 table (the released one / 8) these fit, and 48x72, 72x48, 40x120, 120x40 do not
VALID_64 = "64x64, 48x64, 64x48, 48x96, 96x48, 32x128, 128x32"


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "wide.png"
    Image.open(ROOT / "checkpoints" / "scene.png").convert("RGB").resize((150, 60)).save(path)
    return str(path)


def test_generate_at_the_square_anchor_and_at_a_named_anchor(tmp_path, capsys):
    out = tmp_path / "g.png"
    assert main(["generate", CKPT, "a red circle", "-o", str(out), "--preprocess", "official"]) == 0
    assert Image.open(out).size == (64, 64)  # default base: the recipe's image size, its square anchor
    out = tmp_path / "wide.png"
    args = ["generate", CKPT, "a red circle", "-o", str(out), "--preprocess", "official", "--size", "48x96"]
    assert main(args) == 0
    assert Image.open(out).size == (96, 48)


@pytest.mark.parametrize(
    "size, parts",
    [
        ("72x48", ("anchor 72x48 (base 64) does not fit this model", f"valid anchors at base 64: {VALID_64}")),
        ("70x48", ("--size 70x48: not an aspect-ratio anchor", "at base 64: 64x64, 48x64")),
        ("12", ("--size 12: anchor base 12: expected a positive multiple of 8",)),
        ("64x0", ("sides must be positive",)),
    ],
)
def test_anchor_the_model_cannot_take_is_refused_with_the_valid_ones(tmp_path, capsys, size, parts):
    out = tmp_path / "g.png"
    argv = ["generate", CKPT, "a red circle", "-o", str(out), "--preprocess", "official", "--size", size]
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    for part in parts:
        assert part in err, err
    assert "Traceback" not in err
    assert not out.exists()


def test_understand_keeps_the_aspect_of_a_non_square_image(wide, capsys, monkeypatch):
    import illume_kit.model.sampler as sampler

    seen = []
    real = sampler.answer

    def spy(model, images, questions, **kw):
        seen.append(tuple(images[0].shape))
        return real(model, images, questions, **kw)

    monkeypatch.setattr(sampler, "answer", spy)
    assert main(["understand", CKPT, wide, "what shape is in the image", "--preprocess", "official"]) == 0
    # 150x60 within 64*64 pixels on multiples of 16: 2.5:1 kept as nearly as 16-pixel sides allow
    assert seen[-1] == (3, 32, 96)
    assert capsys.readouterr().out.strip()
    assert (
        main(["understand", CKPT, wide, "what shape is in the image", "--preprocess", "official", "--size", "96"]) == 0
    )
    assert seen[-1] == (3, 64, 144)
    # plain (the default) still crops to the square trained size
    assert main(["understand", CKPT, wide, "what shape is in the image"]) == 0
    assert seen[-1] == (3, 64, 64)


def test_edit_snaps_to_the_nearest_anchor_the_model_takes(wide, tmp_path):
    out = tmp_path / "e.png"
    assert main(["edit", CKPT, wide, "make it blue", "-o", str(out), "--preprocess", "official"]) == 0
    # 2.5:1 is nearest 3:1 (40x120), which this model cannot take; of those it takes, 2:1
    assert Image.open(out).size == (96, 48)


def test_the_recipe_chooses_official_and_the_command_line_overrides(tmp_path, wide):
    import yaml

    from illume_kit.core.yamlio import load_file

    ckpt = tmp_path / "ckpt"
    shutil.copytree(CKPT, ckpt)
    recipe = load_file(ckpt / "recipe.yaml")
    recipe.setdefault("eval", {}).setdefault("options", {}).update({"preprocess": "official", "anchor_base": 64})
    (ckpt / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    out = tmp_path / "e.png"
    assert main(["edit", str(ckpt), wide, "make it blue", "-o", str(out)]) == 0
    assert Image.open(out).size == (96, 48)
    assert main(["edit", str(ckpt), wide, "make it blue", "-o", str(out), "--preprocess", "plain"]) == 0
    assert Image.open(out).size == (64, 64)


def test_a_bad_preprocess_key_in_the_recipe_names_the_file(tmp_path, wide, capsys):
    import yaml

    from illume_kit.core.yamlio import load_file

    ckpt = tmp_path / "ckpt"
    shutil.copytree(CKPT, ckpt)
    recipe = load_file(ckpt / "recipe.yaml")
    recipe.setdefault("eval", {}).setdefault("options", {})["preprocess"] = "fancy"
    (ckpt / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    assert main(["understand", str(ckpt), wide, "what shape"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "recipe.yaml" in err and "preprocess" in err and "official" in err


def test_anchor_of():
    assert anchor_of(None, 512) == (512, None)
    assert anchor_of("256", 512) == (256, None)
    assert anchor_of("384x576", 512) == (512, (384, 576))
    assert anchor_of("160x480", 512) == (256, (160, 480))
    assert anchor_of("1024x1024", 512) == (1024, (1024, 1024))
    with pytest.raises(ValueError, match="not an aspect-ratio anchor"):
        anchor_of("500x600", 512)
