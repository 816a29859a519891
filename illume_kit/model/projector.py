"""Per-codebook input projectors: the continuous path from tokenizer features to LLM embeddings.

ILLUME+ feeds the LLM the *pre-quantisation* features of each codebook level (semantic: raw ViT
output, pixel: raw CNN encoder output), each through its own Linear-GELU-Linear MLP
(``MixedProjector`` in the reference). Quantised codes are only used on the output side.

With ``max_side`` > 0 (recipe ``model.image_positions``, off in ILLUME+) a projector also holds learned
row and column embeddings for its codebook's grid. Sequence assembly and the sampler add
``positions(rows, cols)`` to every image token of that level, input features and output codes
alike, so the LLM can find "the top left" by content instead of by counting 1D offsets.
"""

from __future__ import annotations

import torch
from torch import nn


class MLPProjector(nn.Sequential):
    def __init__(
        self, in_dim: int, out_dim: int, hidden: int | None = None, max_side: int = 0, position_std: float = 0.02
    ) -> None:
        hidden = hidden or out_dim
        super().__init__(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
        self.in_dim, self.out_dim, self.max_side = in_dim, out_dim, max_side
        if max_side > 0:  # registered only when on, so a plain projector's state dict is unchanged
            # at the scale of the code embeddings they are added to (the backbone's initializer_range)
            self.row_embed = nn.Parameter(torch.randn(max_side, out_dim) * position_std)
            self.col_embed = nn.Parameter(torch.randn(max_side, out_dim) * position_std)

    def positions(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Row + column embeddings, (N,) indices -> (N, out_dim)."""
        if self.max_side <= 0:
            raise ValueError("this projector has no position embeddings (recipe model.image_positions is 0)")
        biggest = int(torch.maximum(rows.max(), cols.max())) + 1 if rows.numel() else 0
        if biggest > self.max_side:
            raise ValueError(
                f"an image grid side of {biggest} tokens exceeds model.image_positions={self.max_side}; "
                "raise it in the recipe (and retrain the projectors)"
            )
        return self.row_embed[rows] + self.col_embed[cols]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # the MLP only; positions are added by the caller
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"projector expects features of width {self.in_dim}, got {x.shape[-1]}")
        return super().forward(x)
