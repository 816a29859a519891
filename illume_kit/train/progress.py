"""What a training run shows while it runs.

A rich progress bar (step/total, rate, time left, the latest losses) when stderr is a terminal;
one plain line per logged row otherwise (CI logs and redirected output stay readable); nothing at
all when ``quiet``. Only rank 0 ever shows anything.
"""

from __future__ import annotations

import sys
from typing import Mapping

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def format_values(values: Mapping[str, float], limit: int = 6) -> str:
    items = list(values.items())[:limit]
    return "  ".join(f"{k} {v:.4g}" for k, v in items)


class TrainProgress:
    def __init__(self, total: int, start: int = 0, quiet: bool = False, description: str = "train"):
        self.total, self.quiet = total, quiet
        self.console = Console(stderr=True)
        self.live = not quiet and self.console.is_terminal and sys.stderr.isatty()
        self._bar: Progress | None = None
        if self.live:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeRemainingColumn(), TextColumn("{task.fields[values]}"),
                console=self.console, transient=False)
            self._task = self._bar.add_task(description, total=total, completed=start, values="")
            self._bar.start()

    def update(self, step: int, values: Mapping[str, float] | None = None) -> None:
        if self._bar is not None:
            kw = {"values": format_values(values)} if values else {}
            self._bar.update(self._task, completed=step, **kw)

    def log(self, step: int, values: Mapping[str, float]) -> None:
        """A logged row: refresh the bar, or print a line when there is no bar."""
        if self._bar is not None:
            self.update(step, values)
        elif not self.quiet:
            self.console.print(f"step {step}/{self.total}  {format_values(values, limit=12)}",
                               highlight=False, soft_wrap=True)

    def message(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, highlight=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
