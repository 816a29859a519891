"""Where a sweep's time goes: wall time per arm and stage, from what the runner recorded.

A shared unit is one stage (a teacher, tokenizer or decoder); a run has a ``train`` step (its own
stages, e.g. align + mllm) and an ``eval`` step. The runner adds each step's wall time to
``step_s`` in ``run.json``/``unit.json`` whenever the step ends (done, failed or stopped). A record
without it (a step still running, or a record from a runner that kept only the total) counts its
total under the step it is in; a finished run's eval is then split off at the time its last stage
wrote ``done.json``.

Times are process wall times: with ``--jobs 2`` two steps share the machine, so the sum over steps
is the machine time the sweep used, and the sweep's wall time is about that sum over ``--jobs``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table


def _mtime(path: Path) -> float | None:
    return path.stat().st_mtime if path.is_file() else None


def _run_steps(task, stages: Sequence[str]) -> dict[str, float]:
    rec = task.record
    train = "+".join(stages) or "train"
    if rec.get("step_s"):
        out = {("eval" if k == "eval" else train): float(v) for k, v in rec["step_s"].items()}
        if task.status == "running":
            step = rec.get("stage") or "train"
            key = "eval" if step == "eval" else train
            out[key] = out.get(key, 0.0) + max(0.0, task.elapsed() - float(rec.get("wall_s", 0.0)))
        return out
    total = task.elapsed()
    if task.status == "running":
        return {("eval" if rec.get("stage") == "eval" else train): total}
    done = _mtime(task.folder / "stages" / stages[-1] / "done.json") if stages else None
    evaluated = _mtime(task.folder / "eval" / "metrics.json")
    if done is None or evaluated is None or evaluated < done:
        return {train: total}
    eval_s = min(total, evaluated - done)
    return {train: total - eval_s, "eval": eval_s}


def time_rows(tasks: Sequence[Any], plan: dict) -> list[dict[str, Any]]:
    """One row per (arm, stage): how many tasks ran it, their summed and mean wall time."""
    runs = {r["id"]: r for r in plan.get("runs", [])}
    sums: dict[tuple[str, str], list[float]] = defaultdict(list)
    for t in tasks:
        if t.kind == "unit":
            labels = sorted({runs[r]["label"] for r in t.record.get("runs", []) if r in runs})
            arm, steps = "+".join(labels) or "shared", {t.record.get("unit_stage", "unit"): t.elapsed()}
        else:
            arm, steps = runs.get(t.id, {}).get("label", t.id), _run_steps(t, runs.get(t.id, {}).get("stages", []))
        for stage, secs in steps.items():
            if secs > 0:
                sums[(arm, stage)].append(secs)
    total = sum(sum(v) for v in sums.values()) or 1.0
    rows = [
        {"arm": arm, "stage": stage, "n": len(v), "total_s": sum(v), "mean_s": sum(v) / len(v), "share": sum(v) / total}
        for (arm, stage), v in sums.items()
    ]
    return sorted(rows, key=lambda r: -r["total_s"])


def time_table(rows: Sequence[dict[str, Any]], jobs_hint: int | None = None, title: str = "") -> Table:
    from illume_kit.sweep.display import _fmt_time

    t = Table(title=title)
    for col in ("arm", "stage", "n", "total", "mean", "share"):
        t.add_column(col, justify="left" if col in ("arm", "stage") else "right")
    for r in rows:
        t.add_row(
            r["arm"], r["stage"], str(r["n"]), _fmt_time(r["total_s"]), _fmt_time(r["mean_s"]), f"{r['share']:.0%}"
        )
    total = sum(r["total_s"] for r in rows)
    caption = f"steps' summed wall time {_fmt_time(total)}"
    if jobs_hint:
        caption += f"; about {_fmt_time(total / jobs_hint)} of wall time at --jobs {jobs_hint}"
    t.caption = caption
    return t
