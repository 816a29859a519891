"""Start one sweep step so that it ends when the sweep process dies, even by ``kill -9``.

The local launcher runs ``python -I stepguard.py <sweep pid> <command...>`` (by path and isolated:
it needs only the standard library, and importing the package would cost every step a start-up).

- Linux: ask the kernel for SIGTERM when the parent dies (``prctl(PR_SET_PDEATHSIG)``), check the
  parent is still the sweep (it may have died before the request took hold), then ``exec`` the
  command: it keeps the request and this pid, so the sweep records the step's own pid.
- Elsewhere: run the command as a child in this process group and look at the parent every half
  second; once the sweep is gone, end the group (SIGTERM, then SIGKILL after a grace period).

The stop signals are unblocked for the step: a step that inherited them blocked could not be stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1
POLL_S = 0.5
GRACE_S = 10.0
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Have the kernel send ``sig`` to this process when its parent dies; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int, cmd: list[str]) -> int:
    proc = subprocess.Popen(cmd)
    while True:
        try:
            rc = proc.wait(timeout=POLL_S)
            return rc if rc >= 0 else 128 - rc
        except subprocess.TimeoutExpired:
            pass
        if os.getppid() != parent:  # the sweep died: end the step and whatever it started
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.killpg(os.getpgrp(), signal.SIGTERM)
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(os.getpgrp(), signal.SIGKILL)
            return 143


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: stepguard.py SWEEP_PID COMMAND [ARG...]", file=sys.stderr)
        return 2
    parent, cmd = int(argv[0]), argv[1:]
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    if os.getppid() != parent:
        return 143  # the sweep is gone already
    if die_with_parent(signal.SIGTERM):
        if os.getppid() != parent:  # it died between the check and the request
            return 143
        try:
            os.execvp(cmd[0], cmd)
        except OSError as exc:
            print(f"cannot start {cmd[0]}: {exc}", file=sys.stderr)
            return 127
    return _watch(parent, cmd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
