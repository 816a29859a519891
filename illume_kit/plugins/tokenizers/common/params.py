"""Params of the frozen semantic teacher that DualViTok and the SigLIP-only tokenizer share (torch-free)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from illume_kit.core.params import RGB, ComponentParams


class TeacherParams(ComponentParams):
    """The frozen semantic encoder whose (pre-adapter) features the semantic codes must reconstruct."""

    kind: Literal["qwen2vl-vit", "siglip"] = Field(
        "qwen2vl-vit",
        description="qwen2vl-vit: transformers' Qwen2-VL vision tower incl. its 2x2 PatchMerger (ILLUME+); "
        "siglip: illume-kit's SigLIP-trained open_clip teacher (registry teacher 'siglip-teacher'), final patch tokens",
    )
    pretrained: str | None = Field(
        None,
        description="local weights: qwen2vl-vit a transformers folder (from_pretrained, offline; its config wins "
        "over the size fields below); siglip a folder written by SemanticTeacher.save, or a .safetensors/.pt "
        "file of its open_clip model (then the architecture comes from `siglip`)",
    )
    depth: int = Field(32, ge=1, description="qwen2vl-vit: transformer blocks")
    embed_dim: int = Field(1280, ge=1, description="qwen2vl-vit: block width")
    num_heads: int = Field(16, ge=1, description="qwen2vl-vit: attention heads")
    mlp_ratio: int = Field(4, ge=1, description="qwen2vl-vit: MLP width / block width")
    hidden_size: int = Field(3584, ge=1, description="qwen2vl-vit: output width of the PatchMerger (feature_dim)")
    patch_size: int = Field(14, ge=1, description="qwen2vl-vit: patch side in pixels")
    spatial_merge_size: int = Field(
        2, ge=1, description="qwen2vl-vit: PatchMerger window side (stride = patch x merge)"
    )
    temporal_patch_size: int = Field(2, ge=1, description="qwen2vl-vit: frames per patch (a still image is duplicated)")
    siglip: dict[str, Any] = Field(
        default_factory=dict,
        description="siglip: the teacher's params (illume-kit teacher TeacherParams fields) when not loaded from a folder",
    )
    mean: RGB | None = Field(
        None,
        description="qwen2vl-vit input normalisation mean (default OpenAI-CLIP); siglip uses its own",
    )
    std: RGB | None = Field(
        None,
        description="qwen2vl-vit input normalisation std (default OpenAI-CLIP); siglip uses its own",
    )
