"""An mllm stage's checkpoint records the words of its task texts and its image sizes; the
positions a prompt takes are counted as the sampler assembles them."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "checkpoints" / "dualvitok_qwen2_mllm_tiny"


def test_an_mllm_stage_records_its_words_and_sizes(tmp_path):
    out = tmp_path / "run"
    cmd = [
        "train",
        "recipes/dualvitok_qwen2_tiny.yaml",
        "data.params.num_samples=16",
        "train.stages=[{name: mllm, target: mllm, trainable: [all], steps: 2, batch_size: 4, lr: 1.0e-3,"
        " options: {text_corpus_items: 16}}]",
        f"run.output_dir={out}",
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "illume_kit.cli.main", *cmd], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert r.returncode == 0, r.stderr[-2000:]
    words = json.loads((out / "checkpoint/vocabulary.json").read_text())["words"]
    assert words == sorted(words) and {"circle", "what", "color", "generate", "assistant"} <= set(words)
    assert "hexagon" not in words
    manifest = json.loads((out / "checkpoint/illume_kit.json").read_text())
    assert manifest["trained_sizes"] == [[64, 64]]

    from illume_kit.cli.generate_cmds import trained_record

    vocab, sizes, source = trained_record(out / "checkpoint")
    assert vocab == set(words) and sizes == [(64, 64)] and "vocabulary.json" in source


def test_the_shipped_checkpoint_records_its_words_and_falls_back_to_its_recipe_for_sizes():
    from illume_kit.cli.generate_cmds import trained_record

    vocab, sizes, _ = trained_record(SHIPPED)
    assert {"circle", "purple", "top", "left"} <= vocab and "hexagon" not in vocab
    assert sizes == [(64, 64)]


def test_sequence_length_counts_what_assembly_builds():
    from illume_kit.cli.generate_cmds import load_image
    from illume_kit.model.checkpoint import load_checkpoint
    from illume_kit.model.sampler import max_positions, sequence_length
    from illume_kit.model.sequence import Sample, assemble
    from illume_kit.model.tasks import edit_prompt, t2i_prompt, und_prompt

    model, _ = load_checkpoint(SHIPPED)
    assert max_positions(model) == 2048
    image = load_image(ROOT / "checkpoints" / "scene.png", (64, 64))
    for prompt in (
        und_prompt(image, "how many shapes are there?"),
        t2i_prompt("a small red circle at the top left", (64, 64)),
        edit_prompt(image, "make the square at the top left blue", order=model.edit_order),
    ):
        built = assemble(model, [Sample(prompt, [])])
        assert sequence_length(model, prompt, 0) == built.input_ids.shape[1]
        assert sequence_length(model, prompt, 7) == built.input_ids.shape[1] + 7
