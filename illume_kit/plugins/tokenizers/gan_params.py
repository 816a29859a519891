"""PatchGAN settings shared by the tokenizers that train with a discriminator (torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from illume_kit.core.params import ComponentParams


class PatchGANParams(ComponentParams):
    disc_weight: float = Field(0.5, ge=0.0, description="weight of the PatchGAN hinge losses (0 = no discriminator)")
    disc_start: int = Field(20_000, ge=0, description="training step at which the GAN losses switch on")
    disc_width: int = Field(64, ge=1, description="PatchGAN base width (ndf)")
    disc_layers: int = Field(3, ge=1, description="PatchGAN stride-2 layers")
    disc_norm: Literal["batch", "group", "none"] = Field("batch", description="PatchGAN normalisation")
    adaptive_disc_weight: bool = Field(
        False,
        description="scale the GAN loss by VQGAN's adaptive weight (grad-norm ratio at the last layer; ILLUME+: off)",
    )
