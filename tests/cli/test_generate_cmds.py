"""`understand`, `generate`, `edit` on a composed (random-weight) checkpoint: files, exit codes, errors."""

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from illume_kit.cli.generate_cmds import parse_size
from illume_kit.cli.main import main

RECIPE = "recipes/examples/fsq_qwen2_tiny.yaml"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "model"
    assert main(["compose", RECIPE, "-o", str(out)]) == 0
    return str(out)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    import random

    from illume_kit.data.shapes import render, sample_scene

    path = tmp_path_factory.mktemp("img") / "scene.jpg"
    render(sample_scene(random.Random(0)), 100).save(path)  # 100 px: the verbs resize it to 64
    return str(path)


def test_generate_writes_an_image_and_a_grid(ckpt, tmp_path, capsys):
    out = tmp_path / "one.png"
    assert main(["generate", ckpt, "a small red circle at the center", "-o", str(out), "--seed", "3"]) == 0
    assert Image.open(out).size == (64, 64)
    grid = tmp_path / "sub" / "four.jpg"
    assert (
        main(
            [
                "generate",
                ckpt,
                "a large blue star at the top left",
                "-o",
                str(grid),
                "--num",
                "4",
                "--batch-size",
                "3",
                "--size",
                "64x64",
                "--cfg",
                "3",
                "--temperature",
                "0.7",
                "--top-k",
                "50",
                "--top-p",
                "0.9",
            ]
        )
        == 0
    )
    w, h = Image.open(grid).size
    assert w > 2 * 64 and h > 2 * 64  # 2x2 tiles of 64x64 images
    assert "wrote" in capsys.readouterr().out


def test_edit_and_understand(ckpt, image, tmp_path, capsys):
    out = tmp_path / "edited.png"
    assert main(["edit", ckpt, image, "make the circle at the center red", "-o", str(out)]) == 0
    assert Image.open(out).size == (64, 64)
    capsys.readouterr()
    assert main(["understand", ckpt, image, "how many shapes are there?", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.endswith("\n")  # an answer line (random weights: any text)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["understand", "{ckpt}", "{missing}", "q"], "does not exist"),
        (["edit", "{ckpt}", "{missing}", "make it red", "-o", "{tmp}/x.png"], "does not exist"),
        (["edit", "{ckpt}", "{notimage}", "make it red", "-o", "{tmp}/x.png"], "not an image"),
        (["generate", "{ckpt}", "a circle", "-o", "{tmp}/x.png", "--size", "big"], "expected HxW"),
        (["generate", "{ckpt}", "a circle", "-o", "{tmp}/x.txt"], "must end in"),
        (["generate", "{ckpt}", "a circle", "-o", "{tmp}/x.png", "--size", "60x64"], "does not fit"),
        (["generate", "{tmp}", "a circle", "-o", "{tmp}/x.png"], "not an illume-kit checkpoint"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(ckpt, tmp_path, capsys, argv, message):
    (tmp_path / "notimage.png").write_text("hello")
    fill = {
        "ckpt": ckpt,
        "missing": str(tmp_path / "missing.png"),
        "notimage": str(tmp_path / "notimage.png"),
        "tmp": str(tmp_path),
    }
    assert main([a.format(**fill) for a in argv]) == 2
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert message in err and "Traceback" not in err
    assert err.startswith("error:") and err.count("error:") == 1, err
    assert not (tmp_path / "x.png").exists()


def test_parse_size():
    assert parse_size("64") == (64, 64) and parse_size("32x48") == (32, 48) and parse_size(None) is None
    for bad in ("0x64", "64x", "a", "-4"):
        with pytest.raises(ValueError, match="--size"):
            parse_size(bad)


def test_module_imports_no_torch():
    code = "import sys, illume_kit.cli.generate_cmds; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_sampling_defaults_come_from_the_checkpoint_recipe(tmp_path, monkeypatch):
    """`generate` / `edit` sample as the recipe's eval does unless the command line says otherwise."""
    import argparse

    import yaml

    from illume_kit.cli import generate_cmds as g

    (tmp_path / "recipe.yaml").write_text(
        yaml.safe_dump({"eval": {"options": {"cfg": 3.0, "edit_cfg": 1.25, "temperature": 0.5, "top_k": 7}}})
    )
    assert g.recipe_sampling(tmp_path, "generate") == {"cfg": 3.0, "temperature": 0.5, "top_k": 7, "top_p": 1.0}
    assert g.recipe_sampling(tmp_path, "edit") == {"cfg": 1.25, "temperature": 0.5, "top_k": 7, "top_p": 1.0}
    assert g.recipe_sampling(tmp_path / "missing", "edit") == g.SAMPLING_DEFAULTS["edit"]
    # a stored recipe may hold keys eval does not read: they are passed over, the others still count
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({"eval": {"options": {"edit_cfg": 1.25, "unread": 1}}}))
    assert g.recipe_sampling(tmp_path, "edit") == {**g.SAMPLING_DEFAULTS["edit"], "cfg": 1.25}
    assert g.SAMPLING_DEFAULTS == {
        "generate": {"cfg": 2.0, "temperature": 1.0, "top_k": None, "top_p": 1.0},
        "edit": {"cfg": 1.5, "temperature": 1.0, "top_k": None, "top_p": 1.0},
    }

    monkeypatch.setattr(g, "recipe_sampling", lambda ck, verb: {**g.SAMPLING_DEFAULTS[verb], "temperature": 0.5})
    for verb in ("generate", "edit"):
        p = argparse.ArgumentParser()
        g._sampling_args(p, verb)
        args = p.parse_args(["--cfg", "4", "--top-k", "0"])
        args.checkpoint = str(tmp_path)
        # the command line wins where given (top-k 0 = off), the recipe elsewhere
        assert g._sampling(args, verb) == {"cfg": 4.0, "temperature": 0.5, "top_k": None, "top_p": 1.0}


SHIPPED = str(Path(__file__).resolve().parents[2] / "checkpoints" / "dualvitok_qwen2_mllm_tiny")


def test_sampling_official_on_the_command_line(tmp_path, capsys):
    """`--sampling official` draws with the official mode (the shipped model starts its images itself);
    its own flags are refused without it, and a model that never starts an image says so."""
    out = tmp_path / "g.png"
    args = ["generate", SHIPPED, "a red circle", "-o", str(out), "--sampling", "official", "--num", "2"]
    assert main(args + ["--no-rewarp", "--repetition-penalty", "1.1"]) == 0
    width, height = Image.open(out).size
    assert width > height >= 64  # two 64x64 images side by side
    edited = tmp_path / "e.png"
    assert main(["edit", SHIPPED, str(Path(SHIPPED).parent / "scene.png"), "make the circle blue", "-o",
                 str(edited), "--sampling", "official", "--seed", "1"]) == 0  # fmt: skip
    assert Image.open(edited).size == (64, 64)
    capsys.readouterr()
    assert main(["generate", SHIPPED, "a red circle", "-o", str(out), "--rewarp"]) == 2
    err = capsys.readouterr().err
    assert "--rewarp/--no-rewarp applies to the official sampling mode only" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as info:
        main(["generate", SHIPPED, "a red circle", "-o", str(out), "--repetition-penalty", "0"])
    assert info.value.code == 2 and "--repetition-penalty: must be a finite number > 0" in capsys.readouterr().err


def test_sampling_official_with_a_model_that_writes_no_image(ckpt, tmp_path, capsys):
    out = tmp_path / "none.png"
    assert main(["generate", ckpt, "a red circle", "-o", str(out), "--sampling", "official"]) == 2
    err = capsys.readouterr().err
    assert "sampling official: the model wrote no complete image" in err and "Traceback" not in err
    assert not out.exists()


def test_sampling_official_settings_from_the_command_line(tmp_path):
    import argparse

    import yaml

    from illume_kit.cli import generate_cmds as g

    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({"eval": {"options": {"temperature": 0.5, "rewarp": False}}}))
    p = argparse.ArgumentParser()
    g._sampling_args(p, "edit")
    args = p.parse_args(["--sampling", "official", "--top-k", "0"])
    args.checkpoint = str(tmp_path)
    # the recipe's given keys count, the official editing recommendation fills the rest; top-k 0 stays off
    assert g._sampling(args, "edit") == {
        "cfg": 1.5,
        "temperature": 0.5,
        "top_k": 0,
        "top_p": 0.8,
        "sampling": "official",
        "rewarp": False,
        "repetition_penalty": 1.05,
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({"eval": {"options": {"sampling": "official"}}}))
    args = p.parse_args(["--rewarp"])
    args.checkpoint = str(tmp_path)
    assert g._sampling(args, "edit")["rewarp"] is True and g._sampling(args, "edit")["temperature"] == 0.7
    args = p.parse_args(["--sampling", "structured"])
    args.checkpoint = str(tmp_path)
    assert g._sampling(args, "edit") == g.SAMPLING_DEFAULTS["edit"]


def test_decode_loop_from_the_recipe_and_the_command_line(tmp_path, capsys):
    """eval.options.decode_loop picks the structured sampler's loop (static: the same image as the
    dynamic loop for a seed); --decode-loop overrides it; the official mode refuses both."""
    import argparse

    import yaml

    from illume_kit.cli import generate_cmds as g

    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({"eval": {"options": {"decode_loop": "compiled"}}}))
    assert g.recipe_sampling(tmp_path, "generate") == {**g.SAMPLING_DEFAULTS["generate"], "cache": "static",
                                                      "compile": True}  # fmt: skip
    p = argparse.ArgumentParser()
    g._sampling_args(p, "generate")
    args = p.parse_args(["--decode-loop", "static"])
    args.checkpoint = str(tmp_path)
    assert g._sampling(args, "generate") == {**g.SAMPLING_DEFAULTS["generate"], "cache": "static"}
    args = p.parse_args(["--decode-loop", "dynamic"])
    args.checkpoint = str(tmp_path)
    assert g._sampling(args, "generate") == g.SAMPLING_DEFAULTS["generate"]

    outs = [tmp_path / f"{loop}.png" for loop in ("dynamic", "static")]
    for loop, out in zip(("dynamic", "static"), outs):
        assert main(["generate", SHIPPED, "a red circle", "-o", str(out), "--seed", "3", "--decode-loop", loop]) == 0
    assert Image.open(outs[0]).tobytes() == Image.open(outs[1]).tobytes()
    capsys.readouterr()
    argv = ["generate", SHIPPED, "a red circle", "-o", str(tmp_path / "o.png"), "--sampling", "official"]
    assert main(argv + ["--decode-loop", "static"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--decode-loop static applies to the structured sampler" in err and "Traceback" not in err
    (tmp_path / "recipe.yaml").write_text(
        yaml.safe_dump({"eval": {"options": {"decode_loop": "static", "sampling": "official"}}})
    )
    with pytest.raises(Exception, match="decode_loop: static applies to sampling: structured"):
        g.recipe_sampling(tmp_path, "generate")
