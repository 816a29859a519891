import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_toys import mlp, mse_step, regression_data

from illume_kit.train import Trainer, TrainerConfig
from illume_kit.train.state import latest_checkpoint

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


@pytest.mark.parametrize("batch,accum,ema", [(8, 1, False), (4, 2, False), (8, 1, True)])
def test_torchrun_two_ranks_on_gloo_agree_and_match_one_process(tmp_path, batch, accum, ema):
    """With ``ema``: every rank averages the same weights, and rank 0 alone writes TensorBoard events."""
    if ema:
        pytest.importorskip("tensorboard")
    steps = 10
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(HERE / "ddp_train_script.py"),
            str(tmp_path),
            str(steps),
            str(batch),
            str(accum),
            *(["ema"] if ema else []),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    ckpt = latest_checkpoint(tmp_path / "checkpoints")
    assert ckpt is not None and ckpt.name == f"step_{steps:08d}"
    state = torch.load(ckpt / "training_state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    r0, r1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    saved = load_file(str(ckpt / "model.safetensors"))
    assert all(torch.equal(saved[k], r0[k]) for k in r0)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10]  # rank 0 alone writes

    # two ranks of A micro-batches of B see the same global batch as one process of batch 2AB, and DDP
    # averages grads (synchronised once per step, on the last micro-batch)
    model = mlp()
    averaged = {"ema": {"decay": 0.8, "start_step": 2}} if ema else {}
    cfg = TrainerConfig(
        steps=steps, batch_size=2 * batch * accum, lr=1e-2, log_every=5, seed=3, warmup_steps=2, **averaged
    )
    if ema:
        assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 1
    Trainer(model, mse_step, regression_data(), cfg, quiet=True).fit()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(r0[k], v, atol=1e-5, rtol=1e-4)
