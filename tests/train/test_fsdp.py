"""FSDP2 on two CPU ranks (gloo, under torchrun): a real tiny unified model (random-init DualViTok,
Qwen2, projectors) trains as one process with the same global batch does, each rank holding half of
it, and its sharded checkpoints resume exactly, after a kill -9 and at another world size."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).parents[2]
RECIPE = str(ROOT / "tests" / "fixtures" / "recipes" / "fsdp_mllm_tiny.yaml")
STEPS = 20
ENV = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    ENV.pop(key, None)


def command(out: Path, ranks: int, *extra: str, accum: int | None = None) -> list[str]:
    launch = [sys.executable]
    if ranks > 1:
        launch += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
    # two micro-batches of 2 per rank, or one of 8 in one process: the same global batch of 8
    accum = accum or (2 if ranks > 1 else 1)
    split = [f"train.stages.0.grad_accum_steps={accum}"] if accum > 1 else []
    overrides = [e for e in extra if "=" in e]
    flags = [e for e in extra if "=" not in e]
    cli = ["-m", "illume_kit.cli.main", "train", RECIPE, f"run.output_dir={out}", *split, *overrides]
    return [*launch, *cli, "--quiet", *flags]


def train(out: Path, ranks: int, *extra: str, accum: int | None = None) -> subprocess.CompletedProcess:
    cmd = command(out, ranks, *extra, accum=accum)
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "stages" / "mllm" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    return [r["loss"] for r in rows]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return {
        f"{f.parent.name}/{k}": v
        for f in sorted((out / "checkpoint").glob("*/model.safetensors"))
        for k, v in load_file(str(f)).items()
    }


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """One uninterrupted two-rank run, shared by the tests that compare against it."""
    out = tmp_path_factory.mktemp("fsdp") / "two"
    train(out, 2)
    return out


def test_two_ranks_train_as_one_process_with_half_the_parameters_each(sharded, tmp_path):
    one = tmp_path / "one"
    train(one, 1)
    ref, got = losses(one), losses(sharded)
    worst = max(abs(a - b) / abs(b) for a, b in zip(got, ref))
    assert worst <= 1e-4, list(zip(got, ref))
    assert got[-1] < 0.5 * got[0]  # and it learns

    # measured at start: each rank's shards of the parameters, and of their gradients + AdamW states
    state = torch.load(
        sharded / "stages" / "mllm" / "checkpoints" / f"step_{STEPS:08d}" / "training_state.pt", weights_only=True
    )
    (held0, trained0), (held1, trained1) = state["rank_memory"]
    full = sum(v.numel() * v.element_size() for v in weights(one).values())
    for held in (held0, held1):
        assert 0.45 * full < held < 0.55 * full  # shard_frozen: the frozen tokenizer is sharded too
    assert abs(trained0 - trained1) < 0.05 * trained0

    # the stage ends with the gathered weights in the usual component folders
    a, b = weights(sharded), weights(one)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4, msg=k)
    sharded_ckpt = sharded / "stages" / "mllm" / "checkpoints" / f"step_{STEPS:08d}"
    assert (sharded_ckpt / "dcp" / ".metadata").is_file() and not list(sharded_ckpt.glob("*.safetensors"))
    # the frozen tokenizer and decoder never change, so a checkpoint does not rewrite them
    from illume_kit.train.state import sharded_reader

    keys = list(sharded_reader(sharded_ckpt / "dcp").read_metadata().state_dict_metadata)
    assert any(k.startswith("model.model.backbone.") for k in keys)
    assert not any(k.startswith(("model.model.tokenizer.", "model.model.detokenizer.")) for k in keys)


@pytest.mark.slow
def test_kill_9_mid_stage_then_resume_ends_bitwise_as_one_run(sharded, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        command(out, 2), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    latest = out / "stages" / "mllm" / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    while not latest.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, mid-stage
    proc.wait()
    stopped = latest.read_text().strip()
    assert stopped != f"step_{STEPS:08d}" and not (out / "checkpoint").exists(), "the run ended before the kill"

    train(out, 2, "--resume")
    assert losses(out) == losses(sharded)
    a, b = weights(out), weights(sharded)
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.slow
def test_a_checkpoint_of_two_ranks_resumes_in_one_process(sharded, tmp_path):
    out = tmp_path / "shrunk"
    train(out, 2, "--until", "8")
    proc = train(out, 1, "--resume", accum=2)  # the same recipe: 2 micro-batches of 4 in one process
    assert "written by 2 processes, now 1" in proc.stderr
    ref, got = losses(sharded), losses(out)
    assert got[:8] == ref[:8]
    worst = max(abs(a - b) / abs(b) for a, b in zip(got[8:], ref[8:]))
    assert worst <= 1e-4, list(zip(got, ref))


@pytest.mark.slow
def test_meta_init_ranks_receive_rank_0s_weights_and_train_the_same(sharded, tmp_path):
    out = tmp_path / "meta"
    train(out, 2, "parallelism.meta_init=true")
    assert losses(out) == losses(sharded)
    a, b = weights(out), weights(sharded)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.slow
def test_bf16_compute_with_activation_checkpointing_trains_fp32_master_weights(tmp_path):
    out = tmp_path / "bf16"
    train(out, 2, "parallelism.precision=bf16-mixed", "parallelism.activation_checkpointing=[backbone,tokenizer]")
    got = losses(out)
    assert all(x == x for x in got) and got[-1] < 0.5 * got[0]  # finite, and learning
    assert all(v.dtype == torch.float32 for v in weights(out).values() if v.is_floating_point())


@pytest.mark.slow
def test_ddp_stopped_and_resumed_ends_bitwise_as_one_run(tmp_path):
    ddp = "parallelism.strategy=ddp"
    whole, part = tmp_path / "whole", tmp_path / "part"
    train(whole, 2, ddp)
    train(part, 2, ddp, "--until", "8")
    train(part, 2, ddp, "--resume")
    assert losses(part) == losses(whole)
    a, b = weights(part), weights(whole)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
