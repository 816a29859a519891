"""Trainer tests run tiny models: one torch thread is 5-10x faster than two on a shared 2-core box."""

import torch

torch.set_num_threads(1)
