"""The hostile-input suite: each case runs the CLI as a user would (a fresh process, a scratch
folder as its working directory) and asserts exit status 2, no traceback, the offender named in
the message, and nothing written outside the scratch folder.

``hostile(*args, offender=...)`` runs one case and checks all four; a case that needs more (a
timing bound, a file left alone) asserts it on the returned ``CompletedProcess``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1"}


def _tree(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in folder.rglob("*") if ".git" not in p.parts} if folder.is_dir() else {}


@pytest.fixture
def scratch(tmp_path, monkeypatch) -> Path:
    """A working directory for one case; the repository must look the same after it."""
    work = tmp_path / "work"
    work.mkdir()
    watched = [ROOT / p for p in ("recipes", "checkpoints", "runs", "sweeps")]
    before = {str(p): _tree(p) for p in watched} | {"parent": sorted(os.listdir(tmp_path))}
    yield work
    after = {str(p): _tree(p) for p in watched} | {"parent": sorted(os.listdir(tmp_path))}
    assert after == before, "a hostile case wrote outside its scratch folder"


@pytest.fixture
def hostile(scratch):
    def run(
        *args: str, offender: str | tuple[str, ...] = (), timeout: float = 120, env: dict | None = None, code: int = 2
    ) -> subprocess.CompletedProcess:
        r = subprocess.run(
            [sys.executable, "-m", "illume_kit.cli.main", *map(str, args)],
            capture_output=True,
            text=True,
            cwd=scratch,
            env={**ENV, **(env or {})},
            timeout=timeout,
            check=False,
        )
        out = r.stdout + r.stderr
        assert r.returncode == code, f"exit {r.returncode}, expected {code}:\n{out[-3000:]}"
        assert "Traceback (most recent call last)" not in out, out[-3000:]
        for name in (offender,) if isinstance(offender, str) else offender:
            assert name in out, f"the message does not name {name!r}:\n{out[-3000:]}"
        return r

    run.cwd = scratch
    return run
