"""One quantizer interface over vector-quantize-pytorch.

lucidrains' quantizers are the reference implementations, but their returns differ: VectorQuantize,
SimVQ and LFQ give ``(quantized, indices, loss)``, FSQ gives ``(quantized, indices)``, ResidualVQ
gives per-level losses, and some return int32 indices. Tokenizers should not care, so each class
here wraps one of them (as the child ``vq``) and returns ``QuantizerOutput(quantized, indices,
aux_loss)``: input (B, N, dim) channel-last, ``quantized`` the same shape in float32, ``indices``
int64 (B, N) ((B, N, levels) for ResidualVQ), ``aux_loss`` always a 0-dim tensor (0 for FSQ).

Every quantizer also counts code usage (a non-persistent buffer, so state dicts stay those of the
library) in training mode, or always when ``track_usage`` is set: ``usage()`` gives the fraction
of codes used and the perplexity of their distribution since the last ``reset_usage()``.
The lookup runs in float32 even under autocast, as ILLUME+ does.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import vector_quantize_pytorch as vqp
from torch import nn

from illume_kit.core.params import QuantizerRef
from illume_kit.core.protocols import QuantizerOutput
from illume_kit.plugins.tokenizers.quantizer_params import (
    FSQParams,
    LFQParams,
    ResidualVQParams,
    SimVQParams,
    VQParams,
)


class _Quantizer(nn.Module):
    """Shared plumbing: float32 lookup, uniform returns, usage counting."""

    Params: ClassVar[type]
    num_levels: int = 1  # > 1 only for residual quantizers (indices get a last axis of this size)

    def __init__(self, params: Any, dim: int, codebook_size: int):
        super().__init__()
        self.params = params
        self.dim = dim
        self.codebook_size = codebook_size
        self.track_usage: bool | None = None  # None: count in training mode only
        shape = (self.num_levels, codebook_size) if self.num_levels > 1 else (codebook_size,)
        self.register_buffer("usage_counts", torch.zeros(shape, dtype=torch.long), persistent=False)

    # on float32 channel-last input; the library module is ``self.vq``. Most of its classes return
    # (quantized, indices, loss) and decode with indices_to_codes: subclasses override the others.
    def _quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.vq(z)

    def _codes(self, indices: torch.Tensor) -> torch.Tensor:
        return self.vq.indices_to_codes(indices)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        if z.ndim != 3 or z.shape[-1] != self.dim:
            raise ValueError(f"{type(self).__name__} expects (B, N, {self.dim}) input, got {tuple(z.shape)}")
        with torch.autocast(device_type=z.device.type, enabled=False):
            quantized, indices, loss = self._quantize(z.float())
        indices = indices.long()
        if self.track_usage or (self.track_usage is None and self.training):
            self._count(indices)
        return QuantizerOutput(quantized, indices, loss.float().sum().reshape(()))

    @torch.no_grad()
    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices as returned by ``forward`` -> codes (..., dim) equal to ``quantized`` in eval."""
        with torch.autocast(device_type=indices.device.type, enabled=False):
            return self._codes(indices.long())

    # --- usage statistics ---
    @torch.no_grad()
    def _count(self, indices: torch.Tensor) -> None:
        if self.num_levels > 1:
            flat = indices.reshape(-1, self.num_levels).T
            for level in range(self.num_levels):
                self.usage_counts[level] += torch.bincount(flat[level], minlength=self.codebook_size)
        else:
            self.usage_counts += torch.bincount(indices.reshape(-1), minlength=self.codebook_size)

    def reset_usage(self) -> None:
        self.usage_counts.zero_()

    def usage(self) -> dict[str, float]:
        """Fraction of codes used, perplexity exp(H(p)) and token count since the last reset.

        Residual quantizers report the mean over levels.
        """
        counts = self.usage_counts.reshape(self.num_levels, -1).double()
        total = counts.sum(-1, keepdim=True)
        p = counts / total.clamp(min=1)
        entropy = -(p * p.clamp(min=1e-30).log()).sum(-1)
        return {
            "usage": (counts > 0).double().mean(-1).mean().item(),
            "perplexity": entropy.exp().mean().item() if total.sum() > 0 else 0.0,
            "tokens": int(total[0].item()),
        }


class VQ(_Quantizer):
    """Plain vector quantization (``vector_quantize_pytorch.VectorQuantize``)."""

    Params = VQParams

    def __init__(self, params: VQParams):
        super().__init__(params, params.dim, params.codebook_size)
        self.vq = vqp.VectorQuantize(
            dim=params.dim,
            codebook_size=params.codebook_size,
            codebook_dim=params.codebook_dim,
            decay=params.decay,
            commitment_weight=params.commitment_weight,
            use_cosine_sim=params.use_cosine_sim,
            kmeans_init=params.kmeans_init,
            threshold_ema_dead_code=params.threshold_ema_dead_code,
            learnable_codebook=params.learnable_codebook,
            ema_update=not params.learnable_codebook,
            rotation_trick=params.rotation_trick,
            straight_through=False,
        )

    def _codes(self, indices):
        return self.vq.get_output_from_indices(indices)


class SimVQ(_Quantizer):
    """SimVQ (``vector_quantize_pytorch.SimVQ``), looked up in chunks of tokens to bound memory.

    The library computes the full tokens x codes distance matrix; with ILLUME+'s 98304 pixel codes
    that is 0.4 MB per token, so large batches are split along tokens and the loss re-weighted to the
    exact mean over all elements.
    """

    Params = SimVQParams

    def __init__(self, params: SimVQParams):
        super().__init__(params, params.dim, params.codebook_size)
        self.vq = vqp.SimVQ(
            dim=params.dim,
            codebook_size=params.codebook_size,
            rotation_trick=params.rotation_trick,
            input_to_quantize_commit_loss_weight=params.input_to_quantize_commit_loss_weight,
            commitment_weight=params.commitment_weight,
            frozen_codebook_dim=params.frozen_codebook_dim,
        )
        if params.restart_dead_codes_after:
            # persistent: a resumed run restarts the same codes at the same step
            self.register_buffer("steps_unused", torch.zeros(params.codebook_size, dtype=torch.long))

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        out = super().forward(z)
        if self.params.restart_dead_codes_after and self.training and torch.is_grad_enabled():
            self._restart_dead_codes(z.detach().float().reshape(-1, self.dim), out.quantized.detach(), out.indices)
        return out

    @torch.no_grad()
    def _restart_dead_codes(self, z: torch.Tensor, quantized: torch.Tensor, indices: torch.Tensor) -> None:
        """Re-seed codes unused for ``restart_dead_codes_after`` steps at the worst-quantised inputs.

        SimVQ's codes are ``frozen_codebook @ W.T``; only the frozen rows of the dead codes change,
        to the least-squares solution of ``W c = z`` (exact when W has full column rank), so the
        learnt map W and every live code stay as they are. Deterministic: the inputs are the batch's
        largest quantisation errors, no random draw.
        """
        used = torch.bincount(indices.reshape(-1), minlength=self.codebook_size) > 0
        self.steps_unused.add_(1).masked_fill_(used, 0)
        dead = (self.steps_unused >= self.params.restart_dead_codes_after).nonzero().squeeze(1)
        if dead.numel() == 0:
            return
        error = (z - quantized.reshape(-1, self.dim)).square().sum(-1)
        worst = error.argsort(descending=True)[: dead.numel()]
        dead = dead[: worst.numel()]
        weight = self.vq.code_transform.weight.float()  # (dim, frozen_dim)
        seeds = torch.linalg.lstsq(weight, z[worst].T).solution.T  # (n, frozen_dim)
        codebook = self.vq.frozen_codebook.clone()  # out of place: this step's graph still holds the old one
        codebook[dead] = seeds.to(codebook.dtype)
        self.vq.frozen_codebook = codebook
        self.steps_unused[dead] = 0

    def _quantize(self, z):
        b, n, d = z.shape
        step = max(1, self.params.lookup_chunk_elements // self.codebook_size)
        if b * n <= step:
            return self.vq(z)
        flat = z.reshape(1, b * n, d)
        parts = [self.vq(chunk) for chunk in flat.split(step, dim=1)]
        quantized = torch.cat([p[0] for p in parts], dim=1).reshape(b, n, d)
        indices = torch.cat([p[1] for p in parts], dim=1).reshape(b, n)
        sizes = [p[1].shape[1] for p in parts]
        loss = sum(p[2] * s for p, s in zip(parts, sizes)) / (b * n)
        return quantized, indices, loss


class FSQ(_Quantizer):
    """Finite scalar quantization (``vector_quantize_pytorch.FSQ``); no auxiliary loss."""

    Params = FSQParams

    def __init__(self, params: FSQParams):
        dim = params.dim or len(params.levels)
        super().__init__(params, dim, math.prod(params.levels))
        self.vq = vqp.FSQ(levels=list(params.levels), dim=dim)

    def _quantize(self, z):
        quantized, indices = self.vq(z)
        return quantized, indices, z.new_zeros(())


class LFQ(_Quantizer):
    """Lookup-free quantization (``vector_quantize_pytorch.LFQ``) with its entropy loss."""

    Params = LFQParams

    def __init__(self, params: LFQParams):
        dim = params.dim or int(math.log2(params.codebook_size))
        super().__init__(params, dim, params.codebook_size)
        self.vq = vqp.LFQ(
            dim=dim,
            codebook_size=params.codebook_size,
            entropy_loss_weight=params.entropy_loss_weight,
            commitment_loss_weight=params.commitment_loss_weight,
            diversity_gamma=params.diversity_gamma,
            spherical=params.spherical,
        )


class ResidualVQ(_Quantizer):
    """Residual VQ (``vector_quantize_pytorch.ResidualVQ``); indices (B, N, num_quantizers).

    ``aux_loss`` is the sum of the per-level commitment losses; ``codebook_size`` is per level.
    """

    Params = ResidualVQParams

    def __init__(self, params: ResidualVQParams):
        self.num_levels = params.num_quantizers
        super().__init__(params, params.dim, params.codebook_size)
        self.vq = vqp.ResidualVQ(
            dim=params.dim,
            num_quantizers=params.num_quantizers,
            codebook_size=params.codebook_size,
            codebook_dim=params.codebook_dim,
            shared_codebook=params.shared_codebook,
            decay=params.decay,
            commitment_weight=params.commitment_weight,
            use_cosine_sim=params.use_cosine_sim,
            kmeans_init=params.kmeans_init,
            threshold_ema_dead_code=params.threshold_ema_dead_code,
            quantize_dropout=params.quantize_dropout,
        )

    def _codes(self, indices):
        return self.vq.get_output_from_indices(indices)


def build_quantizer(ref: QuantizerRef | dict, defaults: dict[str, Any] | None = None) -> nn.Module:
    """Build the quantizer a ``QuantizerRef`` names.

    ``defaults`` are values the caller (a tokenizer) supplies, e.g. ``dim`` and ``codebook_size``;
    they are applied only where that quantizer's Params has the field and ``ref.params`` does not set it.
    """
    from illume_kit.core.plugins import get_registry

    if isinstance(ref, dict):
        ref = QuantizerRef(**ref)
    spec = get_registry().get("quantizer", ref.name)
    cls, params_cls = spec.load(), spec.load_params()
    fields = params_cls.model_fields
    values = {k: v for k, v in (defaults or {}).items() if k in fields}
    values.update(ref.params)
    return cls(params_cls(**values))
