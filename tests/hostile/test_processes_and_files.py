"""Processes and files under kills: no step outlives `sweep run`, no second training starts into a
folder a live step still writes, stale temporaries go at the next start (a live writer's stay), a
kill between a stage's final checkpoint and its ``done.json`` keeps the final metrics, and a resumed
run's ``metrics.jsonl`` holds every step once.

The sweep cases run `sweep run` as a real process whose steps are sleeping Python processes started
by the local launcher exactly as it starts ``train``/``eval`` (``sweep_driver``); every wait is
bounded and every process a case starts is killed in ``finally``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VQGAN = ROOT / "recipes/tokenizers/vqgan_tiny.yaml"
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "COLUMNS": "200",
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
}
TOYS = ROOT / "tests" / "train"  # train_toys: the trainer tests' tiny models and data
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; parent-death signal")

# a step: records its pid beside the run, then sleeps (or ignores SIGTERM first, with "stubborn")
CHILD = textwrap.dedent("""
    import os, signal, sys, time
    if "stubborn" in sys.argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(os.path.join(sys.argv[1], "child.pid"), "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)
""")

# `illume-kit sweep run ...` with every step replaced by CHILD, started by the real runner and launcher
DRIVER = textwrap.dedent("""
    import sys
    from illume_kit.sweep import runner

    real = runner.build_tasks
    child, extra = sys.argv[1], sys.argv[2]

    def build_tasks(plan, sweep_dir, python=sys.executable):
        tasks = real(plan, sweep_dir, python)
        for t in tasks:
            t.steps = [("train", [python, child, str(t.folder), "illume_kit", extra])]
        return tasks

    runner.build_tasks = build_tasks
    from illume_kit.cli.main import main
    sys.exit(main(sys.argv[3:]))
""")


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (an orphan's zombie waits for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "illume_kit.cli.main", *map(str, args)],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def wait_until(cond, timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()


def kill_all(pids) -> None:
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


class Sweep:
    """A planned two-run sweep in ``tmp_path`` and a `sweep run` driver process over it."""

    def __init__(self, tmp_path: Path, seeds=(0, 1)) -> None:
        self.tmp = tmp_path
        self.file = tmp_path / "sweep.yaml"
        self.file.write_text(f"base: {VQGAN}\nseeds: {list(seeds)}\n")
        self.out = tmp_path / "out"
        (tmp_path / "child.py").write_text(CHILD)
        (tmp_path / "driver.py").write_text(DRIVER)
        self.procs: list[subprocess.Popen] = []
        self.pids: list[int] = []

    def start(self, extra: str = "-", jobs: int = 2) -> subprocess.Popen:
        args = ["sweep", "run", str(self.file), "-o", str(self.out), "--no-live", "-j", str(jobs)]
        p = subprocess.Popen(
            [sys.executable, str(self.tmp / "driver.py"), str(self.tmp / "child.py"), extra, *args],
            cwd=self.tmp,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.procs.append(p)
        return p

    def run_ids(self) -> list[str]:
        return [r["id"] for r in json.loads((self.out / "plan.json").read_text())["runs"]]

    def wait_children(self, n: int, timeout: float = 90) -> list[int]:
        """The pids of ``n`` running steps, once each has recorded itself and its run.json names it."""

        def ready() -> bool:
            if not (self.out / "plan.json").is_file():
                return False
            found = []
            for rid in self.run_ids():
                pidf, state = self.out / rid / "child.pid", self.out / rid / "run.json"
                if pidf.is_file() and pidf.read_text() and state.is_file():
                    rec = json.loads(state.read_text())
                    if rec.get("pid") == int(pidf.read_text()):
                        found.append(rec["pid"])
            self.pids[:] = sorted(set(self.pids) | set(found))
            return len(found) >= n

        assert wait_until(ready, timeout, 0.1), f"the steps did not start: {self.output()}"
        assert all(alive(p) for p in self.pids)
        return list(self.pids)

    def output(self) -> str:
        out = []
        for p in self.procs:
            if p.poll() is not None:
                o, e = p.communicate(timeout=5)
                out.append((o or "") + (e or ""))
        return "\n".join(out)

    def close(self) -> None:
        kill_all(self.pids)
        for p in self.procs:
            kill_all([p.pid])
            try:
                p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def sweep(tmp_path):
    s = Sweep(tmp_path)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def toys():
    if str(TOYS) not in sys.path:
        sys.path.insert(0, str(TOYS))
    import train_toys

    return train_toys


def state(sweep: Sweep, rid: str) -> dict:
    return json.loads((sweep.out / rid / "run.json").read_text())


# --------------------------------------------------------------------------- sweep run and its steps


@linux_only
def test_kill_9_of_sweep_run_leaves_no_step_behind_within_5_s(sweep):
    driver = sweep.start()
    pids = sweep.wait_children(2)
    assert all(os.getpgid(p) == p for p in pids)  # each step leads a process group of its own
    driver.kill()  # SIGKILL: no handler of the runner runs
    driver.wait(timeout=10)
    assert wait_until(lambda: not any(alive(p) for p in pids), 5.0), [p for p in pids if alive(p)]


@linux_only
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_the_steps_marks_runs_interrupted_and_exits_cleanly(sweep, sig, code):
    driver = sweep.start()
    pids = sweep.wait_children(2)
    driver.send_signal(sig)
    out, err = driver.communicate(timeout=60)
    assert driver.returncode == code, out + err
    assert "Traceback" not in out + err
    assert f"stopped by {signal.Signals(sig).name}" in err and "2 running run(s) ended" in err
    assert "sweep run" in err and "to resume" in err
    assert not any(alive(p) for p in pids)  # ended before the runner exited, not by the death signal
    for rid in sweep.run_ids():
        rec = state(sweep, rid)
        assert rec["status"] == "interrupted" and rec["wall_s"] > 0 and "started_epoch" not in rec
    assert not (sweep.out / ".runner.lock").exists() or _lock_free(sweep.out)


def _lock_free(folder: Path) -> bool:
    import fcntl

    fd = os.open(folder / ".runner.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


@linux_only
def test_a_step_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path):
    """In-process runner, real local launcher; the signal comes from the runner's own loop."""
    from illume_kit.sweep.launchers import LocalLauncher
    from illume_kit.sweep.plan import plan_sweep
    from illume_kit.sweep.runner import SweepInterrupted, SweepRunner

    (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "sweep.yaml").write_text(f"base: {VQGAN}\nseeds: [0]\n")
    plan = plan_sweep(tmp_path / "sweep.yaml", tmp_path / "out")
    plan.write()
    runner = SweepRunner(plan.to_json(), plan.sweep_dir, LocalLauncher(), poll_s=0.05, grace_s=1.0)
    (task,) = runner.tasks
    task.steps = [("train", [sys.executable, str(tmp_path / "child.py"), str(task.folder), "illume_kit", "stubborn"])]
    pid_file = task.folder / "child.pid"
    sent = []

    def on_change(tasks):
        if not sent and pid_file.is_file() and pid_file.read_text():
            sent.append(int(pid_file.read_text()))
            os.kill(os.getpid(), signal.SIGTERM)  # handled by the runner while it runs

    runner.on_change = on_change
    t0 = time.monotonic()
    try:
        with pytest.raises(SweepInterrupted) as exc:
            runner.run()
        took = time.monotonic() - t0
        assert exc.value.signum == signal.SIGTERM and exc.value.exit_code == 143
        assert exc.value.interrupted == [task.id]
        assert sent and not alive(sent[0])  # SIGTERM ignored, so SIGKILL after the grace period
        assert took < 60
        assert json.loads((task.folder / "run.json").read_text())["status"] == "interrupted"
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the runner's handlers are gone again
    finally:
        kill_all(sent)


@linux_only
def test_a_signal_while_a_step_starts_still_ends_that_step(tmp_path):
    """The stop waits until the runner holds the new step's job, so the step cannot slip past it."""
    from illume_kit.sweep.launchers import LocalLauncher
    from illume_kit.sweep.plan import plan_sweep
    from illume_kit.sweep.runner import SweepInterrupted, SweepRunner

    (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "sweep.yaml").write_text(f"base: {VQGAN}\nseeds: [0]\n")
    plan = plan_sweep(tmp_path / "sweep.yaml", tmp_path / "out")
    plan.write()
    started = []

    class SignalledWhileStarting(LocalLauncher):
        def start(self, cmd, log, cwd):
            job = super().start(cmd, log, cwd)
            started.append(job)
            os.kill(os.getpid(), signal.SIGINT)  # lands before the runner has recorded the job
            return job

    runner = SweepRunner(plan.to_json(), plan.sweep_dir, SignalledWhileStarting(), poll_s=0.05, grace_s=10.0)
    (task,) = runner.tasks
    task.steps = [("train", [sys.executable, str(tmp_path / "child.py"), str(task.folder), "illume_kit"])]
    try:
        with pytest.raises(SweepInterrupted) as exc:
            runner.run()
        assert exc.value.signum == signal.SIGINT and exc.value.interrupted == [task.id]
        assert started and started[0].poll() is not None  # ended by the runner, not left behind
        rec = json.loads((task.folder / "run.json").read_text())
        assert rec["status"] == "interrupted" and rec["pid"] == started[0].pid
    finally:
        kill_all([j.pid for j in started])


@linux_only
def test_a_rerun_that_finds_a_live_step_refuses_naming_its_pid(hostile):
    from illume_kit.sweep.launchers import LocalLauncher

    sweep_file = hostile.cwd / "sweep.yaml"
    sweep_file.write_text(f"base: {VQGAN}\nseeds: [0]\n")
    out = hostile.cwd / "out"
    r = cli("sweep", "plan", sweep_file, "-o", out, cwd=hostile.cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    rid = json.loads((out / "plan.json").read_text())["runs"][0]["id"]
    # the step an earlier runner left: started by the launcher, recorded as the runner records it
    left = hostile.cwd / "left"
    left.mkdir()
    (left / "child.py").write_text(CHILD)
    job = LocalLauncher().start([sys.executable, str(left / "child.py"), str(left), "illume_kit"], left / "log", left)
    try:
        import platform

        (out / rid / "run.json").write_text(
            json.dumps({"status": "running", "stage": "train", "pid": job.pid, "host": platform.node()})
        )
        r = hostile("sweep", "run", sweep_file, "-o", out, "--no-live", offender=(f"pid {job.pid}", rid))
        assert f"kill -TERM -{job.pid}" in r.stderr and "not started a second time" in r.stderr
        assert job.poll() is None  # left alone
        assert not (out / rid / "logs").exists()  # and no second training was started
        assert json.loads((out / rid / "run.json").read_text())["status"] == "running"
    finally:
        job.kill()


@linux_only
def test_a_second_sweep_run_in_a_busy_folder_refuses_naming_the_runner(sweep):
    driver = sweep.start(jobs=1)
    sweep.wait_children(1)
    r = cli("sweep", "run", sweep.file, "-o", sweep.out, "--no-live", cwd=sweep.tmp)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert f"another `sweep run` (pid {driver.pid})" in r.stderr and f"kill {driver.pid}" in r.stderr
    assert len([rid for rid in sweep.run_ids() if (sweep.out / rid / "logs").exists()]) == 1  # nothing new started


# a runner stand-in: starts CHILD through the guard with the parent-death signal unavailable (the
# path other systems take), prints the guard's pid, then waits to be killed
NO_PDEATHSIG_RUNNER = textwrap.dedent("""
    import os, subprocess, sys, time
    guard, child, folder = sys.argv[1:4]
    code = (
        "import sys; sys.path.insert(0, sys.argv.pop(1)); import stepguard; "
        "stepguard.die_with_parent = lambda *a: False; sys.exit(stepguard.main(sys.argv[1:]))"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code, os.path.dirname(guard), str(os.getpid()), sys.executable, child, folder],
        start_new_session=True,
    )
    print(p.pid, flush=True)
    time.sleep(120)
""")


@linux_only
def test_without_a_parent_death_signal_the_guard_ends_the_step_when_the_sweep_dies(tmp_path):
    from illume_kit.sweep.launchers import GUARD

    (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "runner.py").write_text(NO_PDEATHSIG_RUNNER)
    runner = subprocess.Popen(
        [sys.executable, str(tmp_path / "runner.py"), str(GUARD), str(tmp_path / "child.py"), str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    pids = [runner.pid]
    try:
        guard = int(runner.stdout.readline())
        pids.append(guard)
        pid_file = tmp_path / "child.pid"
        assert wait_until(lambda: pid_file.is_file() and pid_file.read_text(), 60)
        child = int(pid_file.read_text())
        pids.append(child)
        assert child != guard and alive(child) and os.getpgid(child) == guard  # the guard waits beside it
        runner.kill()
        runner.wait(timeout=10)
        assert wait_until(lambda: not alive(child) and not alive(guard), 5.0)
    finally:
        kill_all(pids)
        runner.wait(timeout=10)


def test_the_step_guard_starts_nothing_when_its_sweep_is_already_gone(tmp_path):
    from illume_kit.sweep.launchers import GUARD

    marker = tmp_path / "ran"
    cmd = [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    gone = subprocess.run([sys.executable, "-I", str(GUARD), "1", *cmd], timeout=60, check=False)  # not our parent
    assert gone.returncode == 143 and not marker.exists()
    ok = subprocess.run([sys.executable, "-I", str(GUARD), str(os.getpid()), *cmd], timeout=60, check=False)
    assert ok.returncode == 0 and marker.is_file()
    bad = subprocess.run([sys.executable, "-I", str(GUARD), "x"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "usage" in bad.stderr


# --------------------------------------------------------------------------- temporaries


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait(timeout=60)
    return p.pid


def _temp(folder: Path, name: str, pid: int, host: str | None = None, kind: str = "tmp") -> Path:
    from illume_kit.core.atomic import _host

    d = folder / f".{name}.{kind}-{pid}@{host or _host()}-ab12cd34"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"half")
    return d


def test_stale_checkpoint_temps_are_removed_at_the_next_start_and_a_live_writers_are_kept(tmp_path, toys):
    from illume_kit.train.config import TrainerConfig
    from illume_kit.train.trainer import Trainer

    ck = tmp_path / "run" / "checkpoints"
    dead = _temp(ck, "step_00000004", _dead_pid())
    dead_file = ck / f".latest.tmp-{_dead_pid()}@{dead.name.split('@')[1]}"
    dead_file.write_text("step_00000004\n")
    live = _temp(ck, "step_00000008", os.getpid())  # a writer that is still running
    other_host = _temp(ck, "step_00000012", _dead_pid(), host="elsewhere")  # pids of another host mean nothing here
    unrelated = ck / ".notes"
    unrelated.mkdir()
    cfg = TrainerConfig(steps=2, batch_size=4, lr=1e-2, warmup_steps=0, log_every=1, seed=0)
    Trainer(toys.mlp(), toys.mse_step, toys.regression_data(), cfg, tmp_path / "run", quiet=True).fit(resume=True)
    assert not dead.exists() and not dead_file.exists()
    assert live.is_dir() and other_host.is_dir() and unrelated.is_dir()
    assert (ck / "step_00000002").is_dir()


def test_a_writer_killed_mid_checkpoint_leaves_a_temp_that_the_next_start_removes(tmp_path):
    from illume_kit.core.atomic import remove_stale_temps

    final = tmp_path / "checkpoint"
    final.mkdir()
    (final / "weights").write_text("old, complete")
    code = textwrap.dedent(f"""
        import os, sys, time
        from illume_kit.core.atomic import atomic_dir
        with atomic_dir({str(final)!r}) as tmp:
            (tmp / "weights").write_text("new, half")
            print(tmp.name, flush=True)
            time.sleep(120)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        name = p.stdout.readline().strip()
        assert name.startswith(f".checkpoint.tmp-{p.pid}@"), name
        assert remove_stale_temps(tmp_path) == []  # its writer is alive: kept
        assert (tmp_path / name).is_dir()
        p.kill()
        p.wait(timeout=30)
        assert remove_stale_temps(tmp_path) == [tmp_path / name]
    finally:
        kill_all([p.pid])
        p.wait(timeout=30)
    assert not (tmp_path / name).exists() and (final / "weights").read_text() == "old, complete"


def test_a_writer_killed_between_moving_the_old_folder_aside_and_renaming_the_new_one_in(tmp_path):
    from illume_kit.core.atomic import remove_stale_temps

    pid = _dead_pid()
    old = _temp(tmp_path, "checkpoint", pid, kind="old")
    (old / "checkpoint").mkdir()
    (old / "checkpoint" / "weights").write_text("old, complete")
    new = _temp(tmp_path, "checkpoint", pid)  # fsynced, but its rename never happened
    removed = remove_stale_temps(tmp_path)
    assert sorted(removed) == sorted([old, new])
    assert (tmp_path / "checkpoint" / "weights").read_text() == "old, complete"  # the complete one is back
    assert not old.exists() and not new.exists()


# --------------------------------------------------------------------------- done.json and metrics.jsonl

RECIPE = str(ROOT / "recipes/tokenizers/vqgan_tiny.yaml")
SMALL = [
    "train.stages.0.steps=3",
    "train.stages.0.batch_size=2",
    "train.stages.0.warmup_steps=0",
    "data.params.num_samples=8",
    "data.params.supersample=1",
]


def test_a_kill_between_the_final_checkpoint_and_done_json_keeps_the_final_metrics(tmp_path, monkeypatch):
    from illume_kit.cli.main import main
    from illume_kit.train import stages

    out = tmp_path / "run"
    real = stages.atomic_write_text

    def killed(path, text):
        if Path(path).name == "done.json":
            raise SystemExit(137)  # the process dies here: final checkpoints written, no marker
        real(path, text)

    monkeypatch.setattr(stages, "atomic_write_text", killed)
    with pytest.raises(SystemExit):
        main(["train", RECIPE, *SMALL, f"run.output_dir={out}", "--quiet"])
    stage = next((out / "stages").iterdir())
    assert not (stage / "done.json").exists() and (stage / "checkpoints" / "latest").is_file()
    final = json.loads((stage / "metrics.jsonl").read_text().splitlines()[-1])
    monkeypatch.setattr(stages, "atomic_write_text", real)
    assert main(["train", RECIPE, *SMALL, f"run.output_dir={out}", "--quiet", "--resume"]) == 0
    done = json.loads((stage / "done.json").read_text())
    assert done["status"] == "done" and done["step"] == 3
    assert done["loss"] == final["loss"] and done["lr"] == final["lr"]  # the final metrics, not lost
    steps = [json.loads(line)["step"] for line in (stage / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3]  # nothing retrained, nothing logged twice


class Crash(RuntimeError):
    pass


def _crash_at(step_fn, at: int):
    def step(model, batch, s):
        if s == at:
            raise Crash(f"killed at step {s}")
        return step_fn(model, batch, s)

    return step


def _steps(folder: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("checkpoint_every", [0, 4], ids=["before-the-first-checkpoint", "past-the-last-checkpoint"])
def test_a_resumed_run_logs_every_step_once(tmp_path, checkpoint_every, toys):
    mlp, mse_step, regression_data = toys.mlp, toys.mse_step, toys.regression_data
    from illume_kit.train.config import TrainerConfig
    from illume_kit.train.state import latest_checkpoint
    from illume_kit.train.trainer import Trainer

    cfg = TrainerConfig(
        steps=10, batch_size=4, lr=1e-2, warmup_steps=0, log_every=1, checkpoint_every=checkpoint_every, seed=0
    )
    full = tmp_path / "full"
    Trainer(mlp(), mse_step, regression_data(), cfg, full, quiet=True).fit()
    out = tmp_path / "run"
    with pytest.raises(Crash):
        Trainer(mlp(), _crash_at(mse_step, 6), regression_data(), cfg, out, quiet=True).fit()
    assert _steps(out) == [1, 2, 3, 4, 5, 6]
    assert (latest_checkpoint(out / "checkpoints") is None) == (checkpoint_every == 0)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "lo')  # a row torn by the kill
    Trainer(mlp(), mse_step, regression_data(), cfg, out, quiet=True).fit(resume=True)
    assert _steps(out) == list(range(1, 11))
    assert (out / "metrics.jsonl").read_text() == (full / "metrics.jsonl").read_text()  # same rows, same values


def test_truncating_metrics_keeps_the_rows_up_to_the_checkpoint_and_replaces_the_file(tmp_path):
    from illume_kit.train.trainer import truncate_metrics

    log = tmp_path / "metrics.jsonl"
    rows = [{"step": 2, "loss": 1.0}, {"step": 4, "loss": 0.5}, {"step": 4, "val/x": 3.0}, {"step": 6, "loss": 0.2}]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    inode = log.stat().st_ino
    assert truncate_metrics(log, 4) == 2
    assert [json.loads(x) for x in log.read_text().splitlines()] == rows[:3]  # the eval row at the step stays
    assert log.stat().st_ino != inode  # written beside and renamed: a kill leaves the old or the new file
    assert not list(tmp_path.glob(".metrics.jsonl.tmp-*"))
    assert truncate_metrics(log, 4) == 0 and truncate_metrics(tmp_path / "none.jsonl", 0) == 0
