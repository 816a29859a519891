"""`illume-kit train` streams an mllm stage from webdataset tar shards through two DataLoader workers,
and `illume-kit eval` reads the stream's held-out records; a kill -9 mid-epoch then `--resume` trains on the same samples in the same order and ends with bitwise
the same weights; a resume at another num_workers is refused; two ranks (gloo) read disjoint samples
that cover the stream."""

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

from illume_kit.testing.shards import write_shards

ROOT = Path(__file__).parents[2]
RECIPE = str(ROOT / "tests" / "fixtures" / "recipes" / "stream_mllm_tiny.yaml")
ENV = os.environ | {
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PYTHONPATH": str(ROOT),
    "ILLUME_KIT_RECORD_SAMPLES": "1",
}
for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    ENV.pop(key, None)


def command(out: Path, shards: Path, *extra: str, ranks: int = 1) -> list[str]:
    launch = [sys.executable]
    if ranks > 1:
        launch += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
    overrides = [e for e in extra if "=" in e]
    flags = [e for e in extra if "=" not in e]
    cli = ["-m", "illume_kit.cli.main", "train", RECIPE, f"run.output_dir={out}", f"data.params.path={shards}"]
    return [*launch, *cli, *overrides, "--quiet", *flags]


def train(out: Path, shards: Path, *extra: str, ranks: int = 1) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(out, shards, *extra, ranks=ranks), env=ENV, capture_output=True, text=True, timeout=600
    )


def samples(out: Path, rank: int = 0, stage: str | None = "mllm") -> list[dict]:
    path = (out / "stages" / stage if stage else out) / "samples" / f"rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return {
        f"{f.parent.name}/{k}": v
        for f in sorted((out / "checkpoint").glob("*/model.safetensors"))
        for k, v in load_file(str(f)).items()
    }


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    write_shards(folder, 60, kind="captions", per_shard=10, size=32)
    return folder


def tiny_trainer(shards: Path, out: Path, workers: int, steps: int = 6):
    from illume_kit.data.params import CaptionsParams
    from illume_kit.data.stream import ShardTaskStream
    from illume_kit.train.config import TrainerConfig
    from illume_kit.train.trainer import Trainer

    data = ShardTaskStream(
        "captions", CaptionsParams(format="webdataset", path=str(shards), image_size=8, shuffle_buffer=8)
    )
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)

    def step_fn(m, batch, s):
        x = torch.stack([it["image"].mean(dim=(1, 2)) for it in batch])
        return {"loss": (m(x) - 0.5).pow(2).mean()}

    cfg = TrainerConfig(steps=steps, batch_size=4, lr=0.1, checkpoint_every=2, num_workers=workers, log_every=1)
    return Trainer(model, step_fn, data, cfg, output_dir=out, collate_fn=list, quiet=True)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_trainer_stopped_mid_epoch_resumes_the_stream_exactly(shards, tmp_path, monkeypatch, workers):
    monkeypatch.setenv("ILLUME_KIT_RECORD_SAMPLES", "1")
    whole = tiny_trainer(shards, tmp_path / "whole", workers)
    whole.fit()
    part = tiny_trainer(shards, tmp_path / "part", workers)
    part.fit(until=4)  # 16 of 60 records: mid-epoch
    again = tiny_trainer(shards, tmp_path / "part", workers)
    again.fit(resume=True)
    assert samples(tmp_path / "part", stage=None) == samples(tmp_path / "whole", stage=None)
    assert len(samples(tmp_path / "whole", stage=None)) == 6
    assert torch.equal(again.model.weight, whole.model.weight) and torch.equal(again.model.bias, whole.model.bias)


def test_a_stream_resumed_at_another_num_workers_is_refused(shards, tmp_path):
    tiny_trainer(shards, tmp_path / "run", 2).fit(until=2)
    with pytest.raises(
        ValueError, match="world size 1 with num_workers 2, this run has world size 1 and num_workers 0"
    ):
        tiny_trainer(shards, tmp_path / "run", 0).fit(resume=True)


def test_the_cli_trains_an_mllm_stage_from_shards_with_two_workers(shards, tmp_path):
    out = tmp_path / "run"
    proc = train(out, shards, "train.stages.0.steps=3")
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = samples(out)
    assert [len(r["ids"]) for r in rows] == [4, 4, 4]
    ids = [i for r in rows for i in r["ids"]]
    assert len(set(ids)) == 12 and all(i.startswith("shard-0000") for i in ids)
    # eval reads the first records of the held-out split of the stream
    cmd = [sys.executable, "-m", "illume_kit.cli.main", "eval", str(out / "checkpoint"), "--data", "val_fraction=0.3"]
    cmd += ["-n", "4", "--json", "-o", str(tmp_path / "eval"), "--quiet"]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "rec/psnr" in (tmp_path / "eval" / "metrics.json").read_text()


def test_a_bad_record_read_by_a_worker_stops_training_with_its_shard_and_key(tmp_path):
    folder = tmp_path / "shards"
    write_shards(folder, 24, kind="captions", per_shard=6, size=32, bad={13: "missing_image"})
    proc = train(tmp_path / "run", folder, "train.stages.0.steps=8", "data.params.shuffle_buffer=0")
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert "shard-000002.tar:000013: image 'image.png' is not a member of the sample" in proc.stderr
    assert "Traceback" not in proc.stderr and "DataLoader worker" not in proc.stderr


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_trains_the_same_samples_to_bitwise_the_same_weights(shards, tmp_path):
    steps = ["train.stages.0.steps=20", "train.stages.0.checkpoint_every=3"]  # 80 samples: past one epoch
    whole = tmp_path / "whole"
    proc = train(whole, shards, *steps)
    assert proc.returncode == 0, proc.stderr[-4000:]

    out = tmp_path / "killed"
    run = subprocess.Popen(
        command(out, shards, *steps), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    latest = out / "stages" / "mllm" / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    while not latest.is_file() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(run.pid, signal.SIGKILL)  # the trainer and its two DataLoader workers, mid-epoch
    run.wait()
    stopped = latest.read_text().strip()
    assert stopped != "step_00000020" and not (out / "checkpoint").exists(), "the run ended before the kill"

    proc = train(out, shards, *steps, "--resume")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert samples(out) == samples(whole)
    ids = [i for r in samples(whole) for i in r["ids"]]
    # each worker reads its 3 shards (30 records) per epoch, 7.5 batches of 4: the first 7 batches of both
    # are 56 records of epoch 0, the first 8 hold every one of the 60
    assert len(ids) == 80 and len(set(ids[:56])) == 56 and len(set(ids[:64])) == 60
    a, b = weights(out), weights(whole)
    assert a and a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.slow
def test_two_ranks_read_disjoint_samples_that_cover_the_stream(tmp_path):
    folder = tmp_path / "shards"
    write_shards(folder, 64, kind="captions", per_shard=8, size=32)  # 8 shards: 2 for each of 2 ranks x 2 workers
    out = tmp_path / "run"
    # a global batch of 4 over 2 ranks, 16 steps: each worker serves 8 batches of 2, its 16 records
    proc = train(out, folder, "train.stages.0.steps=16", "parallelism.strategy=ddp", ranks=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    seen = [[i for r in samples(out, rank) for i in r["ids"]] for rank in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 32
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(f"shard-{i // 8:06d}.tar:{i:06d}" for i in range(64))
