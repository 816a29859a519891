"""The runner with a launcher that runs nothing: steps, failures, skip-done, resume, shared units."""

import json
import os
import sys
from pathlib import Path

import pytest
from sweep_fakes import DUALVITOK, VQGAN, FakeLauncher

from illume_kit.sweep.plan import plan_sweep
from illume_kit.sweep.runner import SweepRunner

STAGES = (
    "[{name: teacher, target: teacher, steps: 2}, {name: tokenizer, target: tokenizer, steps: 2}, "
    "{name: mllm, target: mllm, steps: 2}]"
)


def planned(write_sweep, tmp_path, body: str, base=VQGAN):
    plan = plan_sweep(write_sweep(f"base: {base}\n{body}\n"), tmp_path / "out")
    plan.write()
    return plan.to_json(), plan.sweep_dir


def run(plan, sweep_dir, launcher, jobs=1):
    return SweepRunner(plan, sweep_dir, launcher, jobs=jobs, poll_s=0.0).run()


def state(sweep_dir: Path, rid: str) -> dict:
    return json.loads((sweep_dir / rid / "run.json").read_text())


def test_each_step_is_a_separate_cli_process(write_sweep, tmp_path):
    plan, sd = planned(write_sweep, tmp_path, "seeds: [0, 1]")
    fake = FakeLauncher(metric=lambda folder: {"rec/psnr": 20.0 + len(folder.name)})
    assert run(plan, sd, fake, jobs=2) == {"done": 2}
    rid = plan["runs"][0]["id"]
    train, ev = [c for c in fake.calls if Path(c[4]).parent.name == rid or c[4] == str(sd / rid / "checkpoint")]
    assert train == [
        sys.executable,
        "-m",
        "illume_kit.cli.main",
        "train",
        str(sd / rid / "recipe.yaml"),
        "--resume",
        "--quiet",
    ]
    assert ev[:5] == [sys.executable, "-m", "illume_kit.cli.main", "eval", str(sd / rid / "checkpoint")]
    assert ev[ev.index("-o") + 1] == str(sd / rid / "eval") and "--json" in ev
    s = state(sd, rid)
    assert s["status"] == "done" and s["attempts"] == 1 and s["metrics"]["rec/psnr"] == 28.0
    assert s["overrides"] == {"run.seed": 0} and s["seed"] == 0 and s["wall_s"] >= 0
    assert s["versions"]["illume-kit"] and s["versions"]["python"] and s["recipe_sha256"]


def test_a_failed_run_is_recorded_and_the_others_continue(write_sweep, tmp_path):
    plan, sd = planned(write_sweep, tmp_path, "seeds: [0, 1, 2]")
    bad = plan["runs"][1]["id"]
    fake = FakeLauncher(fail={bad: "train"})
    assert run(plan, sd, fake) == {"done": 2, "failed": 1}
    s = state(sd, bad)
    assert s["status"] == "failed" and s["stage"] == "train"
    assert "train exited with status 3" in s["error"] and "RuntimeError: boom in train" in s["error"]
    assert fake.verbs(bad) == ["train"]  # no eval after a failed train
    assert state(sd, plan["runs"][2]["id"])["status"] == "done"


def test_rerun_skips_finished_runs_and_resumes_the_rest(write_sweep, tmp_path):
    plan, sd = planned(write_sweep, tmp_path, "seeds: [0, 1, 2]")
    a, b, c = (r["id"] for r in plan["runs"])
    run(plan, sd, FakeLauncher(fail={b: "eval"}))
    # a sweep killed while c was training leaves "running" behind
    s = state(sd, c)
    s.update(status="running", stage="train")
    (sd / c / "run.json").write_text(json.dumps(s))
    again = FakeLauncher()
    assert run(plan, sd, again) == {"done": 3}
    assert again.verbs(a) == []  # done: not redone
    assert again.verbs(b) == ["train", "eval"] and again.verbs(c) == ["train", "eval"]
    assert all("--resume" in cmd for cmd in again.calls if cmd[3] == "train")
    assert state(sd, b)["attempts"] == 2 and state(sd, b)["error"] is None


def test_ctrl_c_marks_running_runs_interrupted(write_sweep, tmp_path):
    plan, sd = planned(write_sweep, tmp_path, "seeds: [0, 1]")
    a, b = (r["id"] for r in plan["runs"])
    with pytest.raises(KeyboardInterrupt):
        run(plan, sd, FakeLauncher(interrupt_at=2))  # a's eval is being started
    assert state(sd, a)["status"] == "interrupted"
    assert not (sd / b / "run.json").exists() or state(sd, b)["status"] != "done"
    fake = FakeLauncher()
    assert run(plan, sd, fake) == {"done": 2}
    assert fake.verbs(a) == ["train", "eval"]


def test_shared_units_run_once_before_their_runs(write_sweep, tmp_path):
    plan, sd = planned(
        write_sweep,
        tmp_path,
        f"overrides: {{train.stages: {STAGES}}}\ngrid: {{model.image_input: [continuous, discrete]}}",
        base=DUALVITOK,
    )
    assert len(plan["units"]) == 2
    fake = FakeLauncher()
    assert run(plan, sd, fake, jobs=2) == {"done": 2}
    trained = [Path(c[4]).parent for c in fake.calls if c[3] == "train"]
    units = [p for p in trained if p.parent.name == "shared"]
    assert len(units) == 2 and len(trained) == 4
    assert [p.name for p in trained[:2]] == list(plan["units"])  # teacher, then tokenizer, then the runs
    for key in plan["units"]:
        assert json.loads((sd / "shared" / key / "unit.json").read_text())["status"] == "done"
    again = FakeLauncher()
    run(plan, sd, again)
    assert again.calls == []


def test_a_failed_unit_fails_only_the_runs_that_need_it(write_sweep, tmp_path):
    plan, sd = planned(write_sweep, tmp_path, f"overrides: {{train.stages: {STAGES}}}\nseeds: [0, 1]", base=DUALVITOK)
    seed0_teacher = plan["runs"][0]["units"][0]
    fake = FakeLauncher(fail={seed0_teacher: "train"})
    assert run(plan, sd, fake) == {"done": 1, "failed": 1}
    s = state(sd, plan["runs"][0]["id"])
    assert "shared stage 'teacher'" in s["error"] and "boom in train" in s["error"]
    assert fake.verbs(plan["runs"][0]["id"]) == []


def test_slurm_launcher_runs_steps_through_submitit(write_sweep, tmp_path):
    submitit = pytest.importorskip("submitit")
    pytest.importorskip("pkg_resources", reason="submitit's plugin loader needs setuptools' pkg_resources")
    from illume_kit.sweep.launchers import SlurmLauncher

    plan, sd = planned(write_sweep, tmp_path, "seeds: [0]")
    executor = submitit.LocalExecutor(folder=str(tmp_path / "submitit"))
    launcher = SlurmLauncher(tmp_path / "submitit", {"timeout_min": 5}, executor=executor)
    rid = plan["runs"][0]["id"]
    # a step that writes what train/eval would, through the real submit/poll/result path
    script = (
        "import sys, os, json; a = sys.argv; "
        "os.makedirs(a[3], exist_ok=True) if a[1] == 'eval' else None; "
        "open(os.path.join(a[3], 'metrics.json'), 'w').write(json.dumps({'metrics': {'rec/psnr': 1.5}})) "
        "if a[1] == 'eval' else print('trained')"
    )
    runner = SweepRunner(plan, sd, launcher, poll_s=0.05)
    for t in runner.tasks:
        t.steps = [
            ("train", [sys.executable, "-c", script, "train", "x", "y"]),
            ("eval", [sys.executable, "-c", script, "eval", "x", str(sd / rid / "eval")]),
        ]
    assert runner.run() == {"done": 1}
    assert state(sd, rid)["metrics"] == {"rec/psnr": 1.5}
    assert "trained" in (sd / rid / "logs" / "train.log").read_text()


def test_slurm_trains_a_multi_gpu_job_under_torchrun(tmp_path):
    from illume_kit.sweep.launchers import SlurmLauncher

    class Executor:
        def __init__(self):
            self.params, self.submitted = {}, []

        def update_parameters(self, **kw):
            self.params.update(kw)

        def submit(self, fn, cmd, log, cwd):
            self.submitted.append(cmd)

    train = [sys.executable, "-m", "illume_kit.cli.main", "train", "r.yaml", "--resume", "--quiet"]
    evaluate = [sys.executable, "-m", "illume_kit.cli.main", "eval", "ckpt"]
    ex = Executor()
    launcher = SlurmLauncher(tmp_path, {"gpus_per_node": 4, "timeout_min": 60}, executor=ex)
    launcher.start(train, tmp_path / "train.log", tmp_path)
    launcher.start(evaluate, tmp_path / "eval.log", tmp_path)
    assert ex.params["gpus_per_node"] == 4
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4"]
    assert ex.submitted == [[*launch, *train[1:]], evaluate]  # evaluation stays one process
    one = Executor()
    SlurmLauncher(tmp_path, {"gpus_per_node": 1}, executor=one).start(train, tmp_path / "t.log", tmp_path)
    assert one.submitted == [train]


def test_slurm_without_submitit_names_the_install(monkeypatch, tmp_path):
    import builtins

    from illume_kit.sweep import launchers

    real = builtins.__import__

    def no_submitit(name, *a, **kw):
        if name == "submitit":
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_submitit)
    with pytest.raises(ValueError, match="pip install submitit"):
        launchers.make_launcher("slurm", tmp_path)


def test_a_step_left_running_by_a_killed_sweep_is_not_started_twice(write_sweep, tmp_path):
    import platform
    import subprocess

    from illume_kit.sweep.spec import SweepError

    plan, sd = planned(write_sweep, tmp_path, "seeds: [0]")
    rid = plan["runs"][0]["id"]
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "illume_kit", "train"])
    try:
        (sd / rid / "run.json").write_text(
            json.dumps({"status": "running", "stage": "train", "pid": orphan.pid, "host": platform.node()})
        )
        with pytest.raises(SweepError, match=f"still running \\(pid {orphan.pid}\\)"):
            run(plan, sd, FakeLauncher())
    finally:
        orphan.kill()
        orphan.wait()
    fake = FakeLauncher()
    assert run(plan, sd, fake) == {"done": 1} and fake.verbs(rid) == ["train", "eval"]


def test_status_from_another_process_shows_live_elapsed_and_dead_steps_as_interrupted(write_sweep, tmp_path):
    import platform
    import subprocess
    import time

    from illume_kit.sweep.runner import build_tasks

    plan, sd = planned(write_sweep, tmp_path, "seeds: [0, 1]")
    live, dead = (r["id"] for r in plan["runs"])
    step = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "illume_kit", "train"])
    started = time.time() - 30
    log = sd / dead / "logs" / "train.log"  # the dead attempt last wrote 20 s after it started
    log.parent.mkdir(parents=True)
    log.write_text("step 1\n")
    os.utime(log, (started + 20, started + 20))
    try:
        for rid, pid in ((live, step.pid), (dead, 999_999_999)):
            (sd / rid / "run.json").write_text(
                json.dumps(
                    {
                        "status": "running",
                        "stage": "train",
                        "pid": pid,
                        "host": platform.node(),
                        "wall_s": 10.0,
                        "started_epoch": started,
                        "log": str(log),
                    }
                )
            )
        tasks = {t.id: t.seen_from_outside() for t in build_tasks(plan, sd)}
        assert tasks[live].status == "running" and 39 < tasks[live].elapsed() < 60  # not seconds since boot
        # earlier attempts (10 s) + the dead one up to its last write (20 s), not 0 and not "until now"
        assert tasks[dead].status == "interrupted" and abs(tasks[dead].elapsed() - 30.0) < 0.01
    finally:
        step.kill()
        step.wait()


def test_status_time_sums_each_arm_and_stage(write_sweep, tmp_path):
    from illume_kit.sweep.runner import build_tasks
    from illume_kit.sweep.timing import time_rows

    plan, sd = planned(
        write_sweep,
        tmp_path,
        f"overrides: {{train.stages: {STAGES}}}\nvariants: [{{name: a, overrides: {{}}}}, "
        "{name: b, overrides: {tokenizer.params.pixel_codebook_size: 512}}]\nseeds: [0, 1]",
        base=DUALVITOK,
    )
    assert run(plan, sd, FakeLauncher()) == {"done": 4}
    tasks = build_tasks(plan, sd)
    for t in tasks:  # the runner recorded every step it ran
        assert set(t.record["step_s"]) == ({"train"} if t.kind == "unit" else {"train", "eval"})
        t.record["step_s"] = {"train": 60.0, "eval": 6.0} if t.kind == "run" else {"train": 30.0}
        t.record["wall_s"] = sum(t.record["step_s"].values())
    rows = {(r["arm"], r["stage"]): r for r in time_rows(tasks, plan)}
    # the teacher is the same content in both arms: one unit per seed, serving both
    assert rows[("a+b", "teacher")]["n"] == 2 and rows[("a+b", "teacher")]["total_s"] == 60.0
    assert rows[("a", "tokenizer")]["n"] == 2 and rows[("b", "mllm")]["total_s"] == 120.0
    assert rows[("a", "eval")]["mean_s"] == 6.0
    assert abs(sum(r["share"] for r in rows.values()) - 1.0) < 1e-9


def test_local_steps_get_their_share_of_the_cores_unless_told(monkeypatch):
    from illume_kit.sweep.launchers import step_env

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert step_env({}, 2)["OMP_NUM_THREADS"] == "4" and step_env({}, 16)["OMP_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in step_env({}, 1)  # one step at a time: torch's own default
    assert step_env({"OMP_NUM_THREADS": "3"}, 2)["OMP_NUM_THREADS"] == "3"
