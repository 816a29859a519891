"""A training run reproduces bitwise at a fixed torch thread count (the default on 2 cores is 2),
and records the count it ran with."""

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset
from train_toys import mlp, mse_step, regression_data

from illume_kit.train.config import TrainerConfig
from illume_kit.train.state import STATE_FILE, latest_checkpoint
from illume_kit.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def threads(n):
    was = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(was)


class RowColumnEmbedding(nn.Module):
    """What the unified model's image positions do: rows of a table read by repeated indices."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Parameter(torch.randn(16, 256) * 0.02)
        self.head = nn.Linear(256, 1)

    def forward(self, idx):
        return self.head(self.table[idx]).squeeze(-1)


def embedding_step(model, batch, step):
    idx, y = batch
    return {"loss": ((model(idx.reshape(-1)) - y.reshape(-1)) ** 2).mean()}


def embedding_data():
    g = torch.Generator().manual_seed(0)
    # 8 rows of 512 indices into 16 table rows: the backward accumulates 4096 x 256 values into 16 rows
    return TensorDataset(torch.randint(0, 16, (64, 512), generator=g), torch.randn(64, 512, generator=g))


def train_embedding(tmp_path, name):
    model = RowColumnEmbedding()
    cfg = TrainerConfig(steps=6, batch_size=8, lr=1e-2, log_every=1, seed=0)
    Trainer(model, embedding_step, embedding_data(), cfg, tmp_path / name, quiet=True).fit()
    return model.table.detach().clone(), (tmp_path / name / "metrics.jsonl").read_text()


def test_repeated_index_training_is_bitwise_repeatable_with_two_threads(tmp_path):
    with threads(2):
        (w1, log1), (w2, log2) = train_embedding(tmp_path, "a"), train_embedding(tmp_path, "b")
    assert torch.equal(w1, w2)
    assert log1 == log2


def test_fit_runs_deterministic_kernels_on_cpu_and_restores_the_setting(tmp_path):
    seen = []

    def step(model, batch, s):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return mse_step(model, batch, s)

    assert not torch.are_deterministic_algorithms_enabled()
    with threads(2):
        Trainer(mlp(), step, regression_data(), TrainerConfig(steps=3, batch_size=8), tmp_path, quiet=True).fit()
    assert seen == [True] * 3
    assert not torch.are_deterministic_algorithms_enabled()
    state = torch.load(latest_checkpoint(tmp_path / "checkpoints") / STATE_FILE, weights_only=True)
    assert state["torch_threads"] == 2


def test_resuming_with_another_thread_count_warns(tmp_path):
    cfg = TrainerConfig(steps=4, batch_size=8)
    with threads(1):
        Trainer(mlp(), mse_step, regression_data(), cfg, tmp_path, quiet=True).fit(until=2)
    with threads(2), pytest.warns(UserWarning, match="1 torch threads, now 2"):
        Trainer(mlp(), mse_step, regression_data(), cfg, tmp_path, quiet=True).fit(resume=True)


# a short mllm stage on the default recipe, with the image row/column embeddings on
COMMAND = [
    "train",
    "recipes/dualvitok_qwen2_tiny.yaml",
    "model.image_positions=16",
    "data.params.num_samples=16",
    "train.stages=[{name: mllm, target: mllm, trainable: [all], steps: 3, batch_size: 8, lr: 1.0e-3,"
    " options: {text_corpus_items: 16}}]",
]


def train_cli(out):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}  # the default on the 2-core machines this runs on
    r = subprocess.run(
        [sys.executable, "-m", "illume_kit.cli.main", *COMMAND, f"run.output_dir={out}", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_the_same_training_command_twice_gives_identical_metrics_and_weights(tmp_path):
    a, b = train_cli(tmp_path / "a"), train_cli(tmp_path / "b")
    log = (a / "stages/mllm/metrics.jsonl").read_text()
    assert log and log == (b / "stages/mllm/metrics.jsonl").read_text()
    files = sorted(p.relative_to(a) for p in (a / "checkpoint").rglob("*.safetensors"))
    assert len(files) >= 3
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert json.loads((a / "checkpoint/illume_kit.json").read_text())["torch_threads"] == 2
