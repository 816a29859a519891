"""bench/train_step.py: its FLOPs count, its row names, and that its GPU preset starts (tiny, on CPU)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import Qwen2Config, Qwen2ForCausalLM

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "train_step.py"
SPEC = importlib.util.spec_from_file_location("train_step", SCRIPT)
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)
ENV = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def tiny_qwen2(tied: bool) -> Qwen2ForCausalLM:
    cfg = Qwen2Config(
        vocab_size=100,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=tied,
    )
    return Qwen2ForCausalLM(cfg)


def test_matmul_params_leave_out_the_input_embedding_unless_it_is_the_head():
    tied, untied = tiny_qwen2(True), tiny_qwen2(False)
    total = sum(p.numel() for p in tied.parameters())
    assert bench.matmul_params(tied) == total  # the shared matrix counts once, as the LM head
    assert sum(p.numel() for p in untied.parameters()) == total + 100 * 16
    assert bench.matmul_params(untied) == total


def test_model_flops_are_6nt_plus_the_attention_term_per_sequence():
    assert bench.model_flops([10], n_params=1000, layers=2, hidden=8) == 6 * 1000 * 10 + 12 * 2 * 8 * 100
    # two sequences of 5 cost less attention than one of 10 with the same tokens
    assert bench.model_flops([5, 5], 1000, 2, 8) == 6 * 1000 * 10 + 12 * 2 * 8 * 50


def test_rows_name_a_strategy_a_world_and_flags():
    assert bench.parse_row("fsdp:2+ac") == ("fsdp", 2, ["ac"])
    assert bench.label("one") == "one process"
    assert bench.label("fsdp:1+compile") == "fsdp x1 +compile"
    for bad in ("zero:2", "ddp:two", "fsdp:2+fast", "one:2"):
        with pytest.raises(ValueError, match="NAME"):
            bench.parse_row(bad)


def test_a_bad_row_is_one_message_and_exit_2():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--strategies", "zero:2"], env=ENV, capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 2
    assert "bad row 'zero:2'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_the_gpu_preset_starts_on_cpu_at_a_tiny_width(tmp_path):
    """The --gpu command with a tiny backbone: its recipe overrides, bf16-mixed and torchrun world 1 run."""
    small = [
        "backbone.params.hidden_size=32",
        "backbone.params.num_layers=2",
        "backbone.params.num_heads=2",
        "backbone.params.num_kv_heads=1",
        "backbone.params.intermediate_size=64",
        "train.stages.0.global_batch_size=2",
    ]
    cmd = [sys.executable, str(SCRIPT), "--gpu", "--device", "cpu", "--strategies", "fsdp:1", "--steps", "1"]
    proc = subprocess.run([*cmd, "--warmup", "1", *small], env=ENV, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fsdp x1" in proc.stdout and "bf16-mixed" in proc.stdout
    assert "layers x 32" in proc.stdout  # the tiny override won over the preset's 896
