"""The frozen semantic teacher: build it, preprocess images for it, read its features.

ILLUME+ uses the whole Qwen2-VL vision tower (all blocks plus the 2x2 PatchMerger, 3584-d per
28-px token). Its preprocessing is reproduced exactly: bicubic antialiased resize to a size the
28-px grid divides (a fixed table for the trained anchors, otherwise floored), OpenAI-CLIP
normalisation, the still frame duplicated to fill the temporal patch, and patches emitted in
Qwen2-VL order (2x2 merge windows contiguous) so the merger groups the right four patches.
``siglip`` is the offline alternative: illume-kit's own SigLIP-trained open_clip teacher (registry
``teacher: siglip-teacher``), whose final patch tokens are the features (stride = its patch size,
the grid follows the image).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from illume_kit.plugins.meta import building_on_meta
from illume_kit.plugins.tokenizers.common.params import TeacherParams

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# (H, W) -> ViT input size, from ILLUME+'s ScalingLayerForQwen2ViT (stride-28 anchors).
RESOLUTION_MAPPING = {
    (256, 256): (252, 252),
    (512, 512): (504, 504),
    (512, 384): (448, 336),
    (384, 512): (336, 448),
    (768, 384): (728, 364),
    (384, 768): (364, 728),
    (1024, 256): (1008, 252),
    (256, 1024): (252, 1008),
    (384, 576): (336, 504),
    (576, 384): (504, 336),
    (960, 320): (924, 308),
    (320, 960): (308, 924),
}


def vit_input_size(height: int, width: int, factor: int) -> tuple[int, int]:
    """Resized (H, W) for a ViT whose token stride is ``factor`` (the table only applies at 28)."""
    if factor == 28 and (height, width) in RESOLUTION_MAPPING:
        return RESOLUTION_MAPPING[(height, width)]
    return max(factor, height // factor * factor), max(factor, width // factor * factor)


def qwen2vl_patches(
    images: torch.Tensor,
    size: tuple[int, int],
    patch: int,
    temporal: int,
    merge: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """images (B, 3, H, W) in [0, 1] -> (B * gh * gw, 3 * temporal * patch**2) rows, grid_thw (B, 3)."""
    b, c = images.shape[:2]
    x = F.interpolate(images.float(), size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    x = (x - x.new_tensor(mean).view(1, -1, 1, 1)) / x.new_tensor(std).view(1, -1, 1, 1)
    gh, gw = size[0] // patch, size[1] // patch
    # (B, C, gh/m, m, p, gw/m, m, p) -> rows ordered (B, window row, window col, m, m), values (C, T, p, p)
    x = x.reshape(b, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # b, hm, wm, m1, m2, c, p1, p2
    x = x.unsqueeze(6).expand(*x.shape[:6], temporal, patch, patch)  # duplicate the frame in time
    rows = x.reshape(-1, c * temporal * patch * patch)
    grid = torch.tensor([[1, gh, gw]] * b, device=images.device)
    return rows, grid


def _load_state(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


class Teacher:
    """Builds the frozen network (``DualViTok.semantic_encoder.model``) and reads features from it.

    Not a module itself: the network is owned by ``SemanticEncoder.model`` so that parameter names
    match the official checkpoint (``semantic_encoder.model.blocks.0...``).
    """

    def __init__(self, params: TeacherParams):
        self.params = params
        self.kind = params.kind
        self.mean = tuple(params.mean or OPENAI_CLIP_MEAN)  # qwen2vl-vit only; siglip normalises itself
        self.std = tuple(params.std or OPENAI_CLIP_STD)

    def build(self) -> nn.Module:
        p = self.params
        if self.kind == "qwen2vl-vit":
            from transformers import Qwen2VLVisionConfig
            from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

            if p.pretrained:
                if not Path(p.pretrained).is_dir():
                    raise FileNotFoundError(f"teacher.pretrained: {p.pretrained!r} is not a local folder")
                if building_on_meta():  # compose --meta: the folder's architecture, no weights read
                    config = Qwen2VLVisionConfig.from_pretrained(p.pretrained, local_files_only=True)
                    config._attn_implementation = "sdpa"
                    model = Qwen2VisionTransformerPretrainedModel(config)
                else:
                    model = Qwen2VisionTransformerPretrainedModel.from_pretrained(
                        p.pretrained, local_files_only=True, attn_implementation="sdpa"
                    )
            else:
                config = Qwen2VLVisionConfig(
                    depth=p.depth,
                    embed_dim=p.embed_dim,
                    num_heads=p.num_heads,
                    mlp_ratio=p.mlp_ratio,
                    hidden_size=p.hidden_size,
                    patch_size=p.patch_size,
                    spatial_merge_size=p.spatial_merge_size,
                    temporal_patch_size=p.temporal_patch_size,
                    hidden_act="quick_gelu",
                )
                config._attn_implementation = "sdpa"
                model = Qwen2VisionTransformerPretrainedModel(config)
            c = model.config
            self.patch, self.merge, self.temporal = c.patch_size, c.spatial_merge_size, c.temporal_patch_size
            self.stride, self.width = c.patch_size * c.spatial_merge_size, c.hidden_size
        else:
            from illume_kit.plugins.tokenizers.teacher.model import SemanticTeacher
            from illume_kit.plugins.tokenizers.teacher.params import TeacherParams as SigLIPParams

            if p.pretrained and Path(p.pretrained).is_dir():
                # a folder written by SemanticTeacher.save (on meta: its config only)
                model = SemanticTeacher.load(p.pretrained, weights=not building_on_meta())
            else:
                model = SemanticTeacher(SigLIPParams(**p.siglip))
                if p.pretrained and not building_on_meta():
                    state = _load_state(p.pretrained)
                    state = {k.removeprefix("clip."): v for k, v in state.items()}
                    model.clip.load_state_dict(state, strict=True)
            self.stride, self.width = model.patch_size, model.feature_dim
        model.requires_grad_(False)
        return model.eval()

    def self_contained(self, model: nn.Module) -> dict[str, Any]:
        """These params with ``model``'s architecture written out and no ``pretrained`` path.

        A checkpoint holds the teacher's weights (``semantic_encoder.model.*``), so it needs only the
        architecture to rebuild the teacher; the folder it was first loaded from (often a relative
        ``runs/.../teacher``) need not exist where the checkpoint is loaded.
        """
        d = self.params.model_dump(mode="json")
        if not d["pretrained"]:
            return d
        if self.kind == "siglip":
            d["siglip"] = model.params.model_dump(mode="json")
        else:
            c = model.config
            d.update(
                depth=c.depth,
                embed_dim=c.embed_dim,
                num_heads=c.num_heads,
                mlp_ratio=c.mlp_ratio,
                hidden_size=c.hidden_size,
                patch_size=c.patch_size,
                spatial_merge_size=c.spatial_merge_size,
                temporal_patch_size=c.temporal_patch_size,
            )
        d["pretrained"] = None
        return d

    def grid(self, height: int, width: int) -> tuple[int, int]:
        if self.kind == "siglip":
            return height // self.stride, width // self.stride
        h, w = vit_input_size(height, width, self.stride)
        return h // self.stride, w // self.stride

    @torch.no_grad()
    def features(self, model: nn.Module, images: torch.Tensor, stack=None) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> raw teacher features (B, h, w, width), without gradients."""
        return self.run(model, images, stack)

    def run(self, model: nn.Module, images: torch.Tensor, stack=None) -> torch.Tensor:
        """``features`` with gradients as the caller's mode has them: for a trained copy of the ViT
        (the LLM's own input encoder). ``stack`` (Qwen2-VL ViT only) runs its blocks batched
        (``batched_vision.vision_stack`` or a compiled copy) instead of packed."""
        dtype = next(model.parameters()).dtype
        if self.kind == "qwen2vl-vit":
            b, (h, w) = images.shape[0], self.grid(*images.shape[-2:])
            size = (h * self.stride, w * self.stride)
            rows, grid = qwen2vl_patches(images, size, self.patch, self.temporal, self.merge, self.mean, self.std)
            if stack is not None:
                from illume_kit.plugins.tokenizers.common.batched_vision import qwen2vl_vit

                gh, gw = size[0] // self.patch, size[1] // self.patch
                return qwen2vl_vit(model, rows.to(dtype), b, gh, gw, stack).reshape(b, h, w, -1)
            out = model(rows.to(dtype), grid_thw=grid)
            merged = getattr(out, "pooler_output", out)
            return merged.reshape(b, h, w, -1)
        return model.encode_image(images.to(dtype))
