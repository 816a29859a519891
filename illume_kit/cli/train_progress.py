"""What ``illume-kit train`` shows while it runs: the rich side of ``illume_kit.train.progress``.

A header per stage (what trains, steps, output folder), then a rich progress bar (step/total,
elapsed, time left, the latest losses) when stderr is a terminal; one plain line per logged row
with elapsed time and ETA otherwise (CI logs and redirected output stay readable). Everything goes
to stderr, so ``--json`` keeps stdout for the results.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from illume_kit.train.progress import PlainReporter, StageHeader, format_values


class RichReporter(PlainReporter):
    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        super().__init__(quiet=quiet)
        self.console = console or Console(stderr=True)
        self.live = not quiet and self.console.is_terminal and sys.stderr.isatty()
        self._bar: Progress | None = None

    def _print(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, highlight=False, soft_wrap=True)

    def stage_start(self, header: StageHeader) -> None:
        if self.quiet:
            return
        first, *rest = header.lines()
        self.console.print(f"[bold]{first}[/bold]", highlight=False, soft_wrap=True)
        for line in rest:
            self._print(line)

    def start(self, total: int, start: int, description: str) -> None:
        super().start(total, start, description)
        if self.live:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[values]}"),
                console=self.console,
                transient=False,
            )
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
        else:
            super().log(step, values)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
