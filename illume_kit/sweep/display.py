"""Rich tables of a sweep's runs: the plan, the live view while it runs, and ``sweep status``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich.markup import escape
from rich.table import Table

from illume_kit.sweep.shared import yaml_value

STYLE = {"done": "green", "failed": "bold red", "running": "yellow", "interrupted": "magenta", "pending": "dim"}


def _fmt_time(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def plan_table(plan: dict, title: str = "") -> Table:
    t = Table(
        title=title or f"sweep {plan['sweep']}: {len(plan['runs'])} runs, {len(plan.get('units', {}))} shared units"
    )
    for col in ("run", "label", "seed", "overrides", "shared", "stages"):
        t.add_column(col, overflow="fold")
    for r in plan["runs"]:  # what this run changes (fixed overrides are common to all: not shown)
        ov = " ".join(f"{k}={yaml_value(v)}" for k, v in r.get("axes", {}).items())
        shared = " ".join(f"{plan['units'][k]['stage']}:{k[:6]}" for k in r.get("units", []))
        t.add_row(
            r["id"],
            escape(r["label"]),
            "" if r.get("seed") is None else str(r["seed"]),
            escape(ov),
            shared,
            ", ".join(r.get("stages", [])),
        )
    return t


def _metrics_text(metrics: dict[str, Any] | None, names: Sequence[str], limit: int = 4) -> str:
    if not metrics:
        return ""
    from illume_kit.eval.specs import metric_spec

    keys = [k for n in names for k in ([n] if n in metrics else sorted(m for m in metrics if m.startswith(n + "/")))]
    keys = keys or sorted(metrics)
    out = []
    for k in keys[:limit]:
        try:
            fmt = metric_spec(k).fmt
        except KeyError:
            fmt = ".4g"
        v = metrics[k]
        out.append(f"{k}={format(v, fmt) if isinstance(v, (int, float)) else v}")
    return " ".join(out)


def task_rows(tasks) -> list[dict[str, Any]]:
    """Rows from live runner tasks."""
    rows = []
    for t in tasks:
        rec = t.record
        label = f"shared {rec.get('unit_stage')} ({rec.get('target')})" if t.kind == "unit" else rec.get("label", "")
        latest = t.latest if t.status == "running" else ""
        if t.status == "failed":
            err = (rec.get("error") or "").strip().splitlines()
            latest = err[0] if err else ""
        rows.append(
            {
                "id": t.id if t.kind == "run" else f"shared/{t.id}",
                "label": label,
                "seed": rec.get("seed"),
                "status": t.status,
                "stage": rec.get("stage") or "",
                "elapsed": t.elapsed(),
                "latest": latest,
                "metrics": rec.get("metrics"),
            }
        )
    return rows


def runs_table(rows: Sequence[dict[str, Any]], metric_names: Sequence[str], title: str = "") -> Table:
    t = Table(title=title)
    for col in ("run", "label", "seed", "status", "stage", "elapsed", "latest"):
        t.add_column(col, overflow="fold", justify="right" if col == "elapsed" else "left")
    for r in rows:
        st = r["status"]
        latest = r.get("latest") or _metrics_text(r.get("metrics"), metric_names)
        t.add_row(
            r["id"],
            escape(r["label"] or ""),
            "" if r.get("seed") is None else str(r["seed"]),
            f"[{STYLE.get(st, 'white')}]{st}[/]",
            r.get("stage") or "",
            _fmt_time(r.get("elapsed") or 0),
            escape(latest),
        )
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    t.caption = ", ".join(f"{n} {s}" for s, n in counts.items())
    return t


def status_json(rows: Sequence[dict[str, Any]]) -> str:
    return json.dumps(list(rows), indent=2, default=str)
