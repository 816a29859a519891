"""Typed stage and eval options: checked when a recipe loads, reported with the rest of the recipe."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from illume_kit.core.options import STAGE_OPTIONS, EvalOptions, MllmOptions, StageOptions, TokenizerOptions
from illume_kit.core.recipe import RecipeError, load_recipe, recipe_json_schema

ROOT = Path(__file__).resolve().parents[2]
MLLM = ROOT / "recipes/dualvitok_qwen2_mllm_tiny.yaml"  # stages: align (mllm), mllm (mllm)
TOKENIZER = ROOT / "recipes/tokenizers/dualvitok_tiny_2x2.yaml"


def problems(path, *overrides) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    return str(info.value)


def test_shipped_options_are_typed_with_todays_defaults():
    r = load_recipe(MLLM)
    align, mllm = r.recipe.train.stages
    assert isinstance(mllm.options, MllmOptions) and isinstance(align.options, MllmOptions)
    assert (mllm.options.qa_turns, mllm.options.loss_average, mllm.options.edit_target) == (
        6,
        "sample",
        "copy_unchanged",
    )
    assert mllm.options.tasks == {"und": 2.0, "t2i": 1.0, "edit": 1.0}
    assert (
        align.options.cfg_dropout,
        align.options.qa_turns,
        align.options.loss_average,
        align.options.edit_target,
        align.options.cache_codes,
        align.options.cache_codes_mb,
        align.options.retrain_text_tokenizer,
        align.options.text_corpus_items,
        align.options.image_size,
        align.options.cache_data,
        align.options.cache_data_mb,
    ) == (0.1, 1, "token", "encoded", True, 1024, True, 400, None, True, 2048)
    assert align.options.tasks == {"und": 1.0, "t2i": 1.0, "edit": 1.0}
    ev = r.recipe.eval.options
    assert isinstance(ev, EvalOptions)
    assert (ev.cfg, ev.edit_cfg, ev.temperature) == (2.0, 1.25, 0.5)
    assert (ev.top_k, ev.top_p, ev.nocfg, ev.batch_size, ev.max_answer_tokens, ev.decode) == (None, 1.0, True, 8, 8, {})
    tok = load_recipe(TOKENIZER).recipe.train.stages
    assert [type(s.options) for s in tok] == [STAGE_OPTIONS[s.target] for s in tok]


def test_typo_in_stage_options_says_did_you_mean():
    text = problems(MLLM, "train.stages.1.options.cfg_dropot=0.1")
    assert "1 problem" in text
    assert "train.stages.1.options.cfg_dropot: unknown key of mllm stage options (set in cli)" in text
    assert (
        "Did you mean cfg_dropout?" in text
        and "valid: image_size, cache_data, cache_data_mb, tasks, cfg_dropout" in text
    )


def test_wrong_type_and_out_of_range_options():
    text = problems(
        MLLM,
        "train.stages.1.options.qa_turns=many",
        "train.stages.0.options.cfg_dropout=1.5",
        "train.stages.1.options.loss_average=mean",
        "train.stages.1.options.tasks.i2t=1",
        "eval.options.top_p=0",
        "eval.options.batch_size=0",
    )
    assert "6 problems" in text
    assert "train.stages.1.options.qa_turns: Input should be a valid integer" in text and "'many'" in text
    assert "train.stages.0.options.cfg_dropout: Input should be less than or equal to 1 (got 1.5)" in text
    assert "train.stages.1.options.loss_average: invalid value 'mean'" in text and "'token' or 'sample'" in text
    assert "train.stages.1.options.tasks.i2t: invalid value 'i2t'" in text and "'und', 't2i' or 'edit'" in text
    assert "eval.options.top_p: Input should be greater than 0 (got 0)" in text
    assert "eval.options.batch_size: Input should be greater than or equal to 1 (got 0)" in text
    text = problems(MLLM, "train.stages.1.options.tasks.und=-1")
    assert "train.stages.1.options.tasks: task weights must be >= 0 with a positive sum" in text


def test_option_of_another_stage_kind_names_the_kinds():
    stages = load_recipe(TOKENIZER).recipe.train.stages
    i = next(i for i, s in enumerate(stages) if s.target == "tokenizer")
    text = problems(TOKENIZER, f"train.stages.{i}.options.qa_turns=6", f"train.stages.{i}.options.image_size=32")
    assert "1 problem" in text  # image_size is an option of every stage
    assert f"train.stages.{i}.options.qa_turns: unknown key of tokenizer stage options" in text
    assert "qa_turns is an option of mllm stages" in text and "(valid: image_size, cache_data, cache_data_mb)" in text


def test_eval_options_typo_says_did_you_mean():
    text = problems(MLLM, "eval.options.tempreature=1")
    assert "eval.options.tempreature: unknown key (set in cli). Did you mean temperature?" in text
    assert "valid: cfg, edit_cfg, temperature, top_k, top_p" in text


def test_per_level_sampling_is_accepted_and_checked_per_level():
    r = load_recipe(MLLM, ["eval.options.temperature={text: 0, semantic: 0.5}", "eval.options.top_k=0"])
    assert r.recipe.eval.options.temperature == {"text": 0.0, "semantic": 0.5} and r.recipe.eval.options.top_k == 0
    text = problems(MLLM, "eval.options.temperature={text: -1}", "eval.options.top_k=-2")
    assert "2 problems" in text  # one per key, not one per alternative of the union
    assert "eval.options.temperature.text: Input should be greater than or equal to 0 (got -1)" in text
    assert "eval.options.top_k: Input should be greater than or equal to 0 (got -2)" in text


def test_stage_kind_is_checked_and_picks_the_options(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "extends": str(MLLM),
                "train": {
                    "stages": [
                        {"name": "a", "target": "mlm"},
                        {"name": "b"},
                        {"name": "c", "target": "detokenizer", "stepz": 3},
                    ]
                },
            }
        )
    )
    text = problems(p)
    assert (
        "train.stages.0.target: invalid value 'mlm'" in text and "'teacher', 'tokenizer', 'detokenizer', 'mllm'" in text
    )
    assert "train.stages.1.target: required value is missing" in text
    assert "train.stages.2.stepz: unknown key" in text and "Did you mean steps?" in text


def test_stage_dump_keeps_the_options_as_given():
    """A sweep keys its shared stages by a stage's dump and writes stages back into frozen recipes:
    typed options must not add their defaults to either."""
    raw = yaml.safe_load(MLLM.read_text())["train"]["stages"]
    stages = load_recipe(MLLM).recipe.train.stages
    assert [s.model_dump(mode="json")["options"] for s in stages] == [s.get("options", {}) for s in raw]
    assert stages[0].model_dump()["options"] == {}


def test_stored_recipe_and_rewritten_stages_load_back(tmp_path):
    """A checkpoint's recipe.yaml (the resolved recipe) and a sweep's rewritten stage list validate again."""
    from illume_kit.sweep.shared import stages_override

    r = load_recipe(MLLM)
    (tmp_path / "recipe.yaml").write_text(r.to_yaml())
    again = load_recipe(tmp_path / "recipe.yaml", [stages_override(r.recipe.train.stages)])
    assert again.recipe.train.stages == r.recipe.train.stages and again.recipe.eval == r.recipe.eval


def test_every_option_is_described_and_in_the_json_schema():
    for model in [StageOptions, *STAGE_OPTIONS.values(), EvalOptions]:
        assert all(f.description for f in model.model_fields.values()), model.__name__
    defs = recipe_json_schema()["$defs"]
    items = defs["TrainConfig"]["properties"]["stages"]["items"]
    assert items["discriminator"]["propertyName"] == "target"
    assert set(items["discriminator"]["mapping"]) == set(STAGE_OPTIONS)
    assert defs["MllmStage"]["properties"]["options"]["$ref"] == "#/$defs/MllmOptions"
    assert defs["TokenizerStage"]["properties"]["options"]["$ref"] == "#/$defs/TokenizerOptions"
    assert set(defs["MllmOptions"]["properties"]) == set(MllmOptions.model_fields)
    assert (
        set(defs["TokenizerOptions"]["properties"])
        == set(TokenizerOptions.model_fields)
        == {"image_size", "cache_data", "cache_data_mb"}
    )
    assert defs["MllmOptions"]["additionalProperties"] is False
    assert defs["EvalConfig"]["properties"]["options"]["$ref"] == "#/$defs/EvalOptions"
    assert defs["EvalOptions"]["properties"]["cfg"]["default"] == 2.0


def test_validate_reports_both_option_typos_without_torch():
    code = (
        "import sys\nfrom illume_kit.cli.main import main\n"
        "try:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code\n"
        "assert 'torch' not in sys.modules, 'imported torch'\nsys.exit(rc)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "validate",
            "recipes/dualvitok_qwen2_mllm_tiny.yaml",
            "train.stages.1.options.cfg_dropot=0.1",
            "eval.options.tempreature=1",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert r.returncode == 2, r.stderr
    out = r.stdout + r.stderr
    assert "2 problems" in out and "Traceback" not in out and "imported torch" not in out
    assert "train.stages.1.options.cfg_dropot" in out and "Did you mean cfg_dropout?" in out
    assert "eval.options.tempreature" in out and "Did you mean temperature?" in out
