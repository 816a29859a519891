"""Wall time of the torch-free CLI verbs against `python -c "import torch"` (the baseline).

    python bench/cli_startup.py [--repeat 7]

Each command runs in a fresh process, all commands in turn for --repeat rounds (a slow spell of a
shared machine then hits every row alike); the table shows the median and the fastest wall time and
the ratio to the baseline, plus the median CPU time (user + system), which a busy shared machine
disturbs less than wall time. The `floor` row is what importing the libraries the verbs are built on
(pluggy, omegaconf, pydantic) costs before any illume-kit code runs. The package's bytecode is
compiled first, as `pip install` does for a regular install (an editable install under
PYTHONDONTWRITEBYTECODE=1 would otherwise recompile every module on every start).
`--help`, `plugins`, `list`, `show` and `validate` are promised to stay under 0.5 s.
"""

from __future__ import annotations

import argparse
import os
import resource
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
    # what the libraries these verbs are built on cost to import, before any illume-kit code runs
    "floor: import pluggy, omegaconf, pydantic (+ importlib.metadata)": [
        sys.executable,
        "-c",
        "import importlib.metadata, pluggy, omegaconf, pydantic.main, pydantic.fields",
    ],
    "illume-kit --help": CLI + ["--help"],
    "illume-kit plugins": CLI + ["plugins"],
    "illume-kit list": CLI + ["list"],
    "illume-kit show tokenizer dualvitok": CLI + ["show", "tokenizer", "dualvitok"],
    "illume-kit validate recipes/dualvitok_qwen2_tiny.yaml": CLI + ["validate", "recipes/dualvitok_qwen2_tiny.yaml"],
}


def wall(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of one fresh process running `cmd`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, capture_output=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    elapsed = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(ROOT / "illume_kit")], check=True, capture_output=True
    )
    for cmd in COMMANDS.values():
        wall(cmd)  # warm the file cache
    # round robin: a slow spell of a shared machine hits every command alike, not just one of them
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    cpu: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeat):
        for name, cmd in COMMANDS.items():
            w, c = wall(cmd)
            times[name].append(w)
            cpu[name].append(c)
    results = {name: statistics.median(ts) for name, ts in times.items()}
    base = results[next(iter(COMMANDS))]
    t = Table(title=f"CLI start-up, {args.repeat} rounds of fresh processes")
    for col in ("command", "median wall s", "min wall s", "median CPU s", "vs import torch", "< 0.5 s"):
        t.add_column(col)
    for name, s in results.items():
        ok = "" if name.startswith(("baseline", "floor")) else ("yes" if s < 0.5 else "NO")
        t.add_row(
            name, f"{s:.3f}", f"{min(times[name]):.3f}", f"{statistics.median(cpu[name]):.3f}", f"{s / base:.2f}x", ok
        )
    Console(width=130).print(t)


if __name__ == "__main__":
    main()
