"""Wall time of the torch-free CLI verbs against `python -c "import torch"` (the baseline).

    python bench/cli_startup.py [--repeat 5]

Each command runs in a fresh process; the table shows the median wall time and the ratio to the
baseline. `--help`, `plugins`, `list`, `show` and `validate` are promised to stay under 0.5 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "illume_kit.cli.main"]
COMMANDS = {
    "baseline: python -c 'import torch'": [sys.executable, "-c", "import torch"],
    "illume-kit --help": CLI + ["--help"],
    "illume-kit plugins": CLI + ["plugins"],
    "illume-kit list": CLI + ["list"],
    "illume-kit show tokenizer dualvitok": CLI + ["show", "tokenizer", "dualvitok"],
    "illume-kit validate recipes/dualvitok_qwen2_tiny.yaml": CLI + ["validate", "recipes/dualvitok_qwen2_tiny.yaml"],
}


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, capture_output=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    results = {}
    for name, cmd in COMMANDS.items():
        wall(cmd)  # warm the file cache
        results[name] = statistics.median(wall(cmd) for _ in range(args.repeat))
    base = results[next(iter(COMMANDS))]
    t = Table(title=f"CLI start-up, median of {args.repeat} fresh processes")
    for col in ("command", "wall s", "vs import torch", "< 0.5 s"):
        t.add_column(col)
    for name, s in results.items():
        ok = "" if name.startswith("baseline") else ("yes" if s < 0.5 else "NO")
        t.add_row(name, f"{s:.3f}", f"{s / base:.2f}x", ok)
    Console().print(t)


if __name__ == "__main__":
    main()
