"""Params for the detokenizers (torch-free, so validating a recipe never imports torch).

Two ways back to pixels, as in ILLUME+:
- ``vq``: the tokenizer's own pixel decoder. Nothing to configure; it only works for tokenizers that
  have one (DualViTok, VQGAN), which compose checks through ``attach``.
- ``diffusion``: a diffusers UNet that denoises an image (or a VAE latent) while seeing the
  tokenizer's quantised code maps channel-concatenated to its input (ILLUME+ §4: SDXL UNet with
  4 + 64 input channels, zero text path, output-size index as micro-conditioning, 2x output).
  It is the only way back for a semantic-only tokenizer, and it can super-resolve.

Sizes are ``[height, width]`` everywhere.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from illume_kit.core.params import ComponentParams

SCHEDULERS = ("ddpm", "ddim", "euler", "dpm-solver++", "unipc", "flow-match-euler")
# one training process each: a decoder trained with any scheduler of a family samples with any other
# of it (the variance-preserving family shares its betas; rectified flow has its own target)
VP_SCHEDULERS = ("ddpm", "ddim", "euler", "dpm-solver++", "unipc")
FLOW_SCHEDULERS = ("flow-match-euler",)
Scheduler = Literal["ddpm", "ddim", "euler", "dpm-solver++", "unipc", "flow-match-euler"]


def sampling_schedulers(trained: str) -> tuple[str, ...]:
    """The schedulers a decoder trained with scheduler ``trained`` can sample with."""
    return FLOW_SCHEDULERS if trained in FLOW_SCHEDULERS else VP_SCHEDULERS


def check_sampling_scheduler(trained: str, name: str) -> str:
    """``name`` when a decoder trained with ``trained`` samples with it, else a ValueError naming the choices."""
    if name not in SCHEDULERS:
        raise ValueError(
            f"decode option scheduler={name!r} is not a diffusion scheduler; valid choices: {', '.join(SCHEDULERS)}"
        )
    valid = sampling_schedulers(trained)
    if name not in valid:
        process = "a rectified-flow velocity" if trained in FLOW_SCHEDULERS else "a variance-preserving noise schedule"
        raise ValueError(
            f"decode option scheduler={name!r}: this decoder was trained with scheduler {trained!r} "
            f"({process}), which {name!r} does not sample; valid choices: {', '.join(valid)}"
        )
    return name


class VQDetokenizerParams(ComponentParams):
    """The ``vq`` detokenizer has nothing to tune: decoding is the tokenizer's own decoder."""


def _squares_and_halves(sides: tuple[int, ...]) -> list[list[int]]:
    out = [[s, s] for s in sides]
    out += [[s, 2 * s] for s in sides[:-1]] + [[2 * s, s] for s in sides[:-1]]
    return out


# ILLUME+'s 12 output sizes (the released decoder asserts on anything else), converted from its
# (w, h) order to our [h, w].
ILLUME_OUTPUT_SIZES = [
    [1024, 1024], [1024, 768], [768, 1024], [2048, 512], [512, 2048], [1920, 640], [640, 1920],
    [1536, 768], [768, 1536], [1152, 768], [768, 1152], [512, 512],
]  # fmt: skip


class DiffusionDetokenizerParams(ComponentParams):
    # --- what it sees -------------------------------------------------------------------------
    consumes: list[str] | None = Field(
        default=None,
        description="codebook names whose quantised maps condition the denoiser (None = all of the tokenizer's)",
    )
    output_scale: Literal[1, 2] = Field(
        default=2, description="output pixels per code pixel: 2 = 2x super-resolution (ILLUME+ always uses 2)"
    )
    output_sizes: list[list[int]] = Field(
        default_factory=lambda: _squares_and_halves((16, 32, 64, 128, 256, 512)),
        description="[h, w] output sizes the size-index embedding knows; decoding another size is an error. "
        "Empty = no size conditioning",
    )
    cond_drop_prob: float = Field(
        default=0.1,
        ge=0.0,
        lt=1.0,
        description="training: probability of replacing a sample's code map with zeros (for CFG)",
    )
    # --- where it denoises ------------------------------------------------------------------
    space: Literal["pixel", "vae"] = Field(
        default="pixel",
        description="'pixel': denoise pixel-unshuffled images (tiny, CPU); 'vae': denoise AutoencoderKL latents",
    )
    patch_size: int = Field(
        default=4, ge=1, description="pixel space only: pixel-unshuffle factor, so convs run at H/patch x W/patch"
    )
    vae_config: dict[str, Any] = Field(
        default_factory=dict,
        description="space='vae': diffusers AutoencoderKL config (kwargs) when not loading weights",
    )
    vae_pretrained: str | None = Field(
        default=None,
        description="space='vae': local diffusers AutoencoderKL folder (frozen); overrides vae_config and the vae/ "
        "of a pretrained pipeline folder",
    )
    # --- the denoiser --------------------------------------------------------------------------
    unet_type: Literal["unet2d", "unet2d-condition"] = Field(
        default="unet2d",
        description="diffusers UNet2DModel, or UNet2DConditionModel (SDXL-style; its text path is fed zeros)",
    )
    block_out_channels: list[int] = Field(default=[32, 64], description="UNet channels per resolution level")
    layers_per_block: int = Field(default=1, ge=1, description="resnet layers per UNet level")
    attention_levels: list[bool] = Field(
        default=[False, True], description="unet2d: self-attention at each level (AttnDown/UpBlock2D)"
    )
    norm_num_groups: int = Field(default=8, ge=1, description="GroupNorm groups (must divide every channel count)")
    unet_config: dict[str, Any] = Field(
        default_factory=dict,
        description="extra diffusers UNet kwargs, applied over the ones built from the fields above",
    )
    pretrained: str | None = Field(
        default=None,
        description="local diffusers pipeline folder (unet/, and vae/, scheduler/, model_index.json when there: "
        "all read; save_pretrained writes one, ILLUME+'s SDXL decoder is one) or a bare diffusers UNet folder; "
        "loaded at attach. Its scheduler/ sets the scheduler fields",
    )
    # --- noise schedule and sampling ----------------------------------------------------------
    scheduler: Scheduler = Field(
        default="ddim",
        description="diffusers scheduler. ddpm/ddim/euler/dpm-solver++/unipc share one training objective and "
        "are interchangeable at sampling (decode(scheduler=...) picks another; dpm-solver++ and unipc are "
        "multistep solvers that need fewer steps); flow-match-euler trains a velocity (noise - x0) and needs "
        "its own training",
    )
    num_train_timesteps: int = Field(default=1000, ge=1, description="training noise levels")
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = Field(
        default="squaredcos_cap_v2", description="all but flow-match-euler: beta schedule"
    )
    beta_start: float = Field(
        default=0.0001, gt=0, description="all but flow-match-euler: first beta (linear schedules)"
    )
    beta_end: float = Field(default=0.02, gt=0, description="all but flow-match-euler: last beta (linear schedules)")
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = Field(
        default="epsilon",
        description="all but flow-match-euler: what the UNet predicts: epsilon (noise), v_prediction, or sample (the clean "
        "image; easiest for a tiny UNet, which cannot carry many noise channels through a narrow first block)",
    )
    flow_shift: float = Field(default=1.0, gt=0, description="flow-match-euler: timestep shift (SD3 uses 3.0)")
    scheduler_config: dict[str, Any] = Field(
        default_factory=dict,
        description="extra diffusers scheduler kwargs applied over the ones built from the fields above (e.g. "
        "timestep_spacing, steps_offset); a pretrained pipeline folder's scheduler/ sets them",
    )
    num_inference_steps: int = Field(
        default=25, ge=1, description="default sampling steps (decode(steps=...) overrides)"
    )
    guidance_scale: float = Field(
        default=1.5,
        ge=0.0,
        description="default classifier-free guidance vs an all-zero code map; 1 = none (ILLUME+: 1.5)",
    )
    guidance_rescale: float = Field(default=0.0, ge=0.0, le=1.0, description="CFG rescale (Lin et al. 2023); 0 = off")

    @field_validator("output_sizes")
    @classmethod
    def _sizes_are_pairs(cls, v: list[list[int]]) -> list[list[int]]:
        for s in v:
            if len(s) != 2 or min(s) < 1:
                raise ValueError(f"output size {s} must be [height, width] with positive entries")
        if len({tuple(s) for s in v}) != len(v):
            raise ValueError("output_sizes has duplicates")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> DiffusionDetokenizerParams:
        if self.unet_type == "unet2d" and len(self.attention_levels) != len(self.block_out_channels):
            raise ValueError(
                f"attention_levels has {len(self.attention_levels)} entries but block_out_channels has "
                f"{len(self.block_out_channels)}: give one flag per UNet level"
            )
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad and "norm_num_groups" not in self.unet_config:
            raise ValueError(f"norm_num_groups={self.norm_num_groups} does not divide block_out_channels {bad}")
        if self.consumes is not None and not self.consumes:
            raise ValueError("consumes must name at least one codebook (or be null for all)")
        return self


# SDXL's autoencoder (4 latent channels, stride 8) and UNet sizes (~2.6B parameters), built from config:
# ILLUME+'s decoder is this architecture with 4 + code_dim input channels. Load real weights with
# ``pretrained`` / ``vae_pretrained`` (local diffusers folders).
_SDXL_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=1024,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512], scaling_factor=0.13025, force_upcast=True,
)  # fmt: skip
_SDXL_UNET = dict(
    sample_size=128,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    transformer_layers_per_block=[1, 2, 10], attention_head_dim=[5, 10, 20], cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)  # fmt: skip

DIFFUSION_PRESETS: dict[str, dict[str, Any]] = {
    # CPU-sized: pixel space, 4x4 pixel-unshuffle, two UNet levels (~0.7M parameters).
    "tiny": {},
    # Same tiny UNet in the latent space of a small AutoencoderKL (stride 2): exercises the latent path on CPU.
    "tiny-latent": {
        "space": "vae",
        "vae_config": dict(
            latent_channels=4,
            block_out_channels=[16, 32],
            layers_per_block=1,
            norm_num_groups=8,
            down_block_types=["DownEncoderBlock2D"] * 2,
            up_block_types=["UpDecoderBlock2D"] * 2,
        ),  # fmt: skip
    },
    # ILLUME+'s size class: SDXL VAE + SDXL UNet (zero text path, size index in the SDXL time ids).
    "sdxl-like": {
        "space": "vae",
        "vae_config": _SDXL_VAE,
        "unet_type": "unet2d-condition",
        "block_out_channels": [320, 640, 1280],
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "unet_config": _SDXL_UNET,
        "output_sizes": ILLUME_OUTPUT_SIZES,
        "scheduler": "euler",
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "num_inference_steps": 50,
        "guidance_scale": 1.5,
    },
}
DIFFUSION_PRESETS["official"] = DIFFUSION_PRESETS["sdxl-like"]
