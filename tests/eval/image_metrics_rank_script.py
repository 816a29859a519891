"""One rank of a two-rank check (gloo, file rendezvous), without torchrun.

``RANK WORLD INIT_FILE INCEPTION LPIPS CLIP_CONFIG CLIP_WEIGHTS OUT`` (test_image_metrics.py): each rank
feeds the metrics every world-th batch and writes what compute() returns (the same on every rank).
``RANK WORLD INIT_FILE eval CHECKPOINT INCEPTION LPIPS OUT`` (test_eval_metrics.py): each rank runs
``evaluate`` with rfid, lpips, psnr and ssim; rank 0 writes its metrics."""

import json
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist

from illume_kit.core.protocols import EvalContext
from illume_kit.eval import image_metrics as im
from illume_kit.eval.metric_params import CLIPScoreParams, LPIPSParams, RFIDParams


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(10, 3, 8, 8, generator=g), size=(64, 64), mode="bilinear")
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    captions = [f"caption number {i}" for i in range(10)]
    return x, y, captions


def run(rank, world, inception, lpips_weights, clip_config, clip_weights):
    metrics = [
        im.RFID(RFIDParams(inception_weights=inception, feature=64)),
        im.LPIPS(LPIPSParams(weights=lpips_weights)),
        im.CLIPScore(CLIPScoreParams(model_config_file=clip_config, weights=clip_weights)),
    ]
    x, y, captions = data()
    for b, lo in enumerate(range(0, 10, 3)):  # batches of 3, 3, 3, 1: unequal shares
        if b % world != rank:
            continue
        hi = min(10, lo + 3)
        for m in metrics[:2]:
            m.update(x[lo:hi], y[lo:hi])
        metrics[2].update_generated(x[lo:hi], y[lo:hi], captions[lo:hi])
    ctx = EvalContext(SimpleNamespace(detokenizer=object()), None, None, 10, cache={"reconstruction": {}})
    ctx.cache["generation"] = ""
    out = {}
    for m in metrics:
        out.update(m.compute(ctx))
    return out


def run_eval(checkpoint, inception, lpips_weights, out_dir):
    from illume_kit.eval.evaluate import evaluate

    params = {"rfid": {"inception_weights": inception, "feature": 64}, "lpips": {"weights": lpips_weights}}
    names = ["rfid", "lpips", "rec/psnr", "rec/ssim"]
    return evaluate(checkpoint, output=out_dir, quiet=True, metrics=names, metric_params=params)["metrics"]


if __name__ == "__main__":
    rank, world, init, *files, out = sys.argv[1:]
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=int(rank), world_size=int(world))
    try:
        if files[0] == "eval":
            result = run_eval(*files[1:], out_dir=out + ".eval")
        else:
            result = run(int(rank), int(world), *files)
    finally:
        dist.destroy_process_group()
    if int(rank) == 0 or files[0] != "eval":
        with open(out, "w") as f:
            json.dump(result, f)
