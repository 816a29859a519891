"""Run a planned sweep: shared units first, then every run's steps, N at a time, each step a process.

State lives in files, so the sweep process can die at any moment and a rerun picks up:

- ``<run>/run.json``: status (pending, running, done, failed, interrupted), the current step, the
  run's overrides, wall time over all attempts, the tail of the failing step's log, versions and
  git sha; ``<run>/logs/<step>.log`` holds each step's output;
- ``shared/<key>/unit.json``: the same for a shared upstream stage.

A rerun skips what says ``done`` and starts everything else from its first step: ``train --resume``
skips stages whose ``done.json`` exists and continues an interrupted stage from its last trainer
checkpoint, and ``eval`` is cheap to repeat. A failed run is retried by a rerun; a failed shared
unit fails the runs that need it (with its error) and no others.

Processes: SIGINT, SIGTERM or SIGHUP stop the runner cleanly: it sends SIGTERM to the process group
of every running step, SIGKILL to those still alive after ``grace_s`` (at once on a second signal),
records their runs as interrupted and raises ``SweepInterrupted`` (``sweep run`` exits 128 + the
signal number: 130, 143, 129). Steps die with the runner even when it is killed outright
(``stepguard``). One runner works in a sweep folder at a time (``.runner.lock``, an advisory lock
the system drops when its holder dies); a rerun that finds a step of an earlier runner still alive
refuses, naming its pid.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from illume_kit.sweep.launchers import Job, Launcher, local_step_alive
from illume_kit.sweep.plan import RUN_FILE, UNIT_FILE
from illume_kit.sweep.spec import SweepError

TAIL_LINES = 25
CLI = ("-m", "illume_kit.cli.main")
LOCK_FILE = ".runner.lock"
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


class SweepInterrupted(KeyboardInterrupt):
    """The runner was stopped by ``signum``; its running steps were ended and marked interrupted."""

    def __init__(self, signum: int, interrupted: Sequence[str] = ()) -> None:
        self.signum, self.interrupted = int(signum), list(interrupted)
        super().__init__(signal.Signals(self.signum).name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def _signals(handler) -> Iterator[None]:
    """``handler`` for the stop signals inside the block, the previous handlers after it (main thread
    only: Python sets handlers nowhere else)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class SweepLock:
    """One runner per sweep folder: an advisory lock on ``<sweep_dir>/.runner.lock`` holding the pid.

    The system drops the lock when its holder dies (also by ``kill -9``); where advisory locks do not
    exist (Windows) it always succeeds.
    """

    def __init__(self, sweep_dir: str | Path) -> None:
        self.path = Path(sweep_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        try:
            import fcntl
        except ImportError:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = read_json(self.path)
            os.close(fd)
            pid = holder.get("pid", "?")
            raise SweepError(
                f"{self.path.parent}: another `sweep run` (pid {pid}) is working in this sweep folder; "
                f"wait for it, or stop it with `kill {pid}` (it ends its steps and marks them interrupted), "
                "then rerun"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": platform.node(), "started_at": _now()}).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock; the file stays, naming the last holder
            self._fd = None

    def __enter__(self) -> SweepLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def git_sha(path: Path | None = None) -> str | None:
    path = path or Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _tail(path: Path, offset: int, n: int = TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-n:])


def latest_training_log(folder: Path) -> str:
    """``stage step N loss=...`` from the most recently written ``metrics.jsonl`` of a run."""
    logs = sorted(folder.glob("stages/*/metrics.jsonl"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return ""
    try:
        last = logs[-1].read_text().strip().splitlines()[-1]
        row = json.loads(last)
    except (OSError, ValueError, IndexError):
        return ""
    loss = row.get("loss")
    return f"{logs[-1].parent.name} step {row.get('step', '?')}" + (
        f" loss={loss:.4g}" if isinstance(loss, float) else ""
    )


@dataclass
class Task:
    kind: str  # "run" | "unit"
    id: str
    folder: Path
    steps: list[tuple[str, list[str]]]
    deps: list[str]
    record: dict[str, Any]
    job: Job | None = None
    step: int = 0
    t0: float = 0.0
    step_t0: float = 0.0
    log_offset: int = 0
    latest: str = ""

    @property
    def state_file(self) -> Path:
        return self.folder / (RUN_FILE if self.kind == "run" else UNIT_FILE)

    @property
    def status(self) -> str:
        return self.record.get("status", "pending")

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.record, indent=2, default=str))
        tmp.replace(self.state_file)

    def elapsed(self) -> float:
        """Wall time over all attempts; a running attempt counts from its start, also when another
        process (``sweep status``) asks."""
        base = float(self.record.get("wall_s", 0.0))
        if self.status != "running":
            return base
        if self.t0:  # started by this process
            return base + time.monotonic() - self.t0
        started = self.record.get("started_epoch")
        return base + max(0.0, time.time() - float(started)) if started is not None else base

    def mark_interrupted(self) -> None:
        """A "running" record whose process died: count the dead attempt's wall time up to the last
        file it wrote (step log or training metrics), since no process lived to add it."""
        rec = self.record
        started = rec.get("started_epoch")
        if started is not None:
            files = [Path(rec["log"])] if rec.get("log") else []
            files += list(self.folder.glob("stages/*/metrics.jsonl"))
            last = max((f.stat().st_mtime for f in files if f.is_file()), default=float(started))
            rec["wall_s"] = round(float(rec.get("wall_s", 0.0)) + max(0.0, last - float(started)), 3)
            rec.pop("started_epoch")
        rec["status"] = "interrupted"

    def seen_from_outside(self) -> Task:
        """As ``sweep status`` should show it: a "running" step whose process is gone is interrupted."""
        rec = self.record
        if self.status == "running" and rec.get("host") == platform.node() and not local_step_alive(rec.get("pid")):
            self.mark_interrupted()
        return self


def _sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None


def build_tasks(plan: dict, sweep_dir: Path, python: str = sys.executable) -> list[Task]:
    """Units (in dependency order) then runs, each with its steps as CLI commands."""
    cli = [python, *CLI]
    tasks: list[Task] = []
    for key, unit in plan.get("units", {}).items():
        folder = Path(unit["folder"]) if unit.get("folder") else sweep_dir / "shared" / key
        prev = read_json(folder / UNIT_FILE)
        rec = {**prev, "key": key, "unit_stage": unit["stage"], "target": unit["target"], "runs": unit["runs"]}
        rec.setdefault("status", "pending")
        tasks.append(
            Task(
                "unit",
                key,
                folder,
                [("train", [*cli, "train", str(folder / "recipe.yaml"), "--resume", "--quiet"])],
                list(unit["upstream"]),
                rec,
            )
        )
    common = {"python": platform.python_version(), "git_sha": git_sha()}
    for run in plan["runs"]:
        folder = sweep_dir / run["id"]
        steps = []
        if "train" in plan.get("stages", ["train", "eval"]) and run.get("stages", [True]):
            steps.append(("train", [*cli, "train", str(folder / "recipe.yaml"), "--resume", "--quiet"]))
        if "eval" in plan.get("stages", ["train", "eval"]):
            steps.append(
                ("eval", [*cli, "eval", str(folder / "checkpoint"), "--json", "--quiet", "-o", str(folder / "eval")])
            )
        prev = read_json(folder / RUN_FILE)
        rec = {
            **prev,
            "id": run["id"],
            "label": run["label"],
            "variant": run.get("variant"),
            "seed": run.get("seed"),
            "overrides": run["overrides"],
            "units": run.get("units", []),
            "versions": {**run.get("versions", {}), "python": common["python"]},
            "git_sha": common["git_sha"],
            "recipe_sha256": _sha(folder / "recipe.yaml"),
        }
        if prev.get("status") == "done" and prev.get("recipe_sha256") not in (None, rec["recipe_sha256"]):
            rec["status"] = "pending"  # the frozen recipe changed under a finished run (plan --force)
        rec.setdefault("status", "pending")
        tasks.append(Task("run", run["id"], folder, steps, list(run.get("units", [])), rec))
    return tasks


class SweepRunner:
    """Keeps up to ``jobs`` steps going; ``on_change(tasks)`` is called whenever something moves."""

    def __init__(
        self,
        plan: dict,
        sweep_dir: str | Path,
        launcher: Launcher,
        jobs: int = 1,
        cwd: str | Path | None = None,
        python: str = sys.executable,
        poll_s: float = 0.5,
        on_change: Callable[[Sequence[Task]], None] | None = None,
        grace_s: float = 10.0,
        lock: bool = True,
    ) -> None:
        self.sweep_dir = Path(sweep_dir)
        self.launcher, self.jobs, self.poll_s = launcher, max(1, jobs), poll_s
        self.grace_s = grace_s
        self.lock = SweepLock(self.sweep_dir) if lock else None
        self._stopping = self._hurry = self._deferring = False
        self._pending: int | None = None
        self.cwd = Path(cwd or Path.cwd())
        self.tasks = build_tasks(plan, self.sweep_dir, python)
        self.by_id = {t.id: t for t in self.tasks}
        self.on_change = on_change or (lambda tasks: None)
        self.metric_names = [m if isinstance(m, str) else m["name"] for m in plan.get("metrics", [])]

    # -- state transitions ----------------------------------------------------------------------
    def _start_step(self, t: Task) -> None:
        name, cmd = t.steps[t.step]
        log = t.folder / "logs" / f"{name}.log"
        t.step_t0 = time.monotonic()
        t.log_offset = log.stat().st_size if log.is_file() else 0
        t.record.update(stage=name, log=str(log))
        t.save()
        with self._deferred():  # no stop between starting the step and holding its job
            t.job = self.launcher.start(cmd, log, self.cwd)
            t.record.update(pid=getattr(t.job, "pid", None), host=platform.node())
        t.save()

    def _start(self, t: Task) -> None:
        t.t0, t.step = time.monotonic(), 0
        t.record.update(
            status="running",
            started_at=_now(),
            started_epoch=round(time.time(), 3),
            error=None,
            attempts=int(t.record.get("attempts", 0)) + 1,
        )
        if not t.steps:
            self._finish(t)
            return
        self._start_step(t)

    def _close_wall(self, t: Task) -> None:
        t.record["wall_s"] = round(float(t.record.get("wall_s", 0.0)) + time.monotonic() - t.t0, 3)
        self._close_step(t)

    @staticmethod
    def _close_step(t: Task) -> None:
        """Add the step that just ended (done, failed or stopped) to ``step_s``: where the time goes."""
        if not t.step_t0 or not t.steps:
            return
        name = t.steps[min(t.step, len(t.steps) - 1)][0]
        per_step = t.record.setdefault("step_s", {})
        per_step[name] = round(float(per_step.get(name, 0.0)) + time.monotonic() - t.step_t0, 3)
        t.step_t0 = 0.0

    def _finish(self, t: Task) -> None:
        self._close_wall(t)
        t.job = None
        if t.kind == "run":
            m = read_json(t.folder / "eval" / "metrics.json").get("metrics")
            if m is not None:
                t.record["metrics"] = m
        t.record.update(status="done", stage=None, finished_at=_now())
        t.save()

    def _fail(self, t: Task, error: str) -> None:
        if t.t0:
            self._close_wall(t)
        t.job = None
        t.record.update(status="failed", error=error, finished_at=_now())
        t.save()

    def _poll(self, t: Task) -> bool:
        rc = t.job.poll() if t.job is not None else 0
        if rc is None:
            t.latest = latest_training_log(t.folder) if t.steps[t.step][0] == "train" else "evaluating"
            return False
        name = t.steps[t.step][0]
        if rc != 0:
            tail = _tail(t.folder / "logs" / f"{name}.log", t.log_offset)
            self._fail(t, f"{name} exited with status {rc}:\n{tail}")
        elif t.step + 1 < len(t.steps):
            self._close_step(t)
            t.step += 1
            self._start_step(t)
        else:
            self._finish(t)
        return True

    # -- stopping -------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        if self._stopping:
            self._hurry = True  # a second signal while stopping: no more grace
        elif self._deferring:
            self._pending = signum
        else:
            raise SweepInterrupted(signum)

    @contextlib.contextmanager
    def _deferred(self) -> Iterator[None]:
        """A stop signal inside the block takes effect at its end."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
            if self._pending is not None:
                signum, self._pending = self._pending, None
                raise SweepInterrupted(signum)

    def _stop_running(self) -> list[str]:
        """End every step this runner started (SIGTERM, SIGKILL after the grace period) and record
        their runs as interrupted; returns their ids."""
        mine = [t for t in self.tasks if t.status == "running" and t.t0]
        jobs = [t.job for t in mine if t.job is not None]
        for job in jobs:
            getattr(job, "terminate", job.kill)()
        deadline = time.monotonic() + self.grace_s
        while not self._hurry and time.monotonic() < deadline and any(j.poll() is None for j in jobs):
            time.sleep(0.05)
        for job in jobs:
            if job.poll() is None:
                job.kill()
        for t in mine:
            t.job = None
            self._close_wall(t)
            t.record.update(status="interrupted", finished_at=_now())
            t.record.pop("started_epoch", None)
            t.save()
        return [t.id for t in mine]

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> dict[str, int]:
        """Run everything not done; raises ``SweepInterrupted`` when stopped by a signal (or Ctrl-C)."""
        with self.lock if self.lock is not None else contextlib.nullcontext(), _signals(self._on_signal):
            self._stopping = self._hurry = False
            try:
                self._check_left_running()
                return self._loop()
            except KeyboardInterrupt as exc:
                self._stopping = True
                signum = getattr(exc, "signum", signal.SIGINT)
                stopped = self._stop_running()
                with contextlib.suppress(Exception):
                    self.on_change(self.tasks)
                raise SweepInterrupted(signum, stopped) from None

    def _check_left_running(self) -> None:
        """What a killed sweep left "running" is interrupted now, unless its step still runs."""
        for t in self.tasks:
            if t.status != "running":
                continue
            pid = t.record.get("pid")
            if t.record.get("host") == platform.node() and local_step_alive(pid):
                raise SweepError(
                    f"{t.folder}: its {t.record.get('stage')} step is still running (pid {pid}), left by "
                    "a sweep run that was killed; it was not started a second time. Wait for it to finish, "
                    f"or stop it and what it started with `kill -TERM -{pid}` (its process group), then rerun"
                )
            t.mark_interrupted()
            t.save()

    def _loop(self) -> dict[str, int]:
        todo = [t for t in self.tasks if t.status != "done"]
        running: list[Task] = []
        self.on_change(self.tasks)
        while todo or running:
            moved = False
            for t in list(running):
                if self._poll(t):
                    moved = True
                    if t.status != "running":
                        running.remove(t)
            for t in list(todo):
                if len(running) >= self.jobs:
                    break
                deps = [self.by_id[d] for d in t.deps if d in self.by_id]
                bad = [d for d in deps if d.status == "failed"]
                if bad:
                    d = bad[0]
                    self._fail(
                        t,
                        f"shared stage {d.record.get('unit_stage')!r} (shared/{d.id}) failed:\n"
                        f"{d.record.get('error') or ''}",
                    )
                    todo.remove(t)
                    moved = True
                elif all(d.status == "done" for d in deps):
                    todo.remove(t)
                    self._start(t)
                    moved = True
                    if t.status == "running":
                        running.append(t)
            self.on_change(self.tasks)
            if running and not moved:
                time.sleep(self.poll_s)
            elif todo and not running and not moved:
                raise RuntimeError("sweep cannot progress: tasks wait on shared units that are not planned")
        return self.summary()

    def summary(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tasks:
            if t.kind == "run":
                out[t.status] = out.get(t.status, 0) + 1
        return out
