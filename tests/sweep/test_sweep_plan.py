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
        assert len(plan.runs) == 6 and {r.run.label for r in plan.runs} == {"dualvitok", "vqgan", "siglip"}
        # per seed: two teachers, three tokenizers, one decoder, none shared between arms or seeds
        assert sorted(u.target for u in plan.units.values()) == sorted(
            ["teacher"] * 4 + ["tokenizer"] * 6 + ["detokenizer"] * 2
        )
        assert plan.spec.metric_names() == [
            "und/accuracy",
            "gen/accuracy",
            "gen/attributes",
            "edit/accuracy",
            "rec/psnr",
        ]
        assert plan_sweep(path, tmp_path / "quick", quick=True).spec.seeds == [0]
    else:
        assert len(plan.runs) == 4 and len(plan.units) == 2


TUNED = {  # each arm of the tokenizer ablation is the chain of these recipes
    "dualvitok": ["tokenizers/dualvitok_tiny_2x2.yaml", "dualvitok_qwen2_mllm_tiny.yaml"],
    "vqgan": ["tokenizers/vqgan_tiny_2x2.yaml", "vqgan_qwen2_mllm_tiny.yaml"],
    "siglip": [
        "tokenizers/siglip_tiny_2x2.yaml",
        "detokenizers/diffusion_siglip_2x2_tiny.yaml",
        "siglip_qwen2_mllm_tiny.yaml",
    ],
}


def _component(resolved, section):
    rc = resolved.components.get(section)
    if rc is None:
        return None
    params = rc.params_dict
    if isinstance(params.get("teacher"), dict):  # where the trained teacher lives differs by design
        params = {**params, "teacher": {k: v for k, v in params["teacher"].items() if k != "pretrained"}}
    return rc.spec.name, params


def test_tokenizer_ablation_arms_are_their_tuned_recipe_chains(tmp_path):
    plan = plan_sweep(ROOT / "recipes/sweeps/tokenizer_ablation.yaml", tmp_path / "t")
    for run in (r for r in plan.runs if r.run.seed == 0):
        label = run.run.label
        tuned = [load_recipe(ROOT / "recipes" / p) for p in TUNED[label]]
        units = [_resolved(plan.units[k].recipe_yaml, tmp_path / f"{k}.yaml") for k in run.units]
        final = _resolved(run.recipe_yaml, tmp_path / f"{run.run_id}.yaml")
        chain = [*units, final]
        stages = [s.model_dump(mode="json") for r in chain for s in r.recipe.train.stages]
        assert stages == [s.model_dump(mode="json") for t in tuned for s in t.recipe.train.stages], label
        for section in ("teacher", "tokenizer", "detokenizer"):
            want = {_frozen(_component(t, section)) for t in tuned if section in t.components}
            got = {_frozen(_component(r, section)) for r in chain if section in r.components}
            assert got == want, (label, section)
        mllm = tuned[-1]
        assert _component(final, "backbone") == _component(mllm, "backbone")
        assert _component(final, "data") == _component(mllm, "data")
        assert final.recipe.model == mllm.recipe.model and final.recipe.eval.options == mllm.recipe.eval.options


def _frozen(value):
    return json.dumps(value, sort_keys=True, default=str)


def _resolved(recipe_yaml: str, path):
    path.write_text(recipe_yaml)
    return load_recipe(path)


QUICK_SWEEP = f"""
    base: {DUALVITOK}
    overrides:
      train.stages:
        - {{name: teacher, target: teacher, steps: 4}}
        - {{name: tokenizer, target: tokenizer, steps: 10, warmup_steps: 4}}
        - {{name: mllm, target: mllm, steps: 100, warmup_steps: 10, checkpoint_every: 20}}
    variants:
      - {{name: a, overrides: {{}}}}
      - {{name: b, overrides: {{tokenizer.params.pixel_codebook_size: 512}}}}
    seeds: [3, 4, 5]
    quick: {{steps: 0.25, stages: [mllm]}}
    """


def test_quick_plans_the_first_seed_with_the_named_stages_shortened(write_sweep, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = write_sweep(QUICK_SWEEP)
    full, quick = plan_sweep(p), plan_sweep(p, quick=True)
    assert quick.spec.name == "sweep_quick" and quick.sweep_dir == tmp_path / "sweeps" / "sweep_quick"
    assert [r.run.seed for r in quick.runs] == [3, 3] and [r.run.label for r in quick.runs] == ["a", "b"]
    for run in quick.runs:
        stages = {s.name: s for s in yaml_stages(run.recipe_yaml)}
        assert (stages["mllm"].steps, stages["mllm"].warmup_steps, stages["mllm"].checkpoint_every) == (25, 2, 5)
    # the tokenizers are trained in full, into the full sweep's store: whichever runs second reuses them
    seed3 = {k: u for k, u in full.units.items() if any(r.run.seed == 3 and k in r.units for r in full.runs)}
    assert set(quick.units) == set(seed3)
    for key, unit in quick.units.items():
        assert unit.folder == full.units[key].folder == tmp_path / "sweeps" / "sweep" / "shared" / key
        assert unit.recipe_yaml == full.units[key].recipe_yaml
    assert quick.to_json()["quick"] is True and full.to_json()["quick"] is False


def yaml_stages(recipe_yaml: str):
    from illume_kit.core.schema import Stage

    return [Stage.model_validate(s) for s in yaml.safe_load(recipe_yaml)["train"]["stages"]]


def test_quick_with_an_output_folder_keeps_its_units_there(write_sweep, tmp_path):
    plan = plan_sweep(write_sweep(QUICK_SWEEP), tmp_path / "q", quick=True)
    assert all(u.folder.parent == tmp_path / "q" / "shared" for u in plan.units.values())


def test_quick_errors_name_the_missing_block_and_unknown_stages(write_sweep, tmp_path):
    with pytest.raises(SweepError, match=r"--quick needs a `quick:` block"):
        plan_sweep(write_sweep(f"base: {VQGAN}\nseeds: [0]\n"), tmp_path / "o", quick=True)
    bad = QUICK_SWEEP.replace("stages: [mllm]", "stages: [mllm, allign]")
    with pytest.raises(SweepError, match=r"quick.stages names no stage of any run: allign \(stages: mllm, teacher"):
        plan_sweep(write_sweep(bad), tmp_path / "o", quick=True)
