"""How training reports what it does: a callback object the caller passes in.

``StageRunner`` and ``Trainer`` call a ``TrainCallback``; they never print through a console of
their own. The CLI passes one that renders with rich (``illume_kit.cli.train_progress``); library
callers get ``PlainReporter`` (one plain line per header and logged row on stderr) or pass their
own (a test records the calls). Only rank 0 reports.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TextIO, runtime_checkable


@dataclass(frozen=True)
class StageHeader:
    """What a stage is about to do: shown once, before its first step."""

    name: str
    target: str  # teacher | tokenizer | detokenizer | mllm
    trains: str  # the component (and parameter groups) that train, in words
    steps: int
    output_dir: Path
    index: int = 1  # 1-based position among the stages that run now
    count: int = 1
    batch: tuple[int, int, int] | None = None  # (per micro-batch and process, micro-batches per step, processes)
    parallelism: str | None = None  # strategy and precision, in words

    @property
    def effective_batch(self) -> int | None:
        return None if self.batch is None else self.batch[0] * self.batch[1] * self.batch[2]

    def lines(self) -> list[str]:
        out = [
            f"stage {self.index}/{self.count} {self.name!r} ({self.target}): trains {self.trains}",
            f"  {self.steps} steps -> {self.output_dir}",
        ]
        if self.batch is not None:
            b, accum, world = self.batch
            out.append(
                f"  effective batch {self.effective_batch} = {b} per micro-batch x {accum} accumulated "
                f"x {world} process{'es' if world != 1 else ''}"
            )
        if self.parallelism:
            out.append(f"  {self.parallelism}")
        return out


@runtime_checkable
class TrainCallback(Protocol):
    def stage_start(self, header: StageHeader) -> None:
        """Before a stage trains."""

    def start(self, total: int, start: int, description: str) -> None:
        """The training loop starts at step ``start`` of ``total`` (non-zero when resuming)."""

    def update(self, step: int) -> None:
        """A step finished that was not logged."""

    def log(self, step: int, values: Mapping[str, float]) -> None:
        """A logged row (losses, lr, eval metrics) at ``step``."""

    def message(self, text: str) -> None:
        """A note for the user (e.g. where an earlier run was moved)."""

    def close(self) -> None:
        """The training loop ended (finished, stopped early, or failed)."""


def format_values(values: Mapping[str, float], limit: int = 6) -> str:
    items = list(values.items())[:limit]
    return "  ".join(f"{k} {v:.4g}" for k, v in items)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}"


class Clock:
    """Elapsed time since the loop started and the time left, from the rate of the steps done here."""

    def __init__(self, now=time.monotonic) -> None:
        self.now = now
        self.t0, self.start, self.total = now(), 0, 0

    def reset(self, total: int, start: int) -> None:
        self.t0, self.start, self.total = self.now(), start, total

    def elapsed(self) -> float:
        return self.now() - self.t0

    def eta(self, step: int) -> float | None:
        done = step - self.start
        if done <= 0:
            return None
        return self.elapsed() / done * max(0, self.total - step)

    def describe(self, step: int) -> str:
        eta = self.eta(step)
        return f"elapsed {format_duration(self.elapsed())}  eta {format_duration(eta) if eta is not None else '?'}"


class PlainReporter:
    """One plain line per stage header and per logged row; nothing at all when ``quiet``."""

    def __init__(self, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.quiet = quiet
        self._stream = stream
        self.clock = Clock()

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def _print(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.stream, flush=True)

    def stage_start(self, header: StageHeader) -> None:
        for line in header.lines():
            self._print(line)

    def start(self, total: int, start: int, description: str) -> None:
        self.clock.reset(total, start)

    def update(self, step: int) -> None:
        pass

    def log(self, step: int, values: Mapping[str, float]) -> None:
        self._print(f"step {step}/{self.clock.total}  {format_values(values, limit=12)}  {self.clock.describe(step)}")

    def message(self, text: str) -> None:
        self._print(text)

    def close(self) -> None:
        pass
