"""`illume-kit sweep plan|run|status` and `results` as a user runs them (subprocesses)."""

import json
import os
import subprocess
import sys
import time

import pytest
from sweep_fakes import ROOT, VQGAN

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1"}


def cli(*args, check_torch=False, cwd=ROOT):
    code = "import sys; from illume_kit.cli.main import main; rc = main(sys.argv[1:]); "
    if check_torch:
        code += "assert 'torch' not in sys.modules, 'imported torch'; "
    code += "sys.exit(rc)"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=ENV, cwd=cwd, check=False
    )


def test_plan_shows_runs_and_freezes_without_torch(write_sweep, tmp_path):
    p = write_sweep(f"base: {VQGAN}\ngrid: {{tokenizer.params.code_dim: [4, 8]}}\nseeds: [0, 1]\n")
    r = cli("sweep", "plan", str(p), "-o", str(tmp_path / "out"), check_torch=True)
    assert r.returncode == 0, r.stderr
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert len(plan["runs"]) == 4
    for run in plan["runs"]:
        assert run["id"] in r.stdout and (tmp_path / "out" / run["id"] / "recipe.yaml").is_file()
    assert "code_dim=4" in r.stdout and "4 runs" in r.stdout
    s = cli("sweep", "status", str(tmp_path / "out"), "--json", check_torch=True)
    assert s.returncode == 0, s.stderr
    assert [row["status"] for row in json.loads(s.stdout)] == ["pending"] * 4


def test_quick_plans_into_its_own_folder_and_status_times_it_without_torch(write_sweep, tmp_path):
    p = write_sweep(
        f"base: {VQGAN}\ngrid: {{tokenizer.params.code_dim: [4, 8]}}\nseeds: [0, 1]\nquick: {{steps: 0.5}}\n"
    )
    r = cli("sweep", "plan", str(p), "--quick", check_torch=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    plan = json.loads((tmp_path / "sweeps" / "sweep_quick" / "plan.json").read_text())
    assert [run["seed"] for run in plan["runs"]] == [0, 0] and plan["quick"] is True
    assert f"illume-kit sweep run {p} --quick" in " ".join(r.stdout.split())
    s = cli("sweep", "status", str(p), "--quick", "--time", "--json", check_torch=True, cwd=tmp_path)
    assert s.returncode == 0 and json.loads(s.stdout) == [], s.stderr  # nothing has run yet
    bad = cli("sweep", "plan", str(write_sweep(f"base: {VQGAN}\n", "plain.yaml")), "--quick", cwd=tmp_path)
    assert bad.returncode == 2 and "needs a `quick:` block" in bad.stderr and "Traceback" not in bad.stderr


def test_plan_lists_every_bad_run_and_exits_2(write_sweep, tmp_path):
    p = write_sweep(f"base: {VQGAN}\ngrid: {{tokenizer.params.code_dim: [4, -1, 0]}}\n")
    r = cli("sweep", "plan", str(p), "-o", str(tmp_path / "out"))
    assert r.returncode == 2
    assert "2 of 3 runs are invalid; nothing was written" in r.stderr
    assert "tokenizer.params.code_dim=-1" in r.stderr and "tokenizer.params.code_dim=0" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()
    bad = write_sweep(f"base: {VQGAN}\nzip: [{{a: [1, 2], b: [1]}}]\n", "bad.yaml")
    r = cli("sweep", "plan", str(bad))
    assert r.returncode == 2 and "equal length" in r.stderr and "Traceback" not in r.stderr


def test_results_verb_formats(tmp_path):
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "run.json").write_text(json.dumps({"status": "done", "metrics": {"rec/psnr": 30.5}}))
    plan = {
        "sweep": "x",
        "units": {},
        "metrics": [],
        "runs": [
            {"id": "r1", "label": "base", "overrides": {}, "axes": {}},
            {"id": "r2", "label": "other", "overrides": {"a": 1}, "axes": {"a": 1}},
        ],
    }
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    r = cli("results", str(tmp_path), "--format", "md", check_torch=True)
    assert r.returncode == 0, r.stderr
    assert "| 30.50 |" in r.stdout and "2 runs: 1 done, 1 missing" in r.stdout
    r = cli("results", str(tmp_path), "--plot", str(tmp_path / "p.png"))
    assert r.returncode == 0, r.stderr
    assert "rec/psnr" in r.stdout and (tmp_path / "p.png").is_file()
    r = cli("results", str(tmp_path / "nope"))
    assert r.returncode == 2 and "plan the sweep first" in r.stderr


@pytest.mark.slow
def test_real_sweep_two_runs_then_rerun_skips(write_sweep, tmp_path):
    """Two real runs (2 training steps each, then eval) as separate processes, two at a time (~35 s)."""
    pytest.importorskip("illume_kit_fsq")
    p = write_sweep(f"""
        base: {ROOT / "recipes/examples/fsq_qwen2_tiny.yaml"}
        overrides:
          train.stages: [{{name: tok, target: tokenizer, steps: 2, batch_size: 2}}]
          eval: {{num_samples: 4, metrics: [rec/psnr]}}
        seeds: [0, 1]
        metrics: [rec/psnr]
        """)
    out = tmp_path / "out"
    r = cli("sweep", "run", str(p), "-o", str(out), "--jobs", "2", "--no-live", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    plan = json.loads((out / "plan.json").read_text())
    for run in plan["runs"]:
        state = json.loads((out / run["id"] / "run.json").read_text())
        assert state["status"] == "done" and state["metrics"]["rec/psnr"] > 5
        assert (out / run["id"] / "checkpoint" / "illume_kit.json").is_file()
        assert (out / run["id"] / "stages" / "tok" / "done.json").is_file()
    t0 = time.time()
    r = cli("sweep", "run", str(p), "-o", str(out), "--no-live", cwd=tmp_path)
    assert r.returncode == 0 and time.time() - t0 < 10  # both done: nothing is started again
    assert "running" not in r.stdout
    r = cli("results", str(out), "--format", "json")
    rows = json.loads(r.stdout)["rows"]
    assert len(rows) == 1 and rows[0]["rec/psnr"]["n"] == 2  # one setting, two seeds
