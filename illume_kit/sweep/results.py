"""Results: a sweep folder -> one row per setting, mean ± std over seeds, best and better/worse marked.

Runs are grouped by their overrides minus ``run.seed``; rows keep the plan's order and the first
row is the baseline the arrows compare against (▲ better, ▼ worse, = same, by the metric's goal,
so ▲ on a loss means it went down). The best mean per metric is starred (bold where the format has
bold). Failed, pending and unplanned runs are counted in a footer rather than silently dropped: a
table that hides a crashed seed overstates n. Two rows whose means differ by no more than the sum of
their seed stds are listed under the table as not separated on that metric (``within_spread`` in
json): a ranking that rests on such a difference is not one the seeds support. Metric goals and formats come from
``eval/specs.py`` unless the sweep gives them; a metric a row lacks (SigLIP-only has no pixel
decoder, so no ``rec/psnr``) is shown as ``–``.

Formats: ``table`` (rich), ``md`` and ``latex`` for papers, ``csv`` and ``json`` for notebooks.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from illume_kit.eval.specs import MetricSpec, metric_spec
from illume_kit.sweep.plan import RUN_FILE, read_plan
from illume_kit.sweep.runner import read_json
from illume_kit.sweep.spec import SEED_KEY

DASH = "–"


@dataclass
class Cell:
    values: list[float]
    mean: float = math.nan
    std: float = math.nan
    best: bool = False
    vs_base: int | None = None  # +1 better than the baseline row, -1 worse, 0 same, None: baseline / missing

    @property
    def n(self) -> int:
        return len(self.values)


@dataclass
class Row:
    group: dict[str, Any]
    label: str
    run_ids: list[str]
    cells: dict[str, Cell] = field(default_factory=dict)
    seeds: list[Any] = field(default_factory=list)


@dataclass
class Results:
    name: str
    columns: list[str]  # swept keys shown as columns
    metrics: list[MetricSpec]
    rows: list[Row]
    counts: dict[str, int]
    failed: list[tuple[str, str, str]]  # (run id, label, first error line)


def _stats(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def _spec(entry: Any) -> tuple[str, str | None, str | None]:
    return (entry, None, None) if isinstance(entry, str) else (entry["name"], entry.get("goal"), entry.get("fmt"))


def _metric_specs(requested: list[Any], found: list[str]) -> list[MetricSpec]:
    """Requested names (a prefix matches ``name/<codebook>`` keys), else everything found."""
    out: list[MetricSpec] = []
    for entry in requested or sorted(found):
        name, goal, fmt = _spec(entry)
        names = (
            [name]
            if name in found or not any(k.startswith(name + "/") for k in found)
            else sorted(k for k in found if k.startswith(name + "/"))
        )
        for n in names:
            try:
                base = metric_spec(n)
            except KeyError:
                base = MetricSpec(n, goal or "max", fmt or ".4f")
            out.append(MetricSpec(n, goal or base.goal, fmt or base.fmt, base.description, base.unit))
    return out


def collect(sweep_dir: str | Path, metrics: list[Any] | None = None) -> Results:
    sweep_dir = Path(sweep_dir)
    plan = read_plan(sweep_dir)
    runs = plan["runs"]
    records = {r["id"]: read_json(sweep_dir / r["id"] / RUN_FILE) for r in runs}
    values: dict[str, dict[str, float]] = {}
    for r in runs:
        rec = records[r["id"]]
        m = rec.get("metrics")
        if m is None and rec.get("status") == "done":
            m = read_json(sweep_dir / r["id"] / "eval" / "metrics.json").get("metrics")
        if rec.get("status") == "done" and m:
            values[r["id"]] = {k: float(v) for k, v in m.items() if isinstance(v, (int, float))}
    found = sorted({k for v in values.values() for k in v})
    specs = _metric_specs(metrics if metrics is not None else plan.get("metrics", []), found)

    rows: dict[str, Row] = {}
    for r in runs:
        group = {k: v for k, v in r["overrides"].items() if k != SEED_KEY}
        key = json.dumps(group, sort_keys=True, default=str)
        row = rows.setdefault(key, Row(group, r["label"], []))
        row.run_ids.append(r["id"])
        if r["id"] in values:
            row.seeds.append(r.get("seed"))
    ordered = list(rows.values())
    # columns: the grid/zip keys that vary (a variant is one column, not the keys it overrides)
    keys = sorted({k for r in runs if not r.get("variant") for k in r.get("axes", r["overrides"]) if k != SEED_KEY})
    columns = [k for k in keys if len({json.dumps(row.group.get(k), default=str) for row in ordered}) > 1]
    if any(r.get("variant") for r in runs):
        columns = ["variant"] + columns
        for row in ordered:
            row.group = {"variant": next((r.get("variant") for r in runs if r["id"] in row.run_ids), None), **row.group}
    for row in ordered:
        for s in specs:
            vals = [
                values[i][s.name]
                for i in row.run_ids
                if i in values and s.name in values[i] and not math.isnan(values[i][s.name])
            ]
            mean, std = _stats(vals)
            row.cells[s.name] = Cell(vals, mean, std)
    for s in specs:
        cells = [row.cells[s.name] for row in ordered if row.cells[s.name].n]
        if len({c.mean for c in cells}) > 1:  # no star when every row ties
            best = s.best([c.mean for c in cells])
            for c in cells:
                c.best = c.mean == best
        base = ordered[0].cells[s.name] if ordered else None
        for row in ordered[1:]:
            c = row.cells[s.name]
            if c.n and base is not None and base.n:
                c.vs_base = s.compare(c.mean, base.mean)
    counts: dict[str, int] = {}
    failed = []
    for r in runs:
        st = records[r["id"]].get("status", "missing") if records[r["id"]] else "missing"
        counts[st] = counts.get(st, 0) + 1
        if st == "failed":
            err = (records[r["id"]].get("error") or "").strip().splitlines()
            failed.append((r["id"], r["label"], err[-1] if err else ""))
    return Results(plan.get("sweep", sweep_dir.name), columns, specs, ordered, counts, failed)


# -- rendering -----------------------------------------------------------------------------------
ARROW = {1: "▲", -1: "▼", 0: "="}
LATEX = {
    "\\": r"\textbackslash{}",
    "_": r"\_",
    "%": r"\%",
    "&": r"\&",
    "#": r"\#",
    "$": r"\$",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\^{}",
}


def _value(row: Row, col: str) -> str:
    v = row.group.get(col)
    return DASH if v is None else (v if isinstance(v, str) else json.dumps(v, default=str))


def _cell_text(c: Cell, s: MetricSpec, pm: str = "±", arrows: dict[int, str] = ARROW, n_row: int = 0) -> str:
    if not c.n:
        return DASH
    text = format(c.mean, s.fmt)
    if c.n > 1:
        text += f" {pm} {format(c.std, s.fmt)}"
    if c.n < n_row:  # some finished seeds lack this metric
        text += f" (n={c.n})"
    if c.vs_base is not None:
        text += f" {arrows[c.vs_base]}"
    return text


def _n(row: Row) -> str:
    return f"{len(row.seeds)}/{len(row.run_ids)}"


def _head(s: MetricSpec, up: str = "↑", down: str = "↓") -> str:
    return f"{s.name} {up if s.goal == 'max' else down}"


@dataclass(frozen=True)
class Overlap:
    """Two rows whose means on a metric differ by no more than the sum of their seed stds: the seeds
    do not separate them, whichever mean is higher."""

    metric: str
    rows: tuple[str, str]
    difference: float
    spread: float


def overlaps(res: Results) -> list[Overlap]:
    """Every pair of rows, per metric, that two or more seeds each cannot tell apart."""
    out = []
    for s in res.metrics:
        cells = [(row.label, row.cells[s.name]) for row in res.rows if row.cells[s.name].n > 1]
        for i, (la, a) in enumerate(cells):
            for lb, b in cells[i + 1 :]:
                diff, spread = abs(a.mean - b.mean), a.std + b.std
                if diff <= spread:
                    out.append(Overlap(s.name, (la, lb), diff, spread))
    return out


def spread_notes(res: Results) -> list[str]:
    """One line per metric listing the row pairs within their seed spread, and a line when rows have
    a single seed (no spread to judge a difference by)."""
    by_metric: dict[str, list[Overlap]] = {}
    for o in overlaps(res):
        by_metric.setdefault(o.metric, []).append(o)
    lines = []
    for s in res.metrics:
        found = by_metric.get(s.name)
        if found:
            pairs = ", ".join(
                f"{a} vs {b} (Δ {format(o.difference, s.fmt)} ≤ {format(o.spread, s.fmt)})"
                for o in found
                for a, b in [o.rows]
            )
            lines.append(f"{s.name}: within the seed spread (std sum), not separated: {pairs}")
    single = [row.label for row in res.rows if len(row.seeds) == 1]
    if single:
        lines.append(f"one seed only, no spread to judge differences by: {', '.join(single)}")
    return lines


@dataclass
class Agreement:
    metric: str
    rows: tuple[str, str]
    reference: float  # mean difference (first - second) in the reference sweep
    difference: float  # the same in the checked sweep
    separated: bool  # the reference tells the pair apart: |difference| > std sum, 2+ seeds each

    @property
    def agrees(self) -> bool | None:
        """Same order as the reference where the reference separates the pair; None: not judged."""
        if not self.separated or math.isnan(self.difference):
            return None
        return (self.difference > 0) == (self.reference > 0)


def agreement(res: Results, reference: Results) -> list[Agreement]:
    """Whether ``res`` (e.g. a ``--quick`` sweep) ranks each pair of rows as ``reference`` (the full
    sweep) does, per metric both report; rows are matched by label. A pair the reference cannot tell
    apart (within its seed spread) is listed but not judged."""
    ref_rows = {row.label: row for row in reference.rows}
    names = [s.name for s in res.metrics if any(s.name == r.name for r in reference.metrics)]
    out = []
    for name in names:
        rows = [row for row in res.rows if row.label in ref_rows and row.cells[name].n]
        for i, a in enumerate(rows):
            for b in rows[i + 1 :]:
                ra, rb = ref_rows[a.label].cells.get(name), ref_rows[b.label].cells.get(name)
                if ra is None or rb is None or not ra.n or not rb.n:
                    continue
                ref = ra.mean - rb.mean
                separated = ra.n > 1 and rb.n > 1 and abs(ref) > ra.std + rb.std
                diff = a.cells[name].mean - b.cells[name].mean
                out.append(Agreement(name, (a.label, b.label), ref, diff, separated))
    return out


def agreement_rows(found: list[Agreement]) -> list[dict[str, Any]]:
    """The agreement as plain data (what ``results --against --format json`` prints)."""
    return [
        {
            "metric": g.metric,
            "rows": list(g.rows),
            "reference": g.reference,
            "difference": g.difference,
            "separated": g.separated,
            "agrees": g.agrees,
        }
        for g in found
    ]


def render_agreement(found: list[Agreement], reference_name: str, fmt: str = "table") -> str | Any:
    """The agreement as a table (rich, ``md``) or ``json``."""
    if fmt == "json":
        return json.dumps(agreement_rows(found), indent=2)
    word = {True: "yes", False: "NO", None: "not judged (within the reference's seed spread)"}
    head = ["metric", "pair", f"Δ in {reference_name}", "Δ here", "same order"]
    lines = [
        [g.metric, f"{g.rows[0]} − {g.rows[1]}", f"{g.reference:+.4g}", f"{g.difference:+.4g}", word[g.agrees]]
        for g in found
    ]
    judged = [g.agrees for g in found if g.agrees is not None]
    summary = f"{sum(judged)} of {len(judged)} separated pairs in the same order as {reference_name}"
    if fmt == "md":
        text = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        text += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(text) + f"\n\n{summary}\n"
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=f"ranking against {reference_name}", caption=summary)
    for col in head:
        t.add_column(col)
    for line in lines:
        t.add_row(*(escape(x) for x in line))
    return t


def footer(res: Results) -> str:
    total = sum(res.counts.values())
    parts = [f"{n} {st}" for st, n in sorted(res.counts.items(), key=lambda kv: kv[0] != "done")]
    text = (
        f"{total} runs: " + ", ".join(parts) + "; n: finished/planned runs per row; mean ± std over "
        "seeds; ▲/▼ better/worse than the first row; * best"
    )
    for line in spread_notes(res):
        text += f"\n{line}"
    for rid, label, err in res.failed:
        text += f"\nfailed {rid} [{label}]: {err}"
    return text


def to_rows(res: Results) -> list[dict[str, Any]]:
    """Plain records (json/csv): per metric mean, std, n, best, vs_baseline."""
    out = []
    for row in res.rows:
        rec: dict[str, Any] = {
            "label": row.label,
            **{c: row.group.get(c) for c in res.columns},
            "runs": row.run_ids,
            "seeds": row.seeds,
        }
        for s in res.metrics:
            c = row.cells[s.name]
            rec[s.name] = {
                "mean": None if not c.n else c.mean,
                "std": None if not c.n else c.std,
                "n": c.n,
                "best": c.best,
                "vs_baseline": c.vs_base,
                "goal": s.goal,
            }
        out.append(rec)
    return out


def render(res: Results, fmt: str = "table") -> str | Any:
    """``md``/``csv``/``json``/``latex`` return text; ``table`` returns a rich Table."""
    if fmt == "json":
        return json.dumps(
            {
                "sweep": res.name,
                "columns": res.columns,
                "metrics": [s.name for s in res.metrics],
                "rows": to_rows(res),
                "counts": res.counts,
                "within_spread": [
                    {"metric": o.metric, "rows": list(o.rows), "difference": o.difference, "spread": o.spread}
                    for o in overlaps(res)
                ],
                "failed": [{"id": i, "label": lab, "error": e} for i, lab, e in res.failed],
            },
            indent=2,
        )
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(
            [
                "label",
                *res.columns,
                "n_runs",
                *[f"{s.name}_{x}" for s in res.metrics for x in ("mean", "std", "n", "best", "vs_baseline")],
            ]
        )
        for row in res.rows:
            vals = []
            for s in res.metrics:
                c = row.cells[s.name]
                vals += [
                    "" if not c.n else repr(c.mean),
                    "" if not c.n else repr(c.std),
                    c.n,
                    int(c.best),
                    "" if c.vs_base is None else c.vs_base,
                ]
            w.writerow([row.label, *[_value(row, c) for c in res.columns], len(row.run_ids), *vals])
        return buf.getvalue()
    cols = res.columns or ["label"]

    def keys(row: Row) -> list[str]:
        return [*(_value(row, c) if c != "label" else row.label for c in cols), _n(row)]

    def cells(row: Row, star, **kw) -> list[str]:
        out = []
        for s in res.metrics:
            c = row.cells[s.name]
            txt = _cell_text(c, s, n_row=len(row.seeds), **kw)
            out.append(star(txt) if c.best else txt)
        return out

    if fmt == "md":
        lines = [
            "| " + " | ".join([*cols, "n", *(_head(s) for s in res.metrics)]) + " |",
            "|" + "---|" * (len(cols) + 1) + "---:|" * len(res.metrics),
        ]
        for row in res.rows:
            lines.append("| " + " | ".join([*keys(row), *cells(row, lambda t: f"**{t}**")]) + " |")
        return "\n".join(lines) + "\n\n" + footer(res).replace("\n", "  \n") + "\n"
    if fmt == "latex":

        def esc(t: str) -> str:
            return "".join(LATEX.get(ch, ch) for ch in t)

        arrows = {1: r"$\blacktriangle$", -1: r"$\blacktriangledown$", 0: "="}
        heads = [esc(s.name) + (r" $\uparrow$" if s.goal == "max" else r" $\downarrow$") for s in res.metrics]
        lines = [
            r"\begin{tabular}{" + "l" * (len(cols) + 1) + "r" * len(res.metrics) + "}",
            r"\toprule",
            " & ".join([*(esc(c) for c in cols), "n", *heads]) + r" \\",
            r"\midrule",
        ]
        for row in res.rows:
            body = [
                t.replace(DASH, "--") for t in cells(row, lambda t: r"\textbf{" + t + "}", pm=r"$\pm$", arrows=arrows)
            ]
            lines.append(" & ".join([*(esc(k) for k in keys(row)), *body]) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", "% " + footer(res).replace("\n", "\n% ")]
        return "\n".join(lines) + "\n"
    if fmt == "table":
        from rich.markup import escape
        from rich.table import Table

        t = Table(title=f"sweep {res.name}", caption=escape(footer(res)), caption_justify="left")
        for c in cols:
            t.add_column(c, overflow="fold")
        t.add_column("n", justify="right")
        for s in res.metrics:
            t.add_column(_head(s), justify="right")
        for row in res.rows:
            t.add_row(*[escape(k) for k in keys(row)], *cells(row, lambda x: f"[bold green]{x} *[/]"))
        return t
    raise ValueError(f"unknown format {fmt!r} (valid: table, md, csv, json, latex)")


def plot(res: Results, path: str | Path) -> Path:
    """One panel per metric against the swept setting, error bars = std over seeds (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = res.metrics or []
    if not metrics:
        raise ValueError("no metrics to plot (no finished run has a metrics.json)")
    numeric_axis = None
    if (
        len(res.columns) == 1
        and res.columns[0] != "variant"
        and all(isinstance(r.group.get(res.columns[0]), (int, float)) for r in res.rows)
    ):
        numeric_axis = res.columns[0]
    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    labels = [" ".join(_value(r, c) for c in res.columns) or r.label for r in res.rows]
    for ax, s in zip(axes.flat, metrics):
        cells = [r.cells[s.name] for r in res.rows]
        xs = [r.group[numeric_axis] for r in res.rows] if numeric_axis else list(range(len(res.rows)))
        ys = [c.mean for c in cells]
        es = [c.std if c.n > 1 else 0.0 for c in cells]
        ax.errorbar(xs, ys, yerr=es, fmt="o-" if numeric_axis else "o", capsize=4)
        for x, c in zip(xs, cells):
            if c.best:
                ax.plot([x], [c.mean], "*", markersize=14, color="tab:orange")
        ax.set_title(_head(s))
        if numeric_axis:
            ax.set_xlabel(numeric_axis)
        else:
            ax.set_xticks(xs)
            ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    fig.suptitle(f"sweep {res.name}: mean ± std over seeds")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
