"""Params of the built-in quantizers (torch-free, so recipe validation never imports torch).

Each model mirrors the constructor options of the vector-quantize-pytorch class it configures; the
field descriptions say which paper an option comes from. ``dim`` is always the width of the input
vectors (B, N, dim); a quantizer whose codes are narrower projects in and out itself.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from illume_kit.core.params import ComponentParams


class VQParams(ComponentParams):
    """VectorQuantize (VQ-VAE, van den Oord et al. 2017), EMA codebook by default."""

    dim: int = Field(256, ge=1, description="input vector width")
    codebook_size: int = Field(1024, ge=2, description="number of codes")
    codebook_dim: int | None = Field(
        None, ge=1, description="code width if different from dim (factorised codes, ViT-VQGAN: project in/out)"
    )
    decay: float = Field(0.8, gt=0.0, lt=1.0, description="EMA decay of the codebook update")
    commitment_weight: float = Field(1.0, ge=0.0, description="weight of the commitment loss ||z - sg(q)||^2")
    use_cosine_sim: bool = Field(
        False, description="l2-normalise inputs and codes before lookup (ViT-VQGAN / LlamaGen cosine codebook)"
    )
    kmeans_init: bool = Field(False, description="initialise the codebook with k-means on the first batch")
    threshold_ema_dead_code: int = Field(
        0, ge=0, description="replace codes whose EMA cluster size falls below this with batch vectors (0 = off)"
    )
    learnable_codebook: bool = Field(
        False, description="train the codebook by gradient (codebook loss) instead of EMA updates"
    )
    rotation_trick: bool = Field(
        False, description="rotation trick gradient (Fifty et al. 2024) instead of the straight-through estimator"
    )


class SimVQParams(ComponentParams):
    """SimVQ (Zhu et al. 2024): a frozen Gaussian codebook times one learnable linear map.

    The defaults are ILLUME+'s: Euclidean lookup, loss = MSE(sg(z), q) + 0.25 MSE(z, sg(q)), straight
    through (rotation trick off).
    """

    dim: int = Field(32, ge=1, description="input vector width (= code width)")
    codebook_size: int = Field(32768, ge=2, description="number of codes (rows of the frozen codebook)")
    rotation_trick: bool = Field(False, description="rotation trick gradient; ILLUME+ uses straight-through")
    commitment_weight: float = Field(1.0, ge=0.0, description="overall weight of the quantizer loss")
    input_to_quantize_commit_loss_weight: float = Field(
        0.25, ge=0.0, description="weight of the commitment term MSE(z, sg(q)) relative to the codebook term"
    )
    frozen_codebook_dim: int | None = Field(
        None, ge=1, description="width of the frozen Gaussian codebook if different from dim"
    )
    restart_dead_codes_after: int = Field(
        0,
        ge=0,
        description="training only: a code no token has chosen for this many consecutive training steps is "
        "re-seeded at one of the batch's worst-served inputs (code restart, as VectorQuantize's "
        "threshold_ema_dead_code); 0 = off, as in ILLUME+",
    )
    lookup_chunk_elements: int = Field(
        2**28,
        ge=1,
        description="bound on tokens x codes distances computed at once; inputs are looked up in chunks of "
        "tokens so a 98304-code lookup stays within memory (ILLUME+ searches in blocks)",
    )


class FSQParams(ComponentParams):
    """Finite scalar quantization (Mentzer et al. 2023): round each channel to a few levels."""

    levels: list[int] = Field(
        default_factory=lambda: [8, 5, 5, 5],
        min_length=1,
        description="levels per channel; codebook size is their product (paper: [8,5,5,5] = 1000)",
    )
    dim: int | None = Field(
        None, ge=1, description="input width; defaults to len(levels), otherwise a linear projects in and out"
    )

    @model_validator(mode="after")
    def _levels_positive(self):
        if any(level < 2 for level in self.levels):
            raise ValueError("every FSQ level must be >= 2")
        return self


class LFQParams(ComponentParams):
    """Lookup-free quantization (MAGVIT-v2, Yu et al. 2023): sign of each channel, entropy loss."""

    dim: int | None = Field(None, ge=1, description="input width; defaults to log2(codebook_size)")
    codebook_size: int = Field(4096, ge=2, description="number of codes, a power of two")
    entropy_loss_weight: float = Field(0.1, ge=0.0, description="weight of the entropy (usage) auxiliary loss")
    commitment_loss_weight: float = Field(0.25, ge=0.0, description="weight of the commitment loss")
    diversity_gamma: float = Field(1.0, ge=0.0, description="weight of the codebook entropy inside the entropy loss")
    spherical: bool = Field(False, description="l2-normalise inputs and codes (BSQ-like spherical variant)")

    @model_validator(mode="after")
    def _power_of_two(self):
        if self.codebook_size & (self.codebook_size - 1):
            raise ValueError(f"LFQ codebook_size must be a power of two, got {self.codebook_size}")
        return self


class ResidualVQParams(ComponentParams):
    """Residual VQ (SoundStream / RQ-VAE): each level quantizes the residual of the previous ones."""

    dim: int = Field(256, ge=1, description="input vector width")
    num_quantizers: int = Field(4, ge=1, description="number of residual levels (indices get a last axis of this size)")
    codebook_size: int = Field(1024, ge=2, description="codes per level")
    codebook_dim: int | None = Field(None, ge=1, description="code width if different from dim")
    shared_codebook: bool = Field(False, description="all levels share one codebook")
    decay: float = Field(0.8, gt=0.0, lt=1.0, description="EMA decay of the codebook update")
    commitment_weight: float = Field(1.0, ge=0.0, description="weight of each level's commitment loss")
    use_cosine_sim: bool = Field(False, description="cosine-similarity lookup")
    kmeans_init: bool = Field(False, description="k-means initialisation on the first batch")
    threshold_ema_dead_code: int = Field(0, ge=0, description="dead-code replacement threshold (0 = off)")
    quantize_dropout: bool = Field(False, description="drop trailing levels at random in training (SoundStream)")
