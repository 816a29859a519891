"""VQGAN ``Params`` and presets (torch-free).

``official`` is LlamaGen's VQ-16 (arXiv 2406.06525): ch 128, ch_mult [1,1,2,2,4], 2 ResBlocks,
attention at the lowest level and in the middle block, z 256, one l2-normalised codebook of
16384 codes of dim 8, L2 reconstruction, PatchGAN hinge loss at weight 0.5 after 20k steps
(≈72M parameters without the discriminator; LlamaGen's LPIPS term needs VGG weights and is left out).
The codebook is vector-quantize-pytorch's EMA cosine codebook (its cosine mode has no learnable
variant) with dead-code replacement, without which a small book on shapes settles on a few dozen
codes.
``tiny`` pixel-unshuffles 4x first so every conv runs at 1/4 resolution, then downsamples once:
stride 8, so a 64x64 shapes image is 8x8 codes; at stride 16 (4x4 codes) a VQGAN this small draws
the default world's shapes as coloured blobs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from illume_kit.core.params import QuantizerRef
from illume_kit.plugins.tokenizers.gan_params import PatchGANParams


def _llamagen_quantizer() -> QuantizerRef:
    params = {"codebook_size": 16384, "use_cosine_sim": True, "commitment_weight": 0.25, "threshold_ema_dead_code": 2}
    return QuantizerRef(name="vq", params=params)


class VQGANParams(PatchGANParams):
    patch_size: int = Field(1, ge=1, description="pixel-unshuffle factor applied before the first conv (tiny: 4)")
    channels: int = Field(128, ge=1, description="base channel width of encoder and decoder (ch)")
    channel_mult: list[int] = Field(
        default_factory=lambda: [1, 1, 2, 2, 4],
        min_length=1,
        description="width multiplier per level; len-1 stride-2 downsamples (stride = patch_size * 2**(len-1))",
    )
    num_res_blocks: int = Field(2, ge=1, description="ResBlocks per encoder level (decoder uses one more, as taming)")
    attention: bool = Field(True, description="self-attention at the lowest level and in the middle block")
    z_channels: int = Field(256, ge=1, description="encoder output width = the LLM-side feature width")
    code_dim: int = Field(8, ge=1, description="code width after the 1x1 quant conv (LlamaGen: 8)")
    norm_groups: int = Field(32, ge=1, description="GroupNorm groups; must divide every level's width")
    quantizer: QuantizerRef = Field(
        default_factory=_llamagen_quantizer,
        description="quantizer from the registry; dim is set to code_dim unless given",
    )
    recon_loss: Literal["l1", "l2"] = Field("l2", description="pixel reconstruction loss (LlamaGen: l2)")
    recon_weight: float = Field(1.0, ge=0.0, description="weight of the reconstruction loss")
    codebook_weight: float = Field(1.0, ge=0.0, description="weight of the quantizer's auxiliary loss")
    # PatchGAN fields (disc_*) come from PatchGANParams

    @property
    def stride(self) -> int:
        return self.patch_size * 2 ** (len(self.channel_mult) - 1)

    @model_validator(mode="after")
    def _check(self) -> VQGANParams:
        widths = [self.channels * m for m in self.channel_mult]
        bad = [w for w in widths if w % self.norm_groups]
        if bad:
            raise ValueError(f"norm_groups {self.norm_groups} must divide every level width {widths}")
        dim = self.quantizer.params.get("dim")
        if dim is not None and dim != self.code_dim:
            raise ValueError(f"quantizer.params.dim ({dim}) must equal code_dim ({self.code_dim})")
        return self


PRESETS: dict[str, dict] = {
    "official": {},
    "tiny": {
        "patch_size": 4,
        "channels": 32,
        "channel_mult": [1, 2],
        "num_res_blocks": 1,
        "attention": False,
        "z_channels": 64,
        "code_dim": 8,
        "norm_groups": 8,
        "quantizer": {
            "name": "vq",
            "params": {
                "codebook_size": 2048,  # at 512 codes nearly all are used and the book, not training, caps PSNR
                "use_cosine_sim": True,
                "commitment_weight": 0.25,
                "threshold_ema_dead_code": 2,
            },
        },
        "disc_width": 32,
        "disc_layers": 2,
        "disc_weight": 0.1,
        "disc_start": 5_000,
    },
}
