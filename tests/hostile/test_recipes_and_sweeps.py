"""Hostile recipes, sweeps and images: resource bombs, values that validate too loosely, names that
are paths. Each case exits 2 with one message naming the offender, quickly, writing nothing outside
its scratch folder (the ``hostile`` fixture checks all of that)."""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CKPT = ROOT / "checkpoints" / "dualvitok_qwen2_mllm_tiny"
BASE = "extends: dualvitok_qwen2_mllm_tiny.yaml\n"


def write(folder: Path, name: str, text: str) -> Path:
    p = folder / name
    p.write_text(text)
    return p


def timed(hostile, *args, **kw):
    t = time.perf_counter()
    r = hostile(*args, **kw)
    return r, time.perf_counter() - t


# ------------------------------------------------------------------------------------ YAML
def alias_bomb() -> str:
    """~400 bytes whose aliases expand to 9**9 (387 million) strings."""
    lines = ["illume_kit: 1", "name: bomb", "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 10):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_recipe_refused_at_once(hostile):
    text = alias_bomb()
    assert len(text) < 600
    write(hostile.cwd, "bomb.yaml", text)
    r, took = timed(hostile, "validate", "bomb.yaml", offender=("bomb.yaml", "aliases expand too far"), timeout=20)
    assert took < 3.0, f"validate took {took:.1f} s"  # the bound of the in-process check is 1 s (tests/core)


def test_alias_bomb_sweep_refused(hostile):
    write(hostile.cwd, "bomb.yaml", alias_bomb().replace("illume_kit: 1\nname: bomb\n", "base: x.yaml\n"))
    hostile("sweep", "plan", "bomb.yaml", offender=("bomb.yaml", "aliases expand too far"), timeout=20)


def test_recursive_alias_refused(hostile):
    write(hostile.cwd, "r.yaml", BASE + "name: r\ndescription: &d [1, *d]\n")
    hostile("validate", "r.yaml", offender=("r.yaml", "contains itself"))


def test_duplicate_key_named_with_its_line(hostile):
    write(hostile.cwd, "r.yaml", BASE + "name: r\nrun:\n  seed: 1\n  seed: 2\n")
    hostile("validate", "r.yaml", offender=("r.yaml", "duplicate key 'seed'", "line 5"))


def test_python_tag_refused_in_a_recipe(hostile):
    write(hostile.cwd, "r.yaml", BASE + "name: !!python/object/apply:os.system [echo pwned]\n")
    r = hostile("validate", "r.yaml", offender=("r.yaml", "!!python/object/apply:os.system", "not allowed"))
    assert "pwned" not in r.stdout


def test_custom_tag_refused_in_a_sweep(hostile):
    write(hostile.cwd, "s.yaml", "base: !include other.yaml\ngrid: {train.stages.0.steps: [1]}\n")
    hostile("sweep", "plan", "s.yaml", offender=("s.yaml", "!include", "not allowed"))


def test_python_tag_in_a_checkpoint_recipe_refused(hostile):
    ck = hostile.cwd / "ck"
    ck.mkdir()
    for f in CKPT.iterdir():
        if f.name != "recipe.yaml":
            (ck / f.name).symlink_to(f)
    write(ck, "recipe.yaml", (CKPT / "recipe.yaml").read_text() + "x: !!python/name:os.system\n")
    hostile("eval", str(ck), offender=("recipe.yaml", "!!python/name:os.system"), timeout=120)


# ------------------------------------------------------------------------------------ values
@pytest.mark.parametrize(
    "override,key",
    [
        ("train.stages.0.lr=.inf", "train.stages.0.lr"),
        ("train.stages.0.lr=0", "train.stages.0.lr"),
        ("train.stages.0.weight_decay=.inf", "train.stages.0.weight_decay"),
        ("train.stages.0.weight_decay=-0.1", "train.stages.0.weight_decay"),
        ("train.stages.0.grad_clip=-1", "train.stages.0.grad_clip"),
        ("train.stages.0.betas=[0.9,1.0]", "train.stages.0.betas.1"),
        ("train.stages.0.steps=0", "train.stages.0.steps"),
        ("train.stages.0.batch_size=0", "train.stages.0.batch_size"),
        ("train.stages.0.warmup_steps=-1", "train.stages.0.warmup_steps"),
        ("run.seed=18446744073709551616", "run.seed"),
        ("run.seed=-1", "run.seed"),
        ("run.device=tpu", "run.device"),
    ],
)
def test_bad_numbers_and_names_get_the_one_report(hostile, override, key):
    r = hostile("validate", "dualvitok_qwen2_mllm_tiny", override, offender=(key, "1 problem"))
    assert "validation error for" not in r.stderr  # the recipe report, not pydantic's own


def test_unknown_device_lists_the_valid_ones(hostile):
    hostile("validate", "dualvitok_qwen2_mllm_tiny", "run.device=cuda:x", offender=("run.device", "cuda:N", "mps"))


def test_negative_grad_clip_refused_by_train_before_training(hostile):
    hostile(
        "train",
        "dualvitok_qwen2_mllm_tiny",
        "train.stages.0.grad_clip=-1",
        "run.output_dir=out",
        offender="train.stages.0.grad_clip",
    )
    assert not (hostile.cwd / "out").exists()


def test_missing_value_in_a_child_wins_over_its_parent(hostile):
    write(hostile.cwd, "child.yaml", BASE + "name: child\nbackbone:\n  params:\n    num_layers: ???\n")
    hostile("validate", "child.yaml", offender=("backbone.params.num_layers", "required value is missing"))


def test_unknown_metric_family_refused(hostile):
    hostile("validate", "dualvitok_qwen2_mllm_tiny", "eval.metrics=[rec/psnr,recc/psnr]", offender=("recc/psnr", "rec"))


def test_unknown_sweep_metric_refused(hostile):
    write(
        hostile.cwd,
        "s.yaml",
        "base: dualvitok_qwen2_mllm_tiny.yaml\ngrid: {train.stages.0.steps: [1]}\nmetrics: [foo/bar]\n",
    )
    (hostile.cwd / "dualvitok_qwen2_mllm_tiny.yaml").write_text(
        (ROOT / "recipes" / "dualvitok_qwen2_mllm_tiny.yaml").read_text()
    )
    hostile("sweep", "plan", "s.yaml", offender="foo/bar")


# ------------------------------------------------------------------------------------ sizes
def big_sweep(folder: Path, extra: str = "") -> None:
    (folder / "base.yaml").write_text((ROOT / "recipes" / "dualvitok_qwen2_mllm_tiny.yaml").read_text())
    axes = "".join(f"  model.k{i}: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]\n" for i in range(8))
    write(folder, "big.yaml", f"base: base.yaml\n{extra}grid:\n{axes}")


def test_sweep_of_1e8_runs_refused_at_once(hostile):
    big_sweep(hostile.cwd)
    r, took = timed(hostile, "sweep", "plan", "big.yaml", offender=("100000000 runs", "max_runs=64"), timeout=20)
    assert took < 3.0, f"sweep plan took {took:.1f} s"
    assert not (hostile.cwd / "sweeps").exists()


def test_sweep_of_1e8_runs_refused_even_with_force_and_a_high_max_runs(hostile):
    big_sweep(hostile.cwd, "max_runs: 1000000000\n")
    hostile("sweep", "plan", "big.yaml", "--force", offender=("100000000 runs", "max_runs"), timeout=20)


@pytest.mark.parametrize(
    "verb,override,key",
    [
        ("validate", "tokenizer.params.pixel_codebook_size=10000000000", "tokenizer.params.pixel_codebook_size"),
        ("compose", "backbone.params.hidden_size=1000000", "backbone.params.hidden_size"),
        ("train", "backbone.params.vocab_size=100000000000", "backbone.params.vocab_size"),
        ("compose", "tokenizer.params.decoder_channels=100000", "tokenizer.params.decoder_channels"),
        ("train", "data.params.image_size=16000", "data.params.image_size"),
    ],
)
def test_sizes_past_the_machine_refused_before_anything_is_allocated(hostile, verb, override, key):
    args = [verb, "dualvitok_qwen2_mllm_tiny", override] + (["run.output_dir=out"] if verb == "train" else [])
    r, took = timed(hostile, *args, offender=(key, "more than this machine's", "--allow-large"), timeout=60)
    assert "MemoryError" not in r.stderr
    assert took < 10.0, f"{verb} took {took:.1f} s"
    assert not (hostile.cwd / "out").exists()


def test_absurd_image_size_refused_whatever_the_memory(hostile):
    hostile(
        "validate",
        "dualvitok_qwen2_mllm_tiny",
        "data.params.image_size=100000",
        offender=("data.params.image_size", "16384"),
        env={"ILLUME_KIT_ALLOW_LARGE": "1"},
    )


def test_allow_large_lets_validate_pass(hostile):
    hostile(
        "validate",
        "--allow-large",
        "dualvitok_qwen2_mllm_tiny",
        "tokenizer.params.pixel_codebook_size=10000000000",
        code=0,
        offender="ok",
    )


def huge_png(path: Path, side: int = 20000) -> Path:
    """A valid 1-bit PNG of side x side: its rows of zeros compress to ~50 KB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(9)
    row = b"\0" * (1 + (side + 7) // 8)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def test_huge_png_refused_before_decoding(hostile):
    png = huge_png(hostile.cwd / "huge.png")
    assert png.stat().st_size < 1_000_000
    r = hostile(
        "understand", str(CKPT), "huge.png", "what is this?", offender=("huge.png", "20000x20000", "Mpx"), timeout=120
    )
    assert "DecompressionBomb" not in r.stderr


# ------------------------------------------------------------------------------------ names
@pytest.mark.parametrize("name", ["../escaped", "a/b", ".hidden", "..", "with space"])
def test_recipe_name_must_be_a_name(hostile, name):
    hostile("validate", "dualvitok_qwen2_mllm_tiny", f"name={name}", offender=("name", "not a safe name"))


def test_dotdot_name_does_not_write_outside_with_train(hostile):
    runs = ROOT.parent / "escaped"
    hostile("train", "dualvitok_qwen2_mllm_tiny", "name=../../escaped", offender=("name", "../../escaped"))
    assert not runs.exists() and not (hostile.cwd.parent / "escaped").exists()


def test_stage_name_must_be_a_name(hostile):
    hostile(
        "validate", "dualvitok_qwen2_mllm_tiny", "train.stages.0.name=../up", offender=("train.stages.0.name", "../up")
    )


def test_sweep_name_must_be_a_name(hostile):
    (hostile.cwd / "base.yaml").write_text((ROOT / "recipes" / "dualvitok_qwen2_mllm_tiny.yaml").read_text())
    write(hostile.cwd, "s.yaml", "name: ../../outside\nbase: base.yaml\ngrid: {train.stages.0.steps: [1, 2]}\n")
    hostile("sweep", "plan", "s.yaml", offender=("sweep name", "../../outside"))
    assert not (hostile.cwd.parent / "outside").exists() and not (hostile.cwd / "sweeps").exists()


def test_output_dir_at_a_file(hostile):
    write(hostile.cwd, "taken", "a file\n")
    hostile(
        "train",
        "dualvitok_qwen2_mllm_tiny",
        "run.output_dir=taken",
        offender=("run.output_dir", "taken", "is a file"),
    )
    assert (hostile.cwd / "taken").read_text() == "a file\n"


def test_output_dir_under_a_file(hostile):
    write(hostile.cwd, "taken", "a file\n")
    hostile("train", "dualvitok_qwen2_mllm_tiny", "run.output_dir=taken/run", offender=("run.output_dir", "taken"))
