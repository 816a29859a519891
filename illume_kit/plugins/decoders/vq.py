"""The ``vq`` detokenizer: decode with the tokenizer's own pixel decoder.

DualViTok and VQGAN train a pixel decoder alongside their codebooks, so the cheapest way back to
pixels is to call it. This class only adapts that call to the ``Detokenizer`` contract; it owns no
weights. It keeps a plain (unregistered) reference to the tokenizer, so the tokenizer's weights are
not duplicated in the detokenizer's state_dict, and it refuses a semantic-only tokenizer up front
(at compose time, not at the first decode).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from illume_kit.plugins.decoders.params import VQDetokenizerParams

# Sampling options a caller may pass to any detokenizer; a deterministic decoder has no use for them.
_IGNORED_SAMPLING = frozenset({"steps", "guidance", "guidance_rescale", "seed", "generator"})


class VQDetokenizer(nn.Module):
    Params = VQDetokenizerParams

    def __init__(self, params: VQDetokenizerParams | None = None) -> None:
        super().__init__()
        self.params = params or VQDetokenizerParams()
        object.__setattr__(self, "_tokenizer", None)  # not a submodule: no duplicated weights

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise RuntimeError("VQDetokenizer is not attached: call attach(tokenizer) first")
        return self._tokenizer

    def attach(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "has_pixel_decoder", False):
            names = ", ".join(cb.name for cb in getattr(tokenizer, "codebooks", ())) or "?"
            raise ValueError(
                f"detokenizer 'vq' needs a tokenizer with its own pixel decoder, but {type(tokenizer).__name__} "
                f"(codebooks: {names}) has none; a semantic-only tokenizer needs the 'diffusion' detokenizer"
            )
        object.__setattr__(self, "_tokenizer", tokenizer)

    @property
    def consumes(self) -> tuple[str, ...]:
        return tuple(cb.name for cb in self.tokenizer.codebooks)

    @property
    def output_scale(self) -> int:
        return 1

    @torch.no_grad()
    def decode(self, codes: Mapping[str, torch.Tensor], **sampling: Any) -> torch.Tensor:
        unknown = set(sampling) - _IGNORED_SAMPLING
        if unknown:
            raise TypeError(
                f"unknown sampling options {sorted(unknown)} (vq accepts and ignores {sorted(_IGNORED_SAMPLING)})"
            )
        missing = [n for n in self.consumes if n not in codes]
        if missing:
            raise KeyError(f"codes lack codebooks {missing} (got {sorted(codes)})")
        return self.tokenizer.decode(codes).clamp(0.0, 1.0)
