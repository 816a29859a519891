"""The same tiny unified recipe (jsonl_mllm_tiny.yaml) trains an mllm stage from each storage form of
the scikit-image corpus (jsonl, webdataset tar shards, a datasets folder, parquet files) and each task
kind (conversations, captions, edits), each training its own task with a finite falling loss, and
`illume-kit eval` runs on the checkpoint.

The default suite runs the datasets folder and the tar shards for every kind; jsonl (also run by
test_jsonl_mllm.py) and parquet (read by the same dataset as the datasets folder) are marked slow.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("skimage")
pytest.importorskip("datasets")

from illume_kit.testing.corpus import write_corpus_forms  # noqa: E402

ROOT = Path(__file__).parents[2]
RECIPE = str(ROOT / "tests" / "fixtures" / "recipes" / "jsonl_mllm_tiny.yaml")
ENV = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    ENV.pop(key, None)
# the loss each kind trains, as the stage logs it
LOGGED = {"conversations": "und", "captions": "gen", "edits": "gen"}
# storage form (write_corpus_forms) -> params.format
FORMAT = {"jsonl": "jsonl", "webdataset": "webdataset", "hf": "hf", "parquet": "hf"}
SLOW = {"jsonl", "parquet"}
HAS_STREAM = importlib.util.find_spec("illume_kit.data.stream") is not None


def _marks(storage: str) -> list:
    marks = [pytest.mark.slow] if storage in SLOW else []
    if storage == "webdataset" and not HAS_STREAM:
        marks.append(pytest.mark.skip(reason="illume_kit.data.stream (the tar shard source) is not in this tree"))
    return marks


CASES = [pytest.param(s, k, marks=_marks(s), id=f"{s}-{k}") for s in FORMAT for k in sorted(LOGGED)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus_forms(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """parquet is converted into datasets' cache: a temporary one, not the user's."""
    return ENV | {"HF_DATASETS_CACHE": str(tmp_path_factory.mktemp("hf_cache"))}


def cli(env, *args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "illume_kit.cli.main", *map(str, args), "--quiet"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("storage", "kind"), CASES)
def test_an_mllm_stage_trains_from_each_storage_form_and_task_kind(corpus, env, tmp_path, storage, kind):
    run = tmp_path / "run"
    proc = cli(
        env,
        "train",
        RECIPE,
        f"run.output_dir={run}",
        f"data.name={kind}",
        f"data.params.path={corpus[storage][kind]}",
        f"data.params.format={FORMAT[storage]}",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(x) for x in (run / "stages" / "mllm" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0], losses
    others = {"und", "gen"} - {LOGGED[kind]}
    assert all(LOGGED[kind] in r and not others & set(r) for r in rows), rows[0]
    recipe = (run / "checkpoint" / "recipe.yaml").read_text()
    assert f"format: {FORMAT[storage]}" in recipe and str(corpus[storage][kind]) in recipe

    if kind != "conversations" and storage not in SLOW:
        return  # the default suite evaluates the understanding checkpoints; slow runs evaluate every one
    # eval reads records the run held out (by the hash of a line, a row or a sample key)
    proc = cli(
        env, "eval", run / "checkpoint", "--data", "val_fraction=0.3", "-n", "4", "--json", "-o", tmp_path / "eval"
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.dumps(json.loads((tmp_path / "eval" / "metrics.json").read_text()))
    assert "rec/psnr" in metrics
    if kind == "conversations":
        assert "und/accuracy" in metrics


def test_a_bad_row_stops_training_with_its_file_and_row(corpus, env, tmp_path):
    import datasets

    from illume_kit.data.hf import quiet_datasets

    with quiet_datasets():
        ds = datasets.load_from_disk(str(corpus["hf"]["captions"])).cast_column("image", datasets.Image(decode=False))
        rows = ds.to_list()
        rows[3] = {**rows[3], "image": {"bytes": b"\x89PNG\r\n\x1a\n not really a png", "path": "broken.png"}}
        path = tmp_path / "captions"
        datasets.Dataset.from_list(rows).cast_column("image", datasets.Image()).save_to_disk(str(path))
    proc = cli(
        env, "train", RECIPE, f"run.output_dir={tmp_path / 'run'}", f"data.params.path={path}", "data.params.format=hf"
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"captions: {path} row 3: image 'broken.png' is" in proc.stderr
    assert "Traceback" not in proc.stderr
