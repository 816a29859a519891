"""Hostile flags, prompts and failures: each refused with one message naming the offender (exit 2),
warnings that let the command go on (exit 0), and the error boundary itself (bugs keep their
traceback and ask to be reported; --debug shows one; Ctrl-C is one line)."""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from illume_kit.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
CK = str(ROOT / "checkpoints" / "dualvitok_qwen2_mllm_tiny")
IMG = str(ROOT / "checkpoints" / "scene.png")
QUESTION = "how many shapes are there?"
LONG_TEXT = "hexagon " * 1200  # under the character limit, thousands of tokens over the backbone's 2048 positions


# ---------------------------------------------------------------- flags, refused before the model loads


@pytest.mark.parametrize(
    "args, offender",
    [
        (["understand", CK, IMG, QUESTION, "--device", "tpu"], ("--device", "tpu", "cuda:N", "mps")),
        (["generate", CK, "a red star", "-o", "g.png", "--device", "gpu0"], ("--device", "gpu0", "auto")),
        (["understand", CK, IMG, QUESTION, "--max-new-tokens", "-1"], ("--max-new-tokens", ">= 1")),
        (["understand", CK, IMG, QUESTION, "--max-new-tokens", "0"], ("--max-new-tokens", ">= 1")),
        (["generate", CK, "a red star", "-o", "g.png", "--batch-size", "0"], ("--batch-size", ">= 1")),
        (["generate", CK, "a red star", "-o", "g.png", "--num", "0"], ("--num", ">= 1")),
        (["generate", CK, "a red star", "-o", "g.png", "--top-p", "2"], ("--top-p", "(0, 1]")),
        (["generate", CK, "a red star", "-o", "g.png", "--cfg", "nan"], ("--cfg", "finite")),
        (["edit", CK, IMG, "make it blue", "-o", "e.png", "--temperature", "-1"], ("--temperature", ">= 0")),
        (["understand", CK, IMG, QUESTION, "--seed", str(2**70)], ("--seed", "2**63")),
        (["eval", CK, "-n", "0"], ("--num-samples", ">= 1")),
        (["eval", CK, "-n", "-5"], ("--num-samples", ">= 1")),
        (["eval", CK, "--data", "image_size"], ("--data", "KEY=VALUE")),
        (["eval", CK, "--data", "colour=red"], ("--data", "colour", "image_size", "max_objects")),
        (["eval", CK, "--data", "split=train"], ("--data", "split", "--split")),
        (["eval", CK, "--decode", "stepz=25"], ("--decode", "stepz", "steps")),
        (["sweep", "run", "x.yaml", "-j", "0"], ("-j", ">= 1")),
    ],
    ids=lambda v: "_".join(v) if isinstance(v, tuple) else None,
)
def test_a_bad_flag_is_refused_naming_it(hostile, args, offender):
    hostile(*args, offender=offender)


def test_output_naming_a_folder_is_refused(hostile):
    (hostile.cwd / "out.png").mkdir()
    hostile("generate", CK, "a red star", "-o", "out.png", offender=("-o", "out.png", "is a folder"))
    hostile("edit", CK, IMG, "make it blue", "-o", "out.png", offender=("-o", "is a folder"))


def test_output_under_a_file_is_refused(hostile):
    (hostile.cwd / "plain").write_text("a file, not a folder")
    hostile("generate", CK, "a red star", "-o", "plain/sub/g.png", offender=("-o", "plain", "which is a file"))
    hostile("eval", CK, "-o", "plain", offender=("-o", "plain", "is a file"))
    hostile(
        "compose",
        str(ROOT / "recipes/dualvitok_qwen2_tiny.yaml"),
        "-o",
        str(hostile.cwd / "plain"),
        offender=("-o", "is a file"),
    )
    assert (hostile.cwd / "plain").read_text() == "a file, not a folder"


def test_cuda_without_cuda_is_refused_before_the_load(hostile):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    hostile("understand", CK, IMG, QUESTION, "--device", "cuda", offender=("--device cuda", "not available", "cpu"))
    hostile("understand", CK, IMG, QUESTION, "--device", "cuda:3", offender=("--device cuda:3", "not available"))


# ---------------------------------------------------------------- prompts the model cannot serve


def test_absurdly_long_text_is_refused_before_the_model_loads(hostile):
    long = "a" * 10_001
    r = hostile("generate", CK, long, "-o", "g.png", offender=("caption", "10,001 characters", "10,000"))
    assert "Traceback" not in r.stderr
    hostile("understand", CK, IMG, long, offender=("question", "10,000"))
    hostile("edit", CK, IMG, long, "-o", "e.png", offender=("instruction", "10,000"))


@pytest.mark.parametrize(
    "verb, args, what",
    [
        ("understand", [IMG, LONG_TEXT], "question"),
        ("generate", [LONG_TEXT, "-o", "g.png"], "caption"),
        ("edit", [IMG, LONG_TEXT, "-o", "e.png"], "instruction"),
    ],
)
def test_a_prompt_longer_than_the_backbone_serves_is_refused_with_the_limit(hostile, verb, args, what):
    r = hostile(verb, CK, *args, offender=(what, "2048 positions", "max_position_embeddings", "at most"))
    assert not list(hostile.cwd.glob("*.png")), "nothing is generated for a prompt that does not fit"
    assert "tokens long" in r.stderr


def test_an_answer_budget_past_the_positions_names_the_flag_and_what_fits(hostile):
    r = hostile("understand", CK, IMG, QUESTION, "--max-new-tokens", "5000", offender=("--max-new-tokens", "2048"))
    assert "valid: --max-new-tokens at most" in r.stderr


def test_unseen_words_warn_and_the_command_goes_on(hostile):
    r = hostile("understand", CK, IMG, "what color is the purple hexagon at the top left?", code=0, offender="hexagon")
    assert "warning" in r.stderr and "never saw" in r.stderr
    assert "purple" not in r.stderr.split("training:")[1].split("(")[0], "a word it trained on is not named"
    assert r.stdout.strip(), "the model still answers"


def test_familiar_words_and_the_trained_size_give_no_warning(hostile):
    r = hostile("understand", CK, IMG, QUESTION, code=0)
    assert "warning" not in r.stderr


def test_a_size_it_was_not_trained_at_warns(hostile):
    r = hostile("understand", CK, IMG, QUESTION, "--size", "32", code=0, offender=("--size 32x32", "64x64"))
    assert "warning" in r.stderr


def test_the_checkpoint_record_is_preferred_to_the_recipe(hostile):
    ck = hostile.cwd / "ck"
    shutil.copytree(CK, ck)
    (ck / "vocabulary.json").write_text('{"words": ["how", "many", "are", "there"]}')
    r = hostile("understand", str(ck), IMG, QUESTION, code=0, offender="shapes")
    assert "never saw in training: shapes" in r.stderr and "vocabulary.json" in r.stderr
    (ck / "vocabulary.json").write_text('{"words": "not a list"}')
    hostile("understand", str(ck), IMG, QUESTION, offender=("vocabulary.json", "a list of strings"))


# ---------------------------------------------------------------- weights and losses that are not finite


def _nan_checkpoint(folder: Path, section: str = "backbone") -> str:
    from safetensors.torch import load_file, save_file

    ck = folder / "nan_ck"
    shutil.copytree(CK, ck)
    path = ck / section / "model.safetensors"
    tensors = load_file(path)
    name = sorted(k for k, v in tensors.items() if "mlp" in k and v.is_floating_point())[0]  # not a tied one
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, path)
    return name


def test_nan_weights_are_refused_at_load_naming_the_section_and_tensor(hostile):
    name = _nan_checkpoint(hostile.cwd)
    hostile("understand", "nan_ck", IMG, QUESTION, offender=("backbone", "not finite", name, "NaN"))
    hostile("generate", "nan_ck", "a red star", "-o", "g.png", offender=("not finite", name))
    assert not (hostile.cwd / "g.png").exists()


def test_a_diverging_training_run_ends_with_the_stage_and_its_settings(hostile):
    hostile(
        "train",
        str(ROOT / "recipes/tokenizers/vqgan_tiny.yaml"),
        "train.stages.0.steps=3",
        "train.stages.0.lr=1e30",
        "train.stages.0.warmup_steps=0",
        "data.params.num_samples=16",
        "train.stages.0.batch_size=4",
        f"run.output_dir={hostile.cwd / 'run'}",
        "--quiet",
        offender=("train.stages.0", "lr=1e+30", "not finite at step", "loss="),
        timeout=300,
    )


# ---------------------------------------------------------------- the boundary itself (in-process)


def _verb_raising(monkeypatch, exc: BaseException) -> None:
    from illume_kit.cli import registry_cmds

    def boom(args):
        raise exc

    monkeypatch.setattr(registry_cmds, "cmd_list", boom)


def test_a_bug_shows_its_traceback_and_asks_to_be_reported(monkeypatch, capsys):
    import illume_kit

    _verb_raising(monkeypatch, AttributeError("'NoneType' object has no attribute 'codebooks'"))
    assert cli_main.main(["list"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "AttributeError" in err
    assert f"This is a bug in illume-kit {illume_kit.__version__}" in err and "please report it" in err


@pytest.mark.parametrize(
    "exc, named",
    [
        (RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory: you tried 10 TB"), "out of memory"),
        (MemoryError(), "out of memory"),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "runs/x/metrics.json"), "runs/x/metrics.json: is a folder"),
        (PermissionError(errno.EACCES, "Permission denied", "/root/out"), "/root/out: permission denied"),
        (FileExistsError(errno.EEXIST, "File exists", "runs/x"), "runs/x: already exists"),
        (OSError(errno.ENOSPC, "No space left on device"), "no space left"),
    ],
    ids=["cpu-allocator", "memory-error", "is-a-directory", "permission", "file-exists", "disk-full"],
)
def test_expected_failures_are_one_message_with_status_2(monkeypatch, capsys, exc, named):
    _verb_raising(monkeypatch, exc)
    assert cli_main.main(["list"]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err and "report it" not in err


def test_torch_out_of_memory_is_expected(monkeypatch, capsys):
    torch = pytest.importorskip("torch")
    _verb_raising(monkeypatch, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB"))
    assert cli_main.main(["list"]) == 2
    err = capsys.readouterr().err
    assert "out of memory" in err and "batch_size" in err and "Traceback" not in err


def test_a_yaml_error_is_expected(monkeypatch, capsys):
    import yaml

    try:
        yaml.safe_load("a: [1, 2")
    except yaml.YAMLError as exc:
        _verb_raising(monkeypatch, exc)
    assert cli_main.main(["list"]) == 2
    err = capsys.readouterr().err
    assert "YAML" in err and "Traceback" not in err


def test_an_image_past_the_pixel_budget_is_named(monkeypatch, capsys):
    monkeypatch.setenv("ILLUME_KIT_MAX_IMAGE_PIXELS", "100")  # scene.png (64x64) is then past the budget
    assert cli_main.main(["understand", CK, IMG, QUESTION]) == 2
    err = capsys.readouterr().err
    assert "scene.png" in err and "past the limit" in err and "Traceback" not in err


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback_of_an_expected_failure(monkeypatch, capsys, how):
    argv = ["validate", "no_such_recipe.yaml"]
    if how == "flag":
        argv = ["--debug", *argv]
    else:
        monkeypatch.setenv("ILLUME_KIT_DEBUG", "1")
    assert cli_main.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "no_such_recipe.yaml" in err


def test_ctrl_c_is_one_line_and_status_130(monkeypatch, capsys):
    _verb_raising(monkeypatch, KeyboardInterrupt())
    assert cli_main.main(["list"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "interrupted"


def test_reporting_a_failure_does_not_import_torch():
    code = (
        "import sys; from illume_kit.cli.main import main; rc = main(['validate', 'missing.yaml']); "
        "print(rc, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.split()[-2:] == ["2", "False"]
