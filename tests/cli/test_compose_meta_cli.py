"""`compose --meta` / `inspect --meta`: official-size recipes sized on the meta device, nothing allocated."""

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
CKPT = ROOT / "checkpoints" / "dualvitok_qwen2_mllm_tiny"


def run(*args):
    code = "import sys; from illume_kit.cli.main import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=ENV, cwd=ROOT)


def test_official_3b_recipe_sizes_on_meta():
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    r = run("compose", "--meta", "--json", "recipes/illume_plus/illume_plus_3b.yaml")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    comps = info["components"]
    assert info["meta"] is True
    # released sizes: DualViTok 1.35B, Qwen2.5-3B with 131,111 image/structure rows added, SDXL UNet 2.57B + VAE
    assert 1.34e9 < comps["tokenizer"]["parameters"] < 1.36e9
    assert 3.34e9 < comps["backbone"]["parameters"] < 3.37e9
    assert 2.55e9 < comps["detokenizer"]["parts"]["denoiser"] < 2.58e9
    assert 83e6 < comps["detokenizer"]["parts"]["space"] < 84e6
    assert comps["backbone"]["dtypes"] == {"bfloat16": comps["backbone"]["parameters"]}
    # 2 bytes a parameter (the tied head counted once) plus the RoPE frequency buffer
    assert 0 < comps["backbone"]["bytes"] - 2 * comps["backbone"]["parameters"] < 10_000
    assert info["total"]["bytes"] == sum(c["bytes"] for c in comps.values())
    # ILLUME+'s hard-coded ids: codes start at 151,704 (semantic) and 184,472 (pixel)
    starts = {row["what"]: row["start"] for row in info["vocab_layout"]}
    assert starts["codebook semantic"] == 151_704 and starts["codebook pixel"] == 184_472
    if peak_kib > before:  # the child's peak only shows when it exceeds earlier children's
        assert peak_kib < 2 * 1024 * 1024, f"peak RSS {peak_kib} KiB"


def test_without_meta_the_open_folders_are_required():
    r = run("compose", "recipes/illume_plus/illume_plus_3b.yaml")
    assert r.returncode == 2
    assert "tokenizer.weights" in r.stderr and "???" in r.stderr and "Traceback" not in r.stderr


def test_meta_writes_no_checkpoint(tmp_path):
    r = run("compose", "--meta", "dualvitok_qwen2_tiny", "-o", str(tmp_path / "ck"))
    assert r.returncode == 2 and "--meta" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "ck").exists()


def test_inspect_meta_matches_the_loaded_checkpoint():
    meta, real = run("inspect", "--meta", "--json", str(CKPT)), run("inspect", "--json", str(CKPT))
    assert meta.returncode == 0 and real.returncode == 0, meta.stderr + real.stderr
    m, r = json.loads(meta.stdout), json.loads(real.stdout)
    assert m["meta"] is True and r["meta"] is False
    for sec in ("tokenizer", "backbone", "detokenizer", "projectors"):
        for key in ("parameters", "bytes", "dtypes", "parts"):
            assert m["components"][sec].get(key) == r["components"][sec].get(key), (sec, key)
    assert m["total"] == r["total"] and m["total"]["parameters"] > 0


STAGES = ["stage1", "stage2", "stage2_5", "stage3"]
OPEN = ["tokenizer.weights=W", "backbone.params.pretrained=B", "detokenizer.params.pretrained=D"]


@pytest.mark.parametrize("stage", [*STAGES, "schedule"])
def test_stage_recipes_validate(stage):
    r = run("validate", "--allow-large", f"recipes/illume_plus/{stage}.yaml", *OPEN)
    assert r.returncode == 0, r.stderr
    assert "backbone=qwen2[qwen2.5-3b]" in r.stdout and "detokenizer=diffusion[official]" in r.stdout


def test_world_prints_per_rank_memory_for_ddp_and_fsdp():
    r = run("compose", "--meta", "--world", "8", "recipes/illume_plus/stage3.yaml")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "per-rank memory, stage stage3 (mllm), 8 GPUs, bf16-mixed" in out
    gpu = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 6 and cells[0].split(" (")[0] in ("ddp", "fsdp", "fsdp + cpu offload"):
            num, unit = cells[4].split()
            gpu[cells[0]] = float(num) * {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[unit]
    assert set(gpu) == {"ddp", "fsdp (recipe)", "fsdp + cpu offload"}, out
    assert gpu["fsdp (recipe)"] < gpu["ddp"] / 4 and gpu["fsdp + cpu offload"] < gpu["fsdp (recipe)"]
    assert "activations" in out  # the caption says what the estimate leaves out


def test_world_json_counts_each_stages_trainable_groups():
    r = run("compose", "--meta", "--json", "--world", "2", "dualvitok_qwen2_mllm_tiny")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    mem, total = info["memory"], info["total"]["parameters"]
    assert (mem["world"], mem["strategy"], mem["precision"]) == (2, "ddp", "bf16-mixed")  # auto: as on CUDA
    align, full = mem["stages"]
    assert (align["stage"], full["stage"]) == ("align", "mllm")
    assert align["trainable"] + align["frozen"] == total == full["trainable"] + full["frozen"]
    comps = info["components"]
    # align: projectors and the embedding matrix whose new rows train; mllm: projectors and backbone
    assert comps["projectors"]["parameters"] < align["trainable"] < full["trainable"]
    assert full["trainable"] == comps["projectors"]["parameters"] + comps["backbone"]["parameters"]
    ddp, fsdp, off = full["rows"]
    assert ddp["recipe"] and not fsdp["recipe"] and not off["recipe"]
    assert ddp["gpu"] == pytest.approx(18 * full["trainable"] + 2 * full["frozen"])
    # frozen parts stay whole on every rank unless parallelism.shard_frozen
    assert fsdp["gpu"] == pytest.approx(18 * full["trainable"] / 2 + 2 * full["frozen"])


@pytest.mark.parametrize("args", [["--world", "8"], ["--meta", "--world", "0"]])
def test_world_needs_meta_and_a_positive_size(args):
    r = run("compose", *args, "dualvitok_qwen2_tiny")
    assert r.returncode == 2, r.stderr
    assert "--world" in r.stderr and "--meta" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_stage_recipes_compose_on_meta(stage):
    r = run("compose", "--meta", "--json", "--world", "8", f"recipes/illume_plus/{stage}.yaml")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    (plan,) = info["memory"]["stages"]
    comps = info["components"]
    assert plan["stage"] == stage and info["memory"]["strategy"] == "fsdp"
    assert plan["trainable"] + plan["frozen"] == info["total"]["parameters"]
    if stage == "stage1":  # projectors and the (tied) embedding matrix
        assert plan["trainable"] < 0.2 * comps["backbone"]["parameters"]
    elif stage == "stage3":  # and the input encoder's blocks from 16, merger and pixel encoder but its down levels
        llm = comps["projectors"]["parameters"] + comps["backbone"]["parameters"]
        assert llm < plan["trainable"] < llm + comps["input_encoder"]["parameters"]
    else:
        assert plan["trainable"] == comps["projectors"]["parameters"] + comps["backbone"]["parameters"]


def test_world_for_component_stages_and_for_a_recipe_without_stages():
    r = run("compose", "--meta", "--json", "--world", "4", "recipes/tokenizers/dualvitok_tiny_2x2.yaml")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    teacher, tok = info["memory"]["stages"]
    assert teacher["target"] == "teacher" and "no teacher" in teacher["error"]
    # a tokenizer stage holds the tokenizer as built: its frozen semantic encoder counts as weights only
    comp = info["components"]["tokenizer"]
    assert (tok["trainable"], tok["frozen"]) == (comp["trainable"], comp["parameters"] - comp["trainable"])
    assert tok["frozen"] > 0
    r = run("compose", "--meta", "--world", "4", "dualvitok_qwen2_tiny")
    assert r.returncode == 0, r.stderr
    assert "per-rank memory, the model as built (no training stages), 4 GPUs" in " ".join(r.stdout.split())
