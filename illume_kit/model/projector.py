"""Per-codebook input projectors: the continuous path from tokenizer features to LLM embeddings.

ILLUME+ feeds the LLM the *pre-quantisation* features of each codebook level (semantic: raw ViT
output, pixel: raw CNN encoder output), each through its own Linear-GELU-Linear MLP
(``MixedProjector`` in the reference). Quantised codes are only used on the output side.
"""

from __future__ import annotations

import torch
from torch import nn


class MLPProjector(nn.Sequential):
    """Linear-GELU-Linear; with ``max_grid`` > 0 also learned row and column embeddings (zero at init)
    that ``positions`` looks up for a feature's cell (plain parameters, so the state dict of a projector
    without them is unchanged)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None, max_grid: int = 0) -> None:
        hidden = hidden or out_dim
        super().__init__(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
        self.in_dim, self.out_dim, self.max_grid = in_dim, out_dim, max_grid
        if max_grid:
            self.row_embed = nn.Parameter(torch.zeros(max_grid, out_dim))
            self.col_embed = nn.Parameter(torch.zeros(max_grid, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"projector expects features of width {self.in_dim}, got {x.shape[-1]}")
        return super().forward(x)

    def positions(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """(N,) row and column indices -> (N, out_dim) position embeddings."""
        if not self.max_grid:
            raise ValueError("this projector has no position embeddings (model.image_position_embed is 0)")
        biggest = int(max(rows.max(), cols.max())) + 1 if rows.numel() else 0
        if biggest > self.max_grid:
            raise ValueError(f"a {biggest}-cell image side exceeds model.image_position_embed={self.max_grid}; "
                             "raise it to at least the largest feature grid side")
        return self.row_embed[rows] + self.col_embed[cols]
