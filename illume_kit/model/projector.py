"""Per-codebook input projectors: the continuous path from tokenizer features to LLM embeddings.

ILLUME+ feeds the LLM the *pre-quantisation* features of each codebook level (semantic: raw ViT
output, pixel: raw CNN encoder output), each through its own Linear-GELU-Linear MLP
(``MixedProjector`` in the reference). Quantised codes are only used on the output side.
"""

from __future__ import annotations

import torch
from torch import nn


class MLPProjector(nn.Sequential):
    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None) -> None:
        hidden = hidden or out_dim
        super().__init__(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"projector expects features of width {self.in_dim}, got {x.shape[-1]}")
        return super().forward(x)
