"""Qwen2-VL vision blocks over a batch of equal-size images as (B, N, C), one SDPA call per block.

transformers runs its vision blocks on one packed sequence and, outside flash attention, splits
q/k/v per image with ``cu_seqlens.tolist()`` and calls SDPA once per image: a host sync and a graph
break under ``torch.compile``, and B small attention calls instead of one. When every image in a
batch has the same grid (as in one ``DualViTok.encode`` call) the segments are equal, so the same
math is a batched SDPA over (B, heads, N, d) with the RoPE of one image broadcast over the batch.
These functions use the blocks' own weights (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``,
``mlp``, the ViT's ``patch_embed`` and ``merger``); the packed path stays the reference, and
tests check the two agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def image_rope(rope: nn.Module, h: int, w: int, merge: int, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (h * w, head_dim) of one image's token grid (merge windows contiguous when merge > 1)."""
    from transformers.vision_utils import get_vision_position_ids

    grid = torch.tensor([[1, h, w]], device=ref.device)
    return rope(ref, get_vision_position_ids(grid, merge))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def vision_block(block: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """One ``Qwen2VLVisionBlock`` on x (B, N, C); cos/sin (N, head_dim), rotation in float32 as upstream."""
    attn = block.attn
    b, n, c = x.shape
    h = block.norm1(x)
    q, k, v = attn.qkv(h).reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, d)
    dtype = q.dtype
    cos, sin = cos.float(), sin.float()
    q = (q.float() * cos + _rotate_half(q.float()) * sin).to(dtype)
    k = (k.float() * cos + _rotate_half(k.float()) * sin).to(dtype)
    out = F.scaled_dot_product_attention(q, k, v, scale=attn.scaling)
    x = x + attn.proj(out.transpose(1, 2).reshape(b, n, c))
    return x + block.mlp(block.norm2(x))


def vision_stack(blocks: nn.ModuleList, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    for block in blocks:
        x = vision_block(block, x, cos, sin)
    return x


def qwen2vl_vit(model: nn.Module, rows: torch.Tensor, b: int, h: int, w: int, stack=vision_stack) -> torch.Tensor:
    """``Qwen2VisionTransformerPretrainedModel`` on the patch rows of ``b`` images of an (h, w) patch grid
    -> merged features (b * h * w / merge**2, hidden); ``stack`` runs the blocks (eager or compiled)."""
    hidden = model.patch_embed(rows)
    cos, sin = image_rope(model.rotary_pos_emb, h, w, model.spatial_merge_size, hidden)
    hidden = stack(model.blocks, hidden.reshape(b, h * w, -1), cos, sin)
    return model.merger(hidden.reshape(b * h * w, -1))
