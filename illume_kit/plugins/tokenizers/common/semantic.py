"""Semantic branch: teacher -> adapter -> codes -> decoder -> teacher features.

The adapter and decoder are stacks of transformers' own Qwen2-VL vision blocks (pre-LN, fused qkv,
quick-GELU MLP) at a custom width, with Qwen2-VL's axial 2D RoPE on the token grid (merge size 1,
raster order), exactly as ILLUME+'s ``SemanticEncoder``/``SemanticDecoder``. A batch of equal-size
images is packed into one sequence with per-image ``cu_seqlens``, the blocks' native format.
The reconstruction target is the teacher output through a LayerNorm without affine parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from illume_kit.plugins.tokenizers.common.batched_vision import image_rope
from illume_kit.plugins.tokenizers.common.teacher import Teacher


def xavier_init(m: nn.Module) -> None:
    """ILLUME+'s init for the semantic modules: xavier-uniform weights, zero biases, unit LayerNorms."""
    if isinstance(m, (nn.Linear, nn.Conv2d)):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def vision_blocks(width: int, heads: int, mlp_ratio: int, depth: int) -> tuple[nn.ModuleList, nn.Module]:
    """``depth`` Qwen2-VL vision blocks at ``width`` and their axial 2D rotary embedding.

    The owner registers them as ``blocks`` and ``rotary_pos_emb`` (non-persistent inv_freq only), so
    names match the official layout (``semantic_encoder.blocks.0.attn.qkv...``).
    """
    from transformers import Qwen2VLVisionConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLVisionBlock, Qwen2VLVisionRotaryEmbedding

    config = Qwen2VLVisionConfig(
        depth=depth, embed_dim=width, num_heads=heads, mlp_ratio=mlp_ratio, hidden_act="quick_gelu"
    )
    config._attn_implementation = "sdpa"
    return nn.ModuleList([Qwen2VLVisionBlock(config) for _ in range(depth)]), Qwen2VLVisionRotaryEmbedding(config)


def run_blocks(blocks: nn.ModuleList, rope: nn.Module, x: torch.Tensor, stack=None) -> torch.Tensor:
    """(B, h, w, C) token grids through the blocks, one attention segment per image, raster RoPE.

    ``stack`` (``batched_vision.vision_stack`` or a compiled copy) runs them batched instead of packed.
    """
    if len(blocks) == 0:
        return x
    if stack is not None:
        b, h, w, c = x.shape
        cos, sin = image_rope(rope, h, w, 1, x)
        return stack(blocks, x.reshape(b, h * w, c), cos, sin).reshape(b, h, w, c)
    from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids

    b, h, w, c = x.shape
    grid = torch.tensor([[1, h, w]] * b, device=x.device)
    cu_seqlens = get_vision_cu_seqlens(grid)
    positions = get_vision_position_ids(grid, 1)
    flat = x.reshape(b * h * w, c)
    cos_sin = rope(flat, positions)
    for block in blocks:
        flat = block(flat, cu_seqlens=cu_seqlens, position_embeddings=cos_sin, max_seqlen=h * w)
    return flat.reshape(b, h, w, c)


class SemanticEncoder(nn.Module):
    """Frozen teacher (``model``) + trainable adapter (``proj_in``, ``blocks``, ``proj_out``).

    ``forward(images)`` -> (codes-to-be (B, h, w, z), normalised target (B, h, w, C), raw teacher
    features (B, h, w, C)). ``proj_in`` is a 1x1 Conv2d (the official layout) applied as a linear.
    """

    def __init__(self, teacher: Teacher, width: int, heads: int, mlp_ratio: int, depth: int, z_channels: int):
        super().__init__()
        self.teacher = teacher
        self.model = teacher.build()
        c = teacher.width
        self.target_mlp = nn.Sequential(nn.LayerNorm(c, eps=1e-6, elementwise_affine=False))
        self.proj_in = nn.Conv2d(c, width, 1) if c != width else nn.Identity()
        self.blocks, self.rotary_pos_emb = vision_blocks(width, heads, mlp_ratio, depth)
        self.proj_out = nn.Sequential(nn.Linear(width, z_channels))
        for m in (self.proj_in, self.blocks, self.proj_out):
            m.apply(xavier_init)

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()  # frozen teacher: no dropout / norm statistics updates, ever
        return self

    def adapt(self, raw: torch.Tensor, stack=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw teacher features (B, h, w, C) -> (adapter output (B, h, w, z), target (B, h, w, C));
        ``stack``: see ``run_blocks``."""
        target = self.target_mlp(raw.float())
        x = target
        if isinstance(self.proj_in, nn.Conv2d):
            x = F.linear(x, self.proj_in.weight.flatten(1), self.proj_in.bias)
        x = run_blocks(self.blocks, self.rotary_pos_emb, x, stack)
        return self.proj_out(x), target

    def forward(self, images: torch.Tensor, stack=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raw = self.teacher.features(self.model, images, stack)
        z, target = self.adapt(raw, stack)
        return z, target, raw


class SemanticDecoder(nn.Module):
    """Codes (B, h, w, z) -> reconstructed normalised teacher features (B, h, w, C)."""

    def __init__(self, z_channels: int, width: int, heads: int, mlp_ratio: int, depth: int, out_channels: int):
        super().__init__()
        self.proj_in = nn.Linear(z_channels, width)
        self.blocks, self.rotary_pos_emb = vision_blocks(width, heads, mlp_ratio, depth)
        self.proj_out = nn.Sequential(nn.Linear(width, out_channels), nn.LayerNorm(out_channels))
        self.apply(xavier_init)

    def forward(self, z: torch.Tensor, stack=None) -> torch.Tensor:
        return self.proj_out(run_blocks(self.blocks, self.rotary_pos_emb, self.proj_in(z), stack))


def semantic_cosine_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of 1 - cos(pred, target) (ILLUME+'s ``semantic_reconstruction='cos'``)."""
    return (1.0 - F.cosine_similarity(pred.float(), target.float(), dim=-1)).mean()
