"""Launched by test_ddp.py under `python -m torch.distributed.run --nproc_per_node 2` (gloo, CPU)."""

import os
import sys

import torch
from safetensors.torch import save_file
from train_toys import mlp, mse_step, regression_data

from illume_kit.train import Trainer, TrainerConfig

if __name__ == "__main__":
    out, steps, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    accum = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    # "ema": an EMA of the weights, logged to TensorBoard too
    ema = (
        {"ema": {"decay": 0.8, "start_step": 2}, "loggers": ["jsonl", "tensorboard"]} if sys.argv[5:] == ["ema"] else {}
    )
    torch.set_num_threads(1)
    model = mlp()
    cfg = TrainerConfig(
        steps=steps, batch_size=batch, grad_accum_steps=accum, lr=1e-2, log_every=5, seed=3, warmup_steps=2, **ema
    )
    tr = Trainer(model, mse_step, regression_data(), cfg, out, quiet=True)
    tr.fit()
    rank = int(os.environ["RANK"])
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(out, f"rank{rank}.safetensors"))
