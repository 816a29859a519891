"""Launchers: how one step of a run (a CLI command) is started, polled and stopped.

Every step of a run is a separate process (``python -m illume_kit.cli.main train ...``), never a
call inside the sweep process: a crash, an out-of-memory kill or a leaked CUDA context ends one step
of one run, and the sweep records it and goes on. A launcher only has to start a command with its
output going to a log file and say when it has finished:

- ``local``: a subprocess on this machine (the runner keeps ``--jobs`` of them going), in a process
  group of its own (a Ctrl-C in the terminal reaches the sweep, which ends its steps itself), started
  through ``stepguard`` so that it ends when the sweep process dies, even by ``kill -9``;
- ``slurm``: a job submitted through submitit (optional dependency, imported only when used);
  ``SlurmLauncher(executor=submitit.LocalExecutor(...))`` runs the same code path without a cluster.
  With ``gpus_per_node: N`` (N > 1) a ``train`` step runs under ``torchrun --standalone
  --nproc_per_node N`` on its node, so the recipe's ``parallelism`` (ddp or fsdp) spans the job's GPUs;
  other steps run as one process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol


class Job(Protocol):
    def poll(self) -> int | None:
        """None while running, else the exit status."""

    def kill(self) -> None:
        """End the step now (a local step: SIGKILL to its process group)."""


# optional on a Job: ``terminate()`` asks the step to end (SIGTERM to its process group); the runner
# calls it on every running step first, waits a grace period, then calls ``kill()`` on the rest.


class Launcher(Protocol):
    name: str

    def start(self, cmd: Sequence[str], log: Path, cwd: Path) -> Job: ...


class LocalJob:
    def __init__(self, proc: subprocess.Popen, log) -> None:
        self.proc, self._log = proc, log
        self.pid = proc.pid

    def poll(self) -> int | None:
        rc = self.proc.poll()
        if rc is not None and not self._log.closed:
            self._log.close()
        return rc

    def _signal(self, sig: int) -> None:
        # only while not reaped: until then the pid (and so the group id) cannot be reused
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)  # the step and anything it started

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self.poll()


GUARD = Path(__file__).with_name("stepguard.py")


class LocalLauncher:
    name = "local"

    def __init__(self, python: str = sys.executable, jobs: int = 1) -> None:
        self.python, self.jobs = python, jobs

    def start(self, cmd: Sequence[str], log: Path, cwd: Path) -> LocalJob:
        log.parent.mkdir(parents=True, exist_ok=True)
        f = open(log, "a")  # noqa: SIM115 -- stays open while the step runs; LocalJob.poll closes it
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        guarded = [self.python, "-I", str(GUARD), str(os.getpid()), *cmd]
        proc = subprocess.Popen(
            guarded,
            cwd=cwd,
            env=step_env(os.environ, self.jobs),
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        return LocalJob(proc, f)


def local_step_alive(pid: int | None) -> bool:
    """Whether ``pid`` on this machine is still an illume-kit step (a sweep killed mid-step leaves it)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"illume_kit" in cmdline


def run_logged(cmd: Sequence[str], log: str, cwd: str) -> int:
    """Run ``cmd`` with its output appended to ``log``; the function a slurm job executes."""
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        return subprocess.run(
            list(cmd), cwd=cwd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False
        ).returncode


def _submitit():
    try:
        import submitit
    except ImportError:
        raise ValueError(
            "--launcher slurm needs submitit: pip install submitit (or pip install 'illume-kit[slurm]')"
        ) from None
    return submitit


class SlurmJob:
    def __init__(self, job) -> None:
        self.job = job

    def poll(self) -> int | None:
        if not self.job.done():
            return None
        try:
            return int(self.job.result())
        except Exception:  # noqa: BLE001 -- the job itself died (node failure, timeout, cancel): a failed step
            return 1

    def terminate(self) -> None:
        self.job.cancel(check=False)

    def kill(self) -> None:
        self.job.cancel(check=False)


class SlurmLauncher:
    """Each step is one submitit job; ``params`` go to ``executor.update_parameters``."""

    name = "slurm"

    def __init__(self, folder: Path, params: dict | None = None, executor=None) -> None:
        if executor is None:
            executor = _submitit().AutoExecutor(folder=str(folder))
        self.executor = executor
        self.gpus = int((params or {}).get("gpus_per_node") or 1)
        if params:
            self.executor.update_parameters(**params)

    def start(self, cmd: Sequence[str], log: Path, cwd: Path) -> SlurmJob:
        log.parent.mkdir(parents=True, exist_ok=True)
        return SlurmJob(self.executor.submit(run_logged, multi_gpu(cmd, self.gpus), str(log), str(cwd)))


def multi_gpu(cmd: Sequence[str], gpus: int) -> list[str]:
    """``python -m illume_kit.cli.main train ...`` under torchrun with one process per GPU of the node."""
    cmd = list(cmd)
    module = ["-m", "illume_kit.cli.main", "train"]
    if gpus <= 1 or cmd[1:4] != module:
        return cmd
    return [cmd[0], "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(gpus), *cmd[1:]]


def step_env(environ: Mapping[str, str], jobs: int) -> dict[str, str]:
    """The environment of a local step: with several steps at a time and no thread count given, each
    step's torch gets its share of the cores (two steps of two threads each on two cores run slower
    together than two of one thread)."""
    env = dict(environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return env


def make_launcher(name: str, sweep_dir: Path, slurm: dict | None = None, jobs: int = 1) -> Launcher:
    if name == "local":
        return LocalLauncher(jobs=jobs)
    if name == "slurm":
        return SlurmLauncher(sweep_dir / ".submitit", slurm)
    raise ValueError(f"unknown launcher {name!r} (valid: local, slurm)")
