"""DualViTok ``Params`` and presets (torch-free).

``official`` is the released ILLUME+ tokenizer (configs/example/dualvitok/dualvitok_anyres_max512.py
of ILLUME_plus @51de69d): frozen Qwen2-VL ViT teacher (depth 32, width 1280, merger to 3584,
stride 28), 4+4 adapter blocks at width 1280, SimVQ 32768 x 32 and 98304 x 32, MoVQ pixel encoder
ch 128 / decoder ch 384 with DC up/down blocks; code-swap noise off (the fix-256 config turns it on
at 0.1/0.1). Perceptual (LPIPS) loss needs local VGG weights, so it is off unless a file is given.
``tiny`` trains on 2 CPU cores at 64x64: an 8-px-patch ViT teacher, one adapter block each way,
pixel-unshuffle 4x before the CNNs and one downsample (pixel stride 8, so every conv runs at 16x16
or less), 128 semantic and 32 pixel codes. A 64x64 shapes image is 8x8 + 8x8 codes; at pixel
stride 16 (4x4 codes) a tokenizer this small draws the default world's shapes as blobs. A small
SimVQ pixel book collapses onto a few codes, differently from run to run, so ``tiny`` turns on the
pixel SimVQ's dead-code restart (``restart_dead_codes_after: 20``, not in ILLUME+), which keeps all
32 codes in use (docs/research-notes.md, Tokenizers).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from illume_kit.core.params import QuantizerRef
from illume_kit.plugins.tokenizers.common.params import TeacherParams
from illume_kit.plugins.tokenizers.gan_params import PatchGANParams


class DualViTokParams(PatchGANParams):
    teacher: TeacherParams = Field(default_factory=TeacherParams, description="frozen semantic teacher")

    # semantic adapter / decoder (Qwen2-VL vision blocks with 2D RoPE)
    semantic_width: int = Field(1280, ge=1, description="width of the adapter and semantic-decoder blocks")
    semantic_heads: int = Field(16, ge=1, description="attention heads of those blocks")
    semantic_mlp_ratio: int = Field(4, ge=1, description="MLP width / block width of those blocks")
    semantic_encoder_blocks: int = Field(4, ge=0, description="adapter blocks between the teacher and the codes")
    semantic_decoder_blocks: int = Field(4, ge=0, description="semantic-decoder blocks between codes and features")
    semantic_code_dim: int = Field(32, ge=1, description="semantic code width (adapter output, z_channels)")
    semantic_codebook_size: int = Field(32768, ge=2, description="semantic codebook size (given to the quantizer)")
    semantic_quantizer: QuantizerRef = Field(
        default_factory=lambda: QuantizerRef(name="simvq"),
        description="semantic quantizer; dim and codebook_size come from the fields above unless set here",
    )

    # pixel branch (MoVQ CNNs)
    patchify: int = Field(
        1, ge=1, description="pixel-unshuffle factor before the encoder (and shuffle after the decoder)"
    )
    encoder_channels: int = Field(128, ge=1, description="pixel encoder base width (ch)")
    encoder_channel_mult: list[int] = Field(
        default_factory=lambda: [1, 1, 2, 2, 4],
        min_length=1,
        description="pixel encoder width per level; len-1 downsamples (stride = patchify * 2**(len-1))",
    )
    encoder_res_blocks: int = Field(2, ge=1, description="ResBlocks per encoder level")
    encoder_attn_levels: list[int] = Field(
        default_factory=lambda: [4], description="encoder levels with self-attention"
    )
    pixel_z_channels: int = Field(32, ge=1, description="encoder output width = LLM-side pixel feature width")
    pixel_code_dim: int = Field(32, ge=1, description="pixel code width (after the 1x1 quant conv)")
    pixel_codebook_size: int = Field(98304, ge=2, description="pixel codebook size (given to the quantizer)")
    pixel_quantizer: QuantizerRef = Field(
        default_factory=lambda: QuantizerRef(name="simvq"),
        description="pixel quantizer; dim and codebook_size come from the fields above unless set here",
    )
    decoder_channels: int = Field(384, ge=1, description="pixel decoder base width (ch)")
    decoder_channel_mult: list[int] = Field(
        default_factory=lambda: [1, 1, 2, 2, 4],
        min_length=1,
        description="pixel decoder width per level (same number of levels as the encoder)",
    )
    decoder_res_blocks: int = Field(2, ge=1, description="decoder uses this + 1 ResBlocks per level (taming)")
    decoder_attn_levels: list[int] = Field(
        default_factory=lambda: [4], description="decoder levels with self-attention"
    )
    dc_blocks: bool = Field(True, description="DC-AE style space-to-channel down/up blocks with shortcuts")
    norm_groups: int = Field(32, ge=1, description="GroupNorm groups; must divide every CNN width")

    # code-swap noise on pixel codes (training only)
    pixel_drop_rate: float | None = Field(
        None, ge=0.0, le=1.0, description="fraction of pixel-code positions replaced in a noised sample (None = off)"
    )
    pixel_drop_batch_rate: float = Field(0.1, ge=0.0, le=1.0, description="fraction of samples that get noise")
    pixel_noise_type: Literal["random", "zero"] = Field(
        "random", description="random: take the neighbouring sample's codes (roll by one); zero: zero them"
    )

    # losses (vq_loss.py::DualViTokLoss)
    recon_weight: float = Field(1.0, ge=0.0, description="weight of the pixel MSE (images in [-1, 1])")
    perceptual_weight: float = Field(
        0.0, ge=0.0, description="weight of LPIPS (ILLUME+: 1.0; needs perceptual_weights)"
    )
    perceptual_weights: str | None = Field(
        None,
        description="local .safetensors/.pt with VGG16 + LPIPS linear weights (this module's, torchvision's or the "
        "lpips package's key names), or `random` for a randomly initialised VGG (tests and smoke runs; a warning "
        "says so); needed when perceptual_weight > 0",
    )
    codebook_weight: float = Field(1.0, ge=0.0, description="weight of the pixel quantizer loss")
    semantic_weight: float = Field(1.0, ge=0.0, description="weight of the whole semantic loss")
    semantic_codebook_weight: float = Field(1.0, ge=0.0, description="weight of the semantic quantizer loss inside it")
    semantic_recon_weight: float = Field(1.0, ge=0.0, description="weight of the 1 - cos feature loss inside it")
    # PatchGAN fields (disc_*) come from PatchGANParams

    @model_validator(mode="after")
    def _check(self):
        if len(self.encoder_channel_mult) != len(self.decoder_channel_mult):
            raise ValueError("encoder_channel_mult and decoder_channel_mult need the same number of levels")
        n = len(self.encoder_channel_mult)
        for name in ("encoder_attn_levels", "decoder_attn_levels"):
            bad = [i for i in getattr(self, name) if not 0 <= i < n]
            if bad:
                raise ValueError(f"{name} {bad} out of range for {n} levels")
        widths = [self.encoder_channels * m for m in self.encoder_channel_mult]
        widths += [self.decoder_channels * m for m in self.decoder_channel_mult]
        if any(w % self.norm_groups for w in widths):
            raise ValueError(f"norm_groups={self.norm_groups} must divide every CNN width {sorted(set(widths))}")
        if self.semantic_width % self.semantic_heads:
            raise ValueError("semantic_width must be divisible by semantic_heads")
        if self.dc_blocks:  # the DC-AE shortcuts reshape channels into the latent and back
            enc, zq = widths[len(self.encoder_channel_mult) - 1], self.semantic_code_dim + self.pixel_code_dim
            dec = self.decoder_channels * self.decoder_channel_mult[-1]
            if enc % self.pixel_z_channels:
                raise ValueError(
                    f"dc_blocks: the last encoder width {enc} must be a multiple of pixel_z_channels "
                    f"{self.pixel_z_channels}"
                )
            if dec % zq:
                raise ValueError(
                    f"dc_blocks: the last decoder width {dec} must be a multiple of semantic_code_dim + "
                    f"pixel_code_dim = {zq}"
                )
        return self

    @property
    def pixel_stride(self) -> int:
        return self.patchify * 2 ** (len(self.encoder_channel_mult) - 1)


PRESETS: dict[str, dict[str, Any]] = {
    "official": {},  # the defaults are the released configuration
    "official-fix256": {"pixel_drop_rate": 0.1, "pixel_drop_batch_rate": 0.1},
    "tiny": {
        "teacher": {
            "depth": 2,
            "embed_dim": 64,
            "num_heads": 2,
            "mlp_ratio": 2,
            "hidden_size": 128,
            "patch_size": 8,
            "spatial_merge_size": 2,
            "siglip": {"vision_width": 64, "vision_layers": 2, "text_width": 32, "text_layers": 1, "text_heads": 2},
        },
        "semantic_width": 64,
        "semantic_heads": 2,
        "semantic_mlp_ratio": 2,
        "semantic_encoder_blocks": 1,
        "semantic_decoder_blocks": 1,
        "semantic_code_dim": 16,
        "semantic_codebook_size": 128,
        "patchify": 4,
        "encoder_channels": 32,
        "encoder_channel_mult": [1, 2],
        "encoder_res_blocks": 1,
        "encoder_attn_levels": [],
        "pixel_z_channels": 16,
        "pixel_code_dim": 16,
        "pixel_codebook_size": 32,
        "pixel_quantizer": {"name": "simvq", "params": {"restart_dead_codes_after": 20}},
        "decoder_channels": 32,
        "decoder_channel_mult": [1, 2],
        "decoder_res_blocks": 1,
        "decoder_attn_levels": [1],
        "norm_groups": 8,
        "disc_weight": 0.1,
        "disc_start": 2000,
        "disc_width": 16,
        "disc_layers": 2,
    },
}
