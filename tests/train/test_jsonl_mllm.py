"""The same tiny unified recipe trains an mllm stage from each jsonl task kind of the scikit-image
corpus (conversations, captions, edits), each training its own task, with a finite falling loss;
a bad record stops `illume-kit train` with exit status 2 and a message naming file and line."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("skimage")

from illume_kit.testing.corpus import write_corpus  # noqa: E402

ROOT = Path(__file__).parents[2]
RECIPE = str(ROOT / "tests" / "fixtures" / "recipes" / "jsonl_mllm_tiny.yaml")
ENV = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    ENV.pop(key, None)
# the loss each kind trains, as the stage logs it
LOGGED = {"conversations": "und", "captions": "gen", "edits": "gen"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def train(out: Path, kind: str, path: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "illume_kit.cli.main", "train", RECIPE, f"run.output_dir={out}"]
    cmd += [f"data.name={kind}", f"data.params.path={path}", "--quiet"]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("kind", sorted(LOGGED))
def test_an_mllm_stage_trains_from_each_task_kind(corpus, tmp_path, kind):
    proc = train(tmp_path / "run", kind, corpus[kind])
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(x) for x in (tmp_path / "run" / "stages" / "mllm" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0], losses
    others = {"und", "gen"} - {LOGGED[kind]}
    assert all(LOGGED[kind] in r and not others & set(r) for r in rows), rows[0]
    if kind == "conversations":  # eval reads records the run held out by hash
        cmd = [sys.executable, "-m", "illume_kit.cli.main", "eval", str(tmp_path / "run" / "checkpoint")]
        cmd += ["--data", "val_fraction=0.3", "-n", "4", "--json", "-o", str(tmp_path / "eval"), "--quiet"]
        proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
        metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
        assert "und/accuracy" in json.dumps(metrics) and "rec/psnr" in json.dumps(metrics)


def test_a_bad_record_stops_training_with_its_file_and_line(corpus, tmp_path):
    path = tmp_path / "captions.jsonl"
    lines = corpus["captions"].read_text().splitlines()
    lines[2] = json.dumps({"image": "images/nowhere.png", "caption": "gone"})
    path.write_text("\n".join(lines) + "\n")
    cmd_root = f"data.params.image_root={corpus['root']}"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "illume_kit.cli.main",
            "train",
            RECIPE,
            f"run.output_dir={tmp_path / 'run'}",
            f"data.params.path={path}",
            cmd_root,
            "--quiet",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"captions: {path}:3: image 'images/nowhere.png' not found" in proc.stderr
    assert "Traceback" not in proc.stderr
