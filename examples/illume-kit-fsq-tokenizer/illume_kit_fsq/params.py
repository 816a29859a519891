"""Params and presets, torch-free so `illume-kit validate` stays fast."""

from pydantic import Field

from illume_kit.core.params import ComponentParams


class FSQTokenizerParams(ComponentParams):
    channels: int = Field(64, ge=8, description="width of the conv trunk")
    levels: list[int] = Field(
        default_factory=lambda: [8, 5, 5, 5], description="FSQ levels; codebook size = their product"
    )
    downsample: int = Field(16, description="stride in pixels: 8 or 16")


PRESETS = {
    "tiny": {"channels": 32, "levels": [8, 5, 5, 5], "downsample": 16},
    "official": {"channels": 128, "levels": [8, 8, 8, 5, 5, 5], "downsample": 16},
}
