"""Planning: every run validated before anything is written, frozen recipes, shared upstream units."""

import json
import re

import pytest
import yaml
from sweep_fakes import DUALVITOK, ROOT, VQGAN

from illume_kit.core.recipe import load_recipe
from illume_kit.sweep.plan import SweepPlanError, plan_sweep
from illume_kit.sweep.spec import SweepError

STAGES = (
    "[{name: teacher, target: teacher, steps: 2}, {name: tokenizer, target: tokenizer, steps: 2}, "
    "{name: mllm, target: mllm, steps: 2}]"
)


def test_plan_reports_every_invalid_run_at_once_and_writes_nothing(write_sweep, tmp_path):
    p = write_sweep(f"""
        base: {VQGAN}
        grid:
          tokenizer.params.code_dim: [8, -1, abc]
          backbone.params.hiden_size: [8]
        seeds: [0, 1]
        """)
    out = tmp_path / "out"
    with pytest.raises(SweepPlanError) as e:
        plan_sweep(p, out)
    err = e.value
    assert err.total == 6 and len(err.bad) == 6  # hiden_size is wrong everywhere; -1 and abc twice more
    text = str(err)
    assert "6 of 6 runs are invalid" in text and "Did you mean hidden_size" in text
    assert text.count("tokenizer.params.code_dim=-1") == 2 and "abc" in text
    assert not out.exists()


def test_plan_freezes_resolved_recipes_under_the_sweep_dir(write_sweep, tmp_path):
    p = write_sweep(f"""
        base: {VQGAN}
        overrides: {{train.stages.0.steps: 3}}
        grid: {{tokenizer.params.code_dim: [8, 16]}}
        seeds: [0, 1]
        metrics: [rec/psnr, {{name: my/score, goal: min}}]
        """)
    out = tmp_path / "out"
    plan = plan_sweep(p, out)
    plan.write()
    assert len(plan.runs) == 4 and not plan.units  # a single-stage recipe keeps its stage
    data = json.loads((out / "plan.json").read_text())
    assert [r["id"] for r in data["runs"]] == [r.run_id for r in plan.runs]
    assert (out / "sweep.yaml").read_text() == p.read_text()
    for run in plan.runs:
        frozen = out / run.run_id / "recipe.yaml"
        r = load_recipe(frozen)  # a frozen recipe is a complete recipe on its own
        assert r.recipe.run.output_dir == str(out / run.run_id)
        assert r.recipe.run.seed == run.run.seed
        assert r.components["tokenizer"].params.code_dim == run.run.overrides["tokenizer.params.code_dim"]
        assert r.recipe.train.stages[0].steps == 3
        assert "extends" not in yaml.safe_load(frozen.read_text())


def test_max_runs_refuses_unless_forced(write_sweep, tmp_path):
    p = write_sweep(f"base: {VQGAN}\ngrid: {{run.device: [cpu, auto, cuda]}}\nseeds: [0, 1]\nmax_runs: 5\n")
    with pytest.raises(SweepError, match="6 runs exceed max_runs=5"):
        plan_sweep(p, tmp_path / "o")
    assert len(plan_sweep(p, tmp_path / "o", force=True).runs) == 6


def test_unknown_metric_without_goal_is_an_error(write_sweep, tmp_path):
    p = write_sweep(f"base: {VQGAN}\nmetrics: [rec/psnrr]\n")
    with pytest.raises(SweepError, match="Did you mean rec/psnr"):
        plan_sweep(p, tmp_path / "o")


def test_mllm_sweep_shares_teacher_and_tokenizer_per_seed(write_sweep, tmp_path):
    p = write_sweep(f"""
        base: {DUALVITOK}
        overrides: {{train.stages: {STAGES}}}
        grid: {{model.image_input: [continuous, discrete], backbone.params.num_layers: [1, 2]}}
        seeds: [0, 1]
        """)
    out = tmp_path / "out"
    plan = plan_sweep(p, out)
    # 8 runs; per seed one teacher and one tokenizer: the MLLM settings are not in their keys
    assert len(plan.runs) == 8 and len(plan.units) == 4
    by_seed = {}
    for run in plan.runs:
        by_seed.setdefault(run.run.seed, set()).add(tuple(run.units))
        assert run.own_stages == ["mllm"]
    assert all(len(v) == 1 for v in by_seed.values()) and by_seed[0] != by_seed[1]
    plan.write()
    run = plan.runs[0]
    teacher, tok = (plan.units[k] for k in run.units)
    r = load_recipe(out / run.run_id / "recipe.yaml")
    assert r.components["tokenizer"].weights == str(out / "shared" / tok.key / "checkpoint")
    assert r.components["tokenizer"].params.teacher.pretrained == str(out / "shared" / teacher.key / "teacher")
    assert [s.name for s in r.recipe.train.stages] == ["mllm"]
    t = load_recipe(out / "shared" / tok.key / "recipe.yaml")
    assert [s.name for s in t.recipe.train.stages] == ["tokenizer"] and t.components["tokenizer"].weights is None
    assert t.components["tokenizer"].params.teacher.pretrained == str(out / "shared" / teacher.key / "teacher")
    assert load_recipe(out / "shared" / teacher.key / "recipe.yaml").recipe.run.output_dir == str(
        out / "shared" / teacher.key
    )
    assert tok.upstream == [teacher.key] and sorted(tok.runs) == sorted(r.run_id for r in plan.runs if r.run.seed == 0)


def test_share_across_seeds_trains_upstream_once(write_sweep, tmp_path):
    p = write_sweep(f"""
        base: {DUALVITOK}
        overrides: {{train.stages: {STAGES}}}
        seeds: [0, 1, 2]
        share_across_seeds: true
        """)
    plan = plan_sweep(p, tmp_path / "out")
    assert len(plan.runs) == 3 and len(plan.units) == 2
    assert all(yaml.safe_load(u.recipe_yaml)["run"]["seed"] == 0 for u in plan.units.values())  # the base's seed


def test_tokenizer_sweep_trains_the_common_teacher_once(write_sweep, tmp_path):
    p = write_sweep(f"""
        base: {DUALVITOK}
        overrides: {{train.stages: {STAGES}}}
        variants:
          - {{name: dualvitok, overrides: {{}}}}
          - name: siglip
            overrides:
              tokenizer: {{name: siglip, preset: tiny, params: {{teacher: {{kind: siglip, pretrained: "${{run.output_dir}}/teacher"}}}}}}
              detokenizer: null
          - {{name: bigger_codebook, overrides: {{tokenizer.params.pixel_codebook_size: 512}}}}
        """)
    plan = plan_sweep(p, tmp_path / "out")
    teachers = {r.run.label: r.units[0] for r in plan.runs}
    tokenizers = {r.run.label: r.units[1] for r in plan.runs}
    assert len(set(teachers.values())) == 1  # one teacher for all three tokenizers
    assert len(set(tokenizers.values())) == 3


def test_shared_stages_must_be_a_prefix_and_not_mllm(write_sweep, tmp_path):
    p = write_sweep(f"base: {DUALVITOK}\noverrides: {{train.stages: {STAGES}}}\nshared: [tokenizer]\n")
    with pytest.raises(SweepPlanError, match="shared stages must come first"):
        plan_sweep(p, tmp_path / "o")
    p = write_sweep(f"base: {DUALVITOK}\noverrides: {{train.stages: {STAGES}}}\nshared: [teacher, tokenizer, mllm]\n")
    with pytest.raises(SweepPlanError, match="cannot be shared"):
        plan_sweep(p, tmp_path / "o")
    p = write_sweep(f"base: {DUALVITOK}\noverrides: {{train.stages: {STAGES}}}\nshared: []\n")
    assert not plan_sweep(p, tmp_path / "o").units


def test_a_stage_without_its_section_is_caught_at_plan_time(write_sweep, tmp_path):
    p = write_sweep(
        f"base: {DUALVITOK}\nvariants: [{{name: v, overrides: {{tokenizer: {{name: vqgan}}, teacher: null}}}}]\n"
    )
    with pytest.raises(SweepPlanError, match="no `teacher:` section"):
        plan_sweep(p, tmp_path / "o")


def test_frozen_recipes_of_started_runs_are_not_silently_replaced(write_sweep, tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(VQGAN.read_text().replace("../base/tiny.yaml", str(ROOT / "recipes/base/tiny.yaml")))
    p = write_sweep("base: base.yaml\nseeds: [0]\n")
    out = tmp_path / "out"
    plan = plan_sweep(p, out)
    plan.write()
    rid = plan.runs[0].run_id
    (out / rid / "run.json").write_text('{"status": "done"}')
    plan_sweep(p, out).write()  # unchanged: fine
    base.write_text(re.sub(r"steps: \d+", "steps: 7", base.read_text(), count=1))
    with pytest.raises(SweepError, match=f"started run\\(s\\) {rid} would change"):
        plan_sweep(p, out).write()
    assert plan_sweep(p, out).write(force=True) == [rid]
    assert not (out / rid / "run.json").exists() and any((out / ".stale").iterdir())


@pytest.mark.parametrize("name", ["tokenizer_ablation", "input_ablation"])
def test_shipped_sweeps_plan(name, tmp_path):
    path = ROOT / "recipes/sweeps" / f"{name}.yaml"
    header = [ln for ln in path.read_text().splitlines() if ln.startswith("#")]
    assert any(ln.lstrip("# ").startswith(f"illume-kit sweep run recipes/sweeps/{name}.yaml") for ln in header)
    plan = plan_sweep(path, tmp_path / name)
    assert plan.spec.seeds == [0, 1]
    if name == "tokenizer_ablation":
        assert len(plan.runs) == 6
        assert {r.run.label for r in plan.runs} == {"dualvitok", "vqgan", "siglip"}
        # per seed: one teacher (dualvitok + siglip) and three tokenizers
        assert sorted(u.target for u in plan.units.values()) == ["teacher"] * 2 + ["tokenizer"] * 6
        assert plan.spec.metric_names() == [
            "rec/psnr",
            "und/accuracy",
            "gen/accuracy",
            "edit/accuracy",
            "probe/reconstruction",
            "sem/cosine",
        ]
    else:
        assert len(plan.runs) == 4 and len(plan.units) == 2
