"""`illume-kit sweep plan|run|status` and `illume-kit results`: ablations from one YAML file.

Torch-free at import and in ``plan``/``status``/``results``: the runs themselves are separate
``illume-kit train``/``eval`` processes started by the runner.
"""

from __future__ import annotations

import sys
from pathlib import Path

from illume_kit.cli.args import check_output_dir, positive_int


def _sweep_dir(args, spec=None) -> Path:
    if args.output:
        return Path(args.output)
    if spec is None:
        from illume_kit.sweep.spec import load_sweep

        spec, _ = load_sweep(args.file)
    if getattr(args, "quick", False):
        from illume_kit.sweep.spec import quick_spec

        spec = quick_spec(spec, args.file)
    from illume_kit.sweep.plan import default_sweep_dir

    return default_sweep_dir(spec)


def _again(args) -> str:
    """The command that resumes this sweep."""
    out = f" -o {args.output}" if args.output else ""
    return f"illume-kit sweep run {args.file}{out}" + (" --quick" if args.quick else "")


def _plan(args):
    """Plan and freeze, or print every invalid run and return None."""
    from rich.markup import escape
    from rich.table import Table

    from illume_kit.cli.output import console, err_console
    from illume_kit.sweep.plan import SweepPlanError, plan_sweep
    from illume_kit.sweep.shared import yaml_value

    if args.output:
        check_output_dir(args.output)
    try:
        plan = plan_sweep(args.file, args.output, force=args.force, quick=args.quick)
    except SweepPlanError as exc:
        err_console.print(
            f"[bold red]error:[/] sweep {args.file}: {len(exc.bad)} of {exc.total} runs are invalid; "
            "nothing was written"
        )
        t = Table(show_lines=True)
        for col in ("run", "label", "overrides", "problems"):
            t.add_column(col, overflow="fold")
        for run, err in exc.bad:
            ov = "\n".join(f"{k}={yaml_value(v)}" for k, v in run.overrides.items())
            t.add_row(run.run_id, escape(run.label), escape(ov), escape("\n".join(str(p) for p in err.problems)))
        err_console.print(t)
        return None
    moved = plan.write(force=args.force)
    for w in plan.warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}")
    if moved:
        console.print(f"[yellow]moved to .stale/ (recipe changed):[/] {', '.join(moved)}")
    return plan


def cmd_plan(args) -> int:
    import json

    from illume_kit.cli.output import console
    from illume_kit.sweep.display import plan_table

    plan = _plan(args)
    if plan is None:
        return 2
    data = plan.to_json()
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    console.print(plan_table(data))
    console.print(f"frozen recipes in {plan.sweep_dir}/<run>/recipe.yaml; run with: {_again(args)}")
    return 0


def cmd_run(args) -> int:
    """Exit status: 0 all done, 1 some run failed, 2 bad input (or another runner / a left step in
    the folder), 128 + signal number when stopped by a signal (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP)."""
    import signal

    from illume_kit.cli.output import err_console
    from illume_kit.sweep.runner import SweepInterrupted

    try:
        return _run(args)
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, SweepInterrupted) else int(signal.SIGINT)
        ended = exc.interrupted if isinstance(exc, SweepInterrupted) else []
        what = f"{len(ended)} running run(s) ended and marked interrupted" if ended else "no run was running"
        again = _again(args)
        err_console.print(
            f"sweep {args.file}: stopped by {signal.Signals(signum).name}; {what}; rerun `{again}` to resume",
            markup=False,
        )
        return 128 + signum


def _run(args) -> int:
    import contextlib

    from illume_kit.sweep.runner import SweepLock

    with contextlib.ExitStack() as stack:
        # one runner per folder, taken before planning where the folder exists (planning rewrites
        # the frozen recipes), else as soon as planning has made it
        before = _sweep_dir(args).resolve()
        held = stack.enter_context(SweepLock(before)) if before.is_dir() else None
        plan = _plan(args)
        if plan is None:
            return 2
        if held is None or held.path.parent != plan.sweep_dir:
            stack.enter_context(SweepLock(plan.sweep_dir))
        return _run_planned(args, plan)


def _run_planned(args, plan) -> int:
    from illume_kit.cli.output import console
    from illume_kit.sweep.display import runs_table, task_rows
    from illume_kit.sweep.launchers import make_launcher
    from illume_kit.sweep.runner import SweepRunner

    data = plan.to_json()
    launcher = make_launcher(args.launcher, plan.sweep_dir, plan.spec.slurm, jobs=args.jobs)
    metric_names = plan.spec.metric_names()
    title = f"sweep {plan.spec.name} ({args.launcher}, {args.jobs} at a time) -> {plan.sweep_dir}"
    live = None
    seen: dict[str, str] = {}

    def lines(tasks) -> None:
        for r in task_rows(tasks):
            key = f"{r['status']}:{r['stage']}"
            if seen.get(r["id"]) != key:
                seen[r["id"]] = key
                extra = f" {r['latest']}" if r["status"] == "failed" else ""
                console.print(f"{r['id']} [{r['label']}] {r['status']} {r['stage']}{extra}", markup=False)

    def update(tasks) -> None:
        live.update(runs_table(task_rows(tasks), metric_names, title))

    runner = SweepRunner(data, plan.sweep_dir, launcher, jobs=args.jobs, on_change=None, lock=False)
    use_live = not args.no_live and console.is_terminal
    if use_live:
        from rich.live import Live

        live = Live(runs_table(task_rows(runner.tasks), metric_names, title), console=console, refresh_per_second=2)
        runner.on_change = update
        with live:
            summary = runner.run()
    else:
        console.print(f"{title}: {len(data['runs'])} runs, {len(data['units'])} shared units")
        runner.on_change = lines
        summary = runner.run()
        console.print(runs_table(task_rows(runner.tasks), metric_names, title))
    done, failed = summary.get("done", 0), summary.get("failed", 0)
    console.print(
        f"{done} done, {failed} failed of {sum(summary.values())} runs; table: illume-kit results {plan.sweep_dir}"
    )
    return 1 if failed else 0


def cmd_status(args) -> int:
    from illume_kit.cli.output import console
    from illume_kit.sweep.display import runs_table, status_json, task_rows
    from illume_kit.sweep.plan import read_plan
    from illume_kit.sweep.runner import build_tasks

    target = Path(args.file)
    sweep_dir = target if target.is_dir() else _sweep_dir(args)
    plan = read_plan(sweep_dir)
    tasks = [t.seen_from_outside() for t in build_tasks(plan, sweep_dir)]
    if args.time:
        from illume_kit.sweep.timing import time_rows, time_table

        times = time_rows(tasks, plan)
        if args.json:
            print(status_json(times))
        else:
            title = f"where the time of sweep {plan['sweep']} goes ({sweep_dir})"
            console.print(time_table(times, args.jobs, title))
        return 0
    rows = task_rows(tasks)
    if args.json:
        print(status_json(rows))
        return 0
    names = [m if isinstance(m, str) else m["name"] for m in plan.get("metrics", [])]
    console.print(runs_table(rows, names, f"sweep {plan['sweep']} in {sweep_dir}"))
    return 0


def cmd_results(args) -> int:
    import json

    from illume_kit.cli.output import console, err_console
    from illume_kit.sweep.results import agreement, agreement_rows, collect, plot, render, render_agreement

    if args.against and args.format not in ("table", "md", "json"):
        err_console.print(f"--against shows its table with --format table, md or json, not {args.format}")
        return 2
    res = collect(args.sweep_dir, metrics=args.metric or None)
    out = render(res, args.format)
    ref = collect(args.against, metrics=args.metric or None) if args.against else None
    found = agreement(res, ref) if ref is not None else None
    if args.format == "table":
        console.print(out)
        if found is not None:
            console.print(render_agreement(found, ref.name))
    elif args.format == "json" and found is not None:
        data = json.loads(out)
        data["against"] = {"sweep": ref.name, "pairs": agreement_rows(found)}
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        sys.stdout.write(out)
        if found is not None:
            sys.stdout.write("\n" + render_agreement(found, ref.name, "md"))
    if args.plot:
        path = plot(res, args.plot)
        print(f"plot: {path}", file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser("sweep", help="ablation sweeps: plan (expand, validate, freeze), run, status")
    verbs = p.add_subparsers(dest="sweep_verb", metavar="ACTION", required=True)

    def common(q, force_help: str) -> None:
        q.add_argument("file", help="sweep YAML (or a recipe with a `sweep:` block)")
        q.add_argument("-o", "--output", metavar="SWEEP_DIR", help="sweep folder (default: sweeps/<name>)")
        q.add_argument("--force", action="store_true", help=force_help)
        q.add_argument(
            "--quick",
            action="store_true",
            help="the sweep's `quick:` variant (fewer seeds and steps) in sweeps/<name>_quick",
        )

    force = "expand past max_runs; replace frozen recipes of started runs (moved to .stale/)"
    q = verbs.add_parser("plan", help="expand every run, validate all, show them and freeze each recipe")
    common(q, force)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_plan)
    q = verbs.add_parser("run", help="plan, then train and evaluate every run (skips finished runs, resumes others)")
    common(q, force)
    q.add_argument("-j", "--jobs", type=positive_int, default=1, help="runs at a time (default 1)")
    q.add_argument(
        "--launcher",
        choices=["local", "slurm"],
        default="local",
        help="local subprocesses, or slurm jobs via submitit (pip install submitit)",
    )
    q.add_argument("--no-live", action="store_true", help="print one line per change instead of a live table")
    q.set_defaults(func=cmd_run)
    q = verbs.add_parser("status", help="each run's status, stage, wall time and metrics")
    q.add_argument("file", help="sweep YAML or SWEEP_DIR")
    q.add_argument("-o", "--output", metavar="SWEEP_DIR")
    q.add_argument("--json", action="store_true")
    q.add_argument("--time", action="store_true", help="where the time goes: wall time per arm and stage")
    q.add_argument("--quick", action="store_true", help="the sweep's --quick variant (sweeps/<name>_quick)")
    q.add_argument(
        "-j", "--jobs", type=positive_int, help="with --time: also estimate the wall time at this many runs at a time"
    )
    q.set_defaults(func=cmd_status)

    p = sub.add_parser("results", help="a sweep's results table: mean ± std over seeds, best and arrows")
    p.add_argument("sweep_dir")
    p.add_argument("--format", default="table", choices=["table", "md", "csv", "json", "latex"])
    p.add_argument("--metric", action="append", metavar="NAME", help="metrics to show (default: the sweep's)")
    p.add_argument("--plot", metavar="OUT.png", help="also plot each metric against the swept settings")
    p.add_argument(
        "--against",
        metavar="SWEEP_DIR",
        help="also check that this sweep ranks each pair of rows as that one does (e.g. a --quick sweep "
        "against the full one), where that one's seeds separate the pair",
    )
    p.set_defaults(func=cmd_results)
