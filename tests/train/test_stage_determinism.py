"""Two runs of the same recipe train the same numbers, whatever ran before them in the process."""

import json

import torch

from illume_kit.cli.main import main

RECIPE = "recipes/tokenizers/siglip_tiny.yaml"
SMALL = [
    "train.stages.0.steps=2",
    "train.stages.0.batch_size=4",
    "train.stages.0.warmup_steps=0",
    "data.params.num_samples=8",
    "data.params.supersample=1",
]


def teacher_log(out):
    assert main(["train", RECIPE, *SMALL, f"run.output_dir={out}", "--stage", "teacher", "--quiet"]) == 0
    return [json.loads(line) for line in (out / "stages" / "teacher" / "metrics.jsonl").read_text().splitlines()]


def test_teacher_stage_is_seeded_by_the_recipe(tmp_path):
    first = teacher_log(tmp_path / "a")
    torch.rand(1000)  # another RNG state, as a sweep's earlier work or another process would leave it
    assert teacher_log(tmp_path / "b") == first
