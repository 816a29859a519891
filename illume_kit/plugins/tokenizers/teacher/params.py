"""Semantic teacher ``Params`` and presets (torch-free).

ILLUME+'s semantic branch distils a frozen, pretrained Qwen2-VL ViT. No such weights exist offline,
so illume-kit trains its own teacher: an open_clip ViT + text transformer with the SigLIP sigmoid
loss (Zhai et al. 2023) on captioned data, then freezes it. ``tiny`` trains on CPU at 64x64 on the
shapes world (defaults = ``tiny``); ``official`` has SigLIP ViT-B/16's tower shapes (for GPU
training). The tiny defaults are sized to leave SigLIP's collapsed constant solution (every
logit equal; loss 4.45 at batch 32) within the first ~150 steps at lr 1e-3; wider or deeper towers,
or a larger learning rate, sit on it longer. The text side always uses open_clip's CLIP BPE
tokenizer, which ships inside the wheel (no hub download).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_validator

from illume_kit.core.params import RGB, ComponentParams


class TeacherParams(ComponentParams):
    image_size: int = Field(
        64,
        ge=8,
        description="training resolution; other sizes interpolate the position embeddings, and pixels "
        "past the last whole patch are dropped (SigLIP so400m/14 at 384: a 27x27 grid)",
    )
    patch_size: int = Field(8, ge=1, description="ViT patch side in pixels = stride of the feature grid")
    vision_width: int = Field(128, ge=8, description="ViT width = feature_dim of encode_image")
    vision_layers: int = Field(2, ge=1, description="ViT blocks")
    vision_head_width: int = Field(32, ge=8, description="ViT attention head width (heads = width / head_width)")
    vision_pool: Literal["avg", "tok"] = Field(
        "avg", description="image embedding: mean of patch tokens (keeps patches semantic) or the class token"
    )
    text_width: int = Field(64, ge=8, description="text transformer width")
    text_layers: int = Field(1, ge=1, description="text transformer blocks")
    text_heads: int = Field(2, ge=1, description="text transformer heads")
    context_length: int = Field(32, ge=4, le=77, description="caption tokens (CLIP BPE), longer captions are cut")
    mlp_ratio: float = Field(4.0, gt=0, description="MLP width / model width in both towers")
    embed_dim: int = Field(64, ge=8, description="shared image-text embedding width")
    init_logit_scale: float = Field(math.log(10.0), description="log temperature at init (SigLIP: log 10)")
    init_logit_bias: float = Field(-10.0, description="logit bias at init (SigLIP: -10)")
    open_clip_model: str | None = Field(
        None,
        description="an architecture open_clip ships a config for (e.g. ViT-B-16-SigLIP, ViT-SO400M-14-SigLIP-384: "
        "a timm vision tower in a CustomTextCLIP), built instead of the size fields above with random weights "
        "and nothing downloaded; its weights come from a file (`teacher.pretrained`). Captions need the CLIP "
        "BPE: a text tower with another vocabulary encodes images only",
    )
    open_clip_config: dict[str, Any] | None = Field(
        None,
        description="the same as an open_clip model config dict (embed_dim, vision_cfg, text_cfg, custom_text), "
        "for an architecture open_clip does not name",
    )
    image_mean: RGB | None = Field(
        None,
        description="input normalisation mean (default OpenAI-CLIP; SigLIP releases: 0.5)",
    )
    image_std: RGB | None = Field(
        None,
        description="input normalisation std (default OpenAI-CLIP; SigLIP releases: 0.5)",
    )
    region_weight: float = Field(
        0.0,
        ge=0.0,
        description="weight of a region-text sigmoid loss on items with `regions` (boxes with their own "
        "text): each box's mean patch feature, projected, against every region text of the batch. The image loss "
        "alone lets every patch hold the whole scene; this one makes a patch hold what is under it (SigLIP 2 "
        "adds local objectives for dense features too). 0 = the plain SigLIP loss",
    )

    @model_validator(mode="after")
    def _check(self) -> TeacherParams:
        if self.image_size < self.patch_size:
            raise ValueError(f"image_size {self.image_size} is smaller than patch_size {self.patch_size}")
        if self.vision_width % self.vision_head_width:
            raise ValueError(f"vision_width {self.vision_width} must be a multiple of vision_head_width")
        if self.open_clip_model and self.open_clip_config:
            raise ValueError("give open_clip_model or open_clip_config, not both")
        if self.text_width % self.text_heads:
            raise ValueError(f"text_width {self.text_width} must be a multiple of text_heads {self.text_heads}")
        return self


PRESETS: dict[str, dict] = {
    "tiny": {},
    "official": {  # SigLIP ViT-B/16 tower shapes
        "image_size": 224,
        "patch_size": 16,
        "vision_width": 768,
        "vision_layers": 12,
        "vision_head_width": 64,
        "text_width": 768,
        "text_layers": 12,
        "text_heads": 12,
        "context_length": 64,
        "embed_dim": 768,
    },
}
