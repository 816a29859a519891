"""Results from synthetic sweep folders: grouping over seeds, mean ± std, best, arrows, failures."""

import csv
import io
import json
import math

import pytest

from illume_kit.sweep.results import collect, plot, render

# psnr (max) and a loss (min) per (tokenizer, seed); one vqgan seed failed, one siglip seed never ran
RUNS = [
    ("d0", "dualvitok", 0, "done", {"rec/psnr": 20.0, "train/loss": 1.0, "code/usage/pixel": 0.5}),
    ("d1", "dualvitok", 1, "done", {"rec/psnr": 22.0, "train/loss": 1.2, "code/usage/pixel": 0.7}),
    ("v0", "vqgan", 0, "done", {"rec/psnr": 25.0, "train/loss": 2.0, "code/usage/pixel": 0.2}),
    ("v1", "vqgan", 1, "failed", None),
    ("s0", "siglip", 0, "done", {"train/loss": 0.5}),  # no pixel decoder: no psnr
    ("s1", "siglip", 1, None, None),
]


@pytest.fixture
def sweep_dir(tmp_path):
    runs = []
    for rid, tok, seed, status, metrics in RUNS:
        ov = {"tokenizer.name": tok, "run.seed": seed}
        runs.append(
            {
                "id": rid,
                "label": f"tokenizer={tok}",
                "variant": None,
                "seed": seed,
                "overrides": ov,
                "axes": {"tokenizer.name": tok},
            }
        )
        folder = tmp_path / rid
        folder.mkdir()
        if status:
            rec = {"status": status}
            if status == "failed":
                rec["error"] = "train exited with status 1:\nTraceback ...\nRuntimeError: out of memory"
            (folder / "run.json").write_text(json.dumps(rec))
        if metrics:
            (folder / "eval").mkdir()
            (folder / "eval" / "metrics.json").write_text(json.dumps({"metrics": metrics}))
    plan = {
        "sweep": "demo",
        "runs": runs,
        "units": {},
        "metrics": ["rec/psnr", {"name": "train/loss", "fmt": ".2f"}, "code/usage"],
    }
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    return tmp_path


def test_groups_over_seeds_with_mean_std_n(sweep_dir):
    res = collect(sweep_dir)
    assert res.columns == ["tokenizer.name"]
    assert [m.name for m in res.metrics] == ["rec/psnr", "train/loss", "code/usage/pixel"]  # prefix expanded
    d, v, s = res.rows
    assert d.group["tokenizer.name"] == "dualvitok" and d.run_ids == ["d0", "d1"]
    c = d.cells["rec/psnr"]
    assert c.n == 2 and c.mean == 21.0 and math.isclose(c.std, math.sqrt(2.0))  # sample std
    assert v.cells["rec/psnr"].n == 1 and v.cells["rec/psnr"].std == 0.0
    assert s.cells["rec/psnr"].n == 0 and math.isnan(s.cells["rec/psnr"].mean)


def test_best_and_arrows_follow_each_metric_goal(sweep_dir):
    d, v, s = collect(sweep_dir).rows
    assert v.cells["rec/psnr"].best and not d.cells["rec/psnr"].best  # higher psnr is better
    assert s.cells["train/loss"].best and not v.cells["train/loss"].best  # lower loss is better
    assert d.cells["rec/psnr"].vs_base is None  # the first row is the baseline
    assert v.cells["rec/psnr"].vs_base == 1 and v.cells["train/loss"].vs_base == -1
    assert s.cells["train/loss"].vs_base == 1 and s.cells["rec/psnr"].vs_base is None


def test_failed_and_missing_runs_are_counted(sweep_dir):
    res = collect(sweep_dir)
    assert res.counts == {"done": 4, "failed": 1, "missing": 1}
    assert res.failed == [("v1", "tokenizer=vqgan", "RuntimeError: out of memory")]
    md = render(res, "md")
    assert "6 runs: 4 done, 1 failed, 1 missing" in md and "failed v1 [tokenizer=vqgan]: RuntimeError" in md


def test_markdown_table(sweep_dir):
    lines = render(collect(sweep_dir), "md").splitlines()
    assert lines[0] == "| tokenizer.name | n | rec/psnr ↑ | train/loss ↓ | code/usage/pixel ↑ |"
    assert lines[2] == "| dualvitok | 2/2 | 21.00 ± 1.41 | 1.10 ± 0.14 | **0.600 ± 0.141** |"
    assert lines[3] == "| vqgan | 1/2 | **25.00 ▲** | 2.00 ▼ | 0.200 ▼ |"
    assert lines[4] == "| siglip | 1/2 | – | **0.50 ▲** | – |"


def test_csv_json_latex(sweep_dir):
    res = collect(sweep_dir)
    rows = list(csv.DictReader(io.StringIO(render(res, "csv"))))
    assert rows[0]["tokenizer.name"] == "dualvitok" and float(rows[0]["rec/psnr_mean"]) == 21.0
    assert rows[1]["rec/psnr_best"] == "1" and rows[1]["rec/psnr_vs_baseline"] == "1"
    assert rows[2]["rec/psnr_n"] == "0" and rows[2]["rec/psnr_mean"] == ""
    data = json.loads(render(res, "json"))
    assert data["rows"][0]["rec/psnr"] == {
        "mean": 21.0,
        "std": pytest.approx(math.sqrt(2)),
        "n": 2,
        "best": False,
        "vs_baseline": None,
        "goal": "max",
    }
    assert data["counts"]["failed"] == 1
    tex = render(res, "latex")
    assert r"\textbf{25.00 $\blacktriangle$}" in tex and r"rec/psnr $\uparrow$" in tex
    assert r"tokenizer.name & n &" in tex and r"21.00 $\pm$ 1.41" in tex and "& -- &" in tex
    with pytest.raises(ValueError, match="unknown format"):
        render(res, "html")


def test_metrics_can_be_chosen_and_ties_get_no_star(sweep_dir):
    res = collect(sweep_dir, metrics=[{"name": "rec/psnr", "goal": "min"}])
    assert [m.name for m in res.metrics] == ["rec/psnr"]
    assert res.rows[0].cells["rec/psnr"].best  # goal given in the sweep wins over the spec's
    (sweep_dir / "v0" / "eval" / "metrics.json").write_text(json.dumps({"metrics": {"rec/psnr": 21.0}}))
    res = collect(sweep_dir, metrics=["rec/psnr"])
    assert not any(r.cells["rec/psnr"].best for r in res.rows)
    assert res.rows[1].cells["rec/psnr"].vs_base == 0


def test_plot_writes_a_png(sweep_dir, tmp_path):
    out = plot(collect(sweep_dir), tmp_path / "plots" / "r.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def _two_seed_sweep(folder, values):
    """arm -> [metric dict per seed]: a finished sweep folder with one run per (arm, seed)."""
    runs = []
    for arm, per_seed in values.items():
        for seed, metrics in enumerate(per_seed):
            rid = f"{arm}{seed}"
            runs.append(
                {
                    "id": rid,
                    "label": f"variant={arm}",
                    "variant": arm,
                    "seed": seed,
                    "overrides": {"run.seed": seed, "x": arm},
                    "axes": {},
                }
            )
            (folder / rid / "eval").mkdir(parents=True)
            (folder / rid / "run.json").write_text(json.dumps({"status": "done"}))
            (folder / rid / "eval" / "metrics.json").write_text(json.dumps({"metrics": metrics}))
    (folder / "plan.json").write_text(
        json.dumps({"sweep": "arms", "runs": runs, "units": {}, "metrics": ["und/accuracy", "gen/accuracy"]})
    )
    return folder


def test_arms_within_their_seed_spread_are_noted_as_not_separated(tmp_path):
    from illume_kit.sweep.results import overlaps, spread_notes

    sweep = _two_seed_sweep(
        tmp_path,
        {  # und: a and b overlap (0.80±0.07 vs 0.85±0.07), c is far below both; gen: all apart
            "a": [{"und/accuracy": 0.75, "gen/accuracy": 0.90}, {"und/accuracy": 0.85, "gen/accuracy": 0.92}],
            "b": [{"und/accuracy": 0.80, "gen/accuracy": 0.50}, {"und/accuracy": 0.90, "gen/accuracy": 0.52}],
            "c": [{"und/accuracy": 0.30, "gen/accuracy": 0.10}, {"und/accuracy": 0.32, "gen/accuracy": 0.12}],
        },
    )
    res = collect(sweep)
    found = overlaps(res)
    assert [(o.metric, o.rows) for o in found] == [("und/accuracy", ("variant=a", "variant=b"))]
    assert found[0].difference == pytest.approx(0.05) and found[0].spread == pytest.approx(2 * math.sqrt(0.005))
    notes = spread_notes(res)
    assert len(notes) == 1 and notes[0].startswith("und/accuracy: within the seed spread")
    assert "variant=a vs variant=b" in render(res, "md")
    data = json.loads(render(res, "json"))
    assert data["within_spread"] == [
        {
            "metric": "und/accuracy",
            "rows": ["variant=a", "variant=b"],
            "difference": pytest.approx(0.05),
            "spread": pytest.approx(0.1414, abs=1e-4),
        }
    ]


def test_a_single_seed_is_said_to_have_no_spread(sweep_dir):
    from illume_kit.sweep.results import spread_notes

    notes = spread_notes(collect(sweep_dir))
    assert notes == ["one seed only, no spread to judge differences by: tokenizer=vqgan, tokenizer=siglip"]


def test_a_quick_sweep_is_checked_against_the_pairs_the_full_one_separates(tmp_path, capsys):
    from illume_kit.sweep.results import agreement, render_agreement

    full = _two_seed_sweep(
        tmp_path / "full",
        {  # und: a ~ b (within spread), both above c; gen: a > b > c, all separated
            "a": [{"und/accuracy": 0.75, "gen/accuracy": 0.90}, {"und/accuracy": 0.85, "gen/accuracy": 0.92}],
            "b": [{"und/accuracy": 0.80, "gen/accuracy": 0.50}, {"und/accuracy": 0.90, "gen/accuracy": 0.52}],
            "c": [{"und/accuracy": 0.30, "gen/accuracy": 0.10}, {"und/accuracy": 0.32, "gen/accuracy": 0.12}],
        },
    )
    quick = _two_seed_sweep(
        tmp_path / "quick",
        {  # one seed each; gen swaps b and c
            "a": [{"und/accuracy": 0.70, "gen/accuracy": 0.80}],
            "b": [{"und/accuracy": 0.60, "gen/accuracy": 0.20}],
            "c": [{"und/accuracy": 0.20, "gen/accuracy": 0.30}],
        },
    )
    found = {(g.metric, g.rows): g.agrees for g in agreement(collect(quick), collect(full))}
    assert found == {
        ("und/accuracy", ("variant=a", "variant=b")): None,  # the full sweep cannot tell them apart
        ("und/accuracy", ("variant=a", "variant=c")): True,
        ("und/accuracy", ("variant=b", "variant=c")): True,
        ("gen/accuracy", ("variant=a", "variant=b")): True,
        ("gen/accuracy", ("variant=a", "variant=c")): True,
        ("gen/accuracy", ("variant=b", "variant=c")): False,
    }
    md = render_agreement(agreement(collect(quick), collect(full)), "arms", "md")
    assert "4 of 5 separated pairs in the same order as arms" in md and "| NO |" in md
    from illume_kit.cli.main import main

    assert main(["results", str(quick), "--against", str(full), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["against"]["sweep"] == "arms" and [p["agrees"] for p in data["against"]["pairs"]].count(False) == 1
    assert main(["results", str(quick), "--against", str(full), "--format", "csv"]) == 2
    assert "--format table, md or json" in capsys.readouterr().err
