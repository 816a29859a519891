"""`illume-kit eval --metrics fid,clip-score` on the shipped tiny unified checkpoint: the generation pass
draws what `gen/*` draws (captions, guidance and seeds of eval.options / run.seed)."""

import json
from pathlib import Path

import pytest
import torch

from illume_kit.cli.main import main

CKPT = Path("checkpoints/dualvitok_qwen2_mllm_tiny")


def test_fid_and_clip_score_of_generated_images(tmp_path):

    from illume_kit.core.protocols import EvalContext
    from illume_kit.core.recipe import load_recipe
    from illume_kit.data.build import build_dataset
    from illume_kit.eval import image_metrics as im
    from illume_kit.eval.metric_params import CLIPScoreParams, FIDParams
    from illume_kit.eval.sampling import task_sampling
    from illume_kit.model.checkpoint import load_checkpoint
    from illume_kit.model.sampler import decode_images, generate_images
    from illume_kit.testing.metric_weights import write_random_inception, write_tiny_clip

    inception = write_random_inception(tmp_path / "inception.safetensors")
    clip_weights, clip_config = write_tiny_clip(tmp_path)

    params = [
        f"fid.inception_weights={inception}",
        "fid.feature=64",
        f"clip-score.model_config_file={clip_config}",
        f"clip-score.weights={clip_weights}",
    ]
    argv = ["eval", str(CKPT), "-n", "3", "--metrics", "fid,clip-score", "-o", str(tmp_path / "eval"), "--quiet"]
    assert main([*argv, *[a for p in params for a in ("--metric-param", p)]]) == 0
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert set(m) == {"fid", "clip-score"} and 0.0 <= m["clip-score"] <= 100.0

    # the same images drawn directly: the eval set's first 3 captions, one batch at seed run.seed
    resolved = load_recipe(CKPT / "recipe.yaml")
    model, _ = load_checkpoint(CKPT)
    model.eval()
    items = [build_dataset(resolved, "val")[i] for i in range(3)]
    sampling = task_sampling(resolved.recipe.eval.options, "generate")
    cfg = sampling.pop("cfg")
    sizes = [tuple(it["image"].shape[-2:]) for it in items]
    captions = [it["caption"] for it in items]
    with torch.no_grad():
        codes = generate_images(model, captions, sizes, cfg=cfg, seed=resolved.recipe.run.seed, **sampling)
        drawn = torch.stack(decode_images(model, codes, **dict(resolved.recipe.eval.options.decode))).float()
    real = torch.stack([it["image"] for it in items])
    fid = im.FID(FIDParams(inception_weights=str(inception), feature=64))
    clip = im.CLIPScore(CLIPScoreParams(model_config_file=str(clip_config), weights=str(clip_weights)))
    fid.update_generated(real, drawn, captions)
    ctx = EvalContext(model, None, None, 3, cache={"generation": ""})
    assert m["fid"] == pytest.approx(fid.compute(ctx)["fid"], rel=1e-6, abs=1e-12) and m["fid"] > 0
    assert m["clip-score"] == pytest.approx(float(clip.scores(drawn, captions).mean()), abs=1e-4)
