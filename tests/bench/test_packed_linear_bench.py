"""bench/packed_linear.py: one small run prints its table with outputs that agree (CPU)."""

import subprocess
import sys
from pathlib import Path

import pytest

from illume_kit.model import packed_linear

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not packed_linear.available(), reason="this torch build has no oneDNN")
def test_small_run_prints_rows_and_agreeing_outputs():
    args = ["--rows", "1", "3", "--layers", "1", "--hidden", "64", "--intermediate", "128", "--kv", "32"]
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "packed_linear.py"), *args, "--vocab", "100", "--repeat", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("│")]
    assert [ln.split("│")[1].strip() for ln in lines] == ["1", "3"]
    for ln in lines:
        speed, diff = ln.split("│")[4].strip(), float(ln.split("│")[5])
        assert speed.endswith("x") and float(speed[:-1]) > 0
        assert diff < 1e-4
