"""A tokenizer codebook's quantizer, built from a recipe's ``QuantizerRef`` at the tokenizer's code width."""

from __future__ import annotations

from torch import nn

from illume_kit.core.params import QuantizerRef
from illume_kit.plugins.tokenizers.quantizers import build_quantizer


def build_code_quantizer(ref: QuantizerRef, dim: int, size: int, role: str) -> nn.Module:
    """``ref`` with ``dim`` and ``codebook_size`` defaulted to the codebook's; refused unless it keeps
    ``dim`` and gives one index per token (``role`` names the codebook in the messages)."""
    q = build_quantizer(ref, defaults={"dim": dim, "codebook_size": size})
    if q.dim != dim:
        raise ValueError(f"{role}_quantizer has dim {q.dim}, but the {role} code width is {dim}")
    if getattr(q, "num_levels", 1) != 1:
        raise ValueError(
            f"{role}_quantizer {ref.name!r} returns several indices per token; a tokenizer codebook needs one"
        )
    return q
