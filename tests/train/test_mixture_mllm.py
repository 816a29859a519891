"""An mllm stage trains from a mixture of the three jsonl task kinds sized as ILLUME+ (aspect-ratio
buckets): it says which task it trains from which part, and its loss stays finite and falls."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("skimage")

from illume_kit.testing.corpus import write_corpus  # noqa: E402

ROOT = Path(__file__).parents[2]
RECIPE = str(ROOT / "tests" / "fixtures" / "recipes" / "jsonl_mllm_tiny.yaml")
ENV = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    ENV.pop(key, None)


def test_an_mllm_stage_trains_from_a_mixture_in_aspect_buckets(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    # the corpus crops are square: make a third of its images wide and a third tall
    for k, png in enumerate(sorted((corpus["root"] / "images").glob("*.png"))):
        img = Image.open(png)
        w, h = img.size
        if k % 3 == 1:
            img.crop((0, h // 4, w, h - h // 4)).save(png)
        elif k % 3 == 2:
            img.crop((w // 3, 0, w - w // 3, h)).save(png)
    parts = "".join(
        f"      - {{name: {kind}, params: {{path: {corpus[kind]}, sizing: official, max_pixels: 6144}}, samples: {n}}}\n"
        for kind, n in (("conversations", 40), ("captions", 24), ("edits", 16))
    )
    recipe = tmp_path / "mixture.yaml"
    recipe.write_text(
        f"extends: [{RECIPE}]\ndata:\n  name: mixture\n  params:\n    image_size: 64\n    parts:\n{parts}"
    )
    cmd = [sys.executable, "-m", "illume_kit.cli.main", "train", str(recipe), f"run.output_dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (
        "stage 'mllm': trains und from conversations (40 items), t2i from captions (24), edit from edits (16); "
        "weights und 1, t2i 1, edit 1"
    ) in proc.stderr
    from illume_kit.core.recipe import load_recipe
    from illume_kit.data.build import build_dataset

    data = build_dataset(load_recipe(recipe))
    assert len({data.size_of(i) for i in range(len(data))}) >= 4  # batches grouped by size
    rows = [json.loads(x) for x in (tmp_path / "run" / "stages" / "mllm" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    assert min(losses[-3:]) < losses[0], losses
