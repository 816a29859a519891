"""bench/detokenizer.py: its grid, which row it marks, and a whole run on a tiny checkpoint (CPU)."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "detokenizer.py"
SPEC = importlib.util.spec_from_file_location("detokenizer_bench", SCRIPT)
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)

RECIPE = """\
illume_kit: 1
name: bench_detokenizer
backbone: {name: qwen2, preset: tiny}
tokenizer: {name: dualvitok, preset: tiny}
detokenizer:
  name: diffusion
  preset: tiny
  params: {output_scale: 1, prediction_type: sample, block_out_channels: [16, 32], guidance_scale: 1.0}
data: {name: shapes, params: {image_size: 32, num_samples: 8, edits: false}}
model: {image_input: continuous}
run: {seed: 0, output_dir: OUT}
"""


def row(scheduler, steps, psnr, s):
    return dict(scheduler=scheduler, steps=steps, psnr=psnr, psnr_vs_reference=40.0, s_per_image=s)


def test_reference_first_and_once():
    grid = bench.settings(["ddim", "unipc"], [10, 50])
    assert grid == [("ddim", 50), ("ddim", 10), ("unipc", 10), ("unipc", 50)]


def test_marks_fewest_passes_within_half_a_db():
    ref = row("ddim", 50, 20.0, 1.0)
    rows = [ref, row("ddim", 10, 19.4, 0.20), row("unipc", 10, 19.6, 0.21), row("unipc", 20, 20.0, 0.1)]
    assert bench.fastest_within(rows) is rows[2]  # ddim 10 costs 0.6 dB; 20 steps are more passes
    assert bench.fastest_within([ref, row("unipc", 10, 19.0, 0.2)]) is None
    # equal passes: the better PSNR, not the timing noise between them
    same = [ref, row("ddim", 10, 19.8, 0.19), row("dpm-solver++", 10, 19.9, 0.21)]
    assert bench.fastest_within(same) is same[2]


def test_whole_run_on_a_tiny_checkpoint(tmp_path):
    from illume_kit.core.recipe import load_recipe
    from illume_kit.model.checkpoint import save_checkpoint
    from illume_kit.model.compose import compose

    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.replace("OUT", str(tmp_path / "run")))
    resolved = load_recipe(recipe)
    ck = save_checkpoint(compose(resolved), resolved, tmp_path / "ck")
    out = tmp_path / "rows.json"
    args = ["--checkpoint", str(ck), "--num-images", "2", "--batch", "2", "--steps", "2"]
    assert bench.main([*args, "--schedulers", "ddim", "unipc", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert [(r["scheduler"], r["steps"]) for r in got["rows"]] == [("ddim", 50), ("ddim", 2), ("unipc", 2)]
    for r in got["rows"]:
        assert 0 < r["psnr"] < 99 and r["s_per_image"] > 0
    assert got["rows"][1]["psnr_vs_reference"] < 99  # 2 steps differ from the 50-step samples


def test_a_checkpoint_without_a_diffusion_decoder_is_one_error(capsys):
    assert bench.main(["--checkpoint", str(ROOT / "checkpoints" / "dualvitok_qwen2_mllm_tiny")]) == 2
    assert "needs a `diffusion` detokenizer" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [["--steps", "0"], ["--schedulers", "dpm"]])
def test_bad_flags_exit_2(bad):
    with pytest.raises(SystemExit) as e:
        bench.main(bad)
    assert e.value.code == 2
