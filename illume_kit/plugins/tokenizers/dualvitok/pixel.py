"""Pixel branch: MoVQ-style CNN encoder and a decoder modulated by the code map.

The encoder is the taming/VQGAN ResNet (GroupNorm + SiLU ResBlocks, single-head attention at the
lowest level and in the middle block). With ``dc=True`` every resampling is DC-AE style (Chen et al.
2024): a conv to a quarter (down) or four times (up) the channels plus pixel-(un)shuffle, added to a
parameter-free shortcut (space-to-channel then channel-group mean, or channel repeat then
channel-to-space); the encoder output and the decoder input get the same kind of shortcut.

The decoder is MoVQ's (Zheng et al. 2022): every GroupNorm is a ``SpatialNorm`` whose scale and shift
are 1x1 convs of the code map ``zq`` (nearest-resized to the feature size), so the codes steer every
layer, not just the input. DualViTok's ``zq`` is concat(bicubic-resized semantic codes, pixel codes).
``patchify`` > 1 pixel-unshuffles the image first (and shuffles the output back) so that a tiny model's
convs run at low resolution. Module names follow ILLUME+'s ``MoVQEncoder``/``MoVQDecoder``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Swish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)


class SpatialNorm(nn.Module):
    """GroupNorm(x) * conv_y(zq) + conv_b(zq), zq nearest-resized to x."""

    def __init__(self, channels: int, zq_channels: int, groups: int):
        super().__init__()
        self.norm_layer = nn.GroupNorm(groups, channels, eps=1e-6, affine=True)
        self.conv_y = nn.Conv2d(zq_channels, channels, 1)
        self.conv_b = nn.Conv2d(zq_channels, channels, 1)

    def forward(self, x: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        zq = F.interpolate(zq, size=x.shape[-2:], mode="nearest")
        return self.norm_layer(x) * self.conv_y(zq) + self.conv_b(zq)


def _norm(channels: int, groups: int, zq_channels: int | None) -> nn.Module:
    if zq_channels is None:
        return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)
    return SpatialNorm(channels, zq_channels, groups)


def _apply_norm(norm: nn.Module, x: torch.Tensor, zq: torch.Tensor | None) -> torch.Tensor:
    return norm(x, zq) if isinstance(norm, SpatialNorm) else norm(x)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int, zq_channels: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.norm1 = _norm(cin, groups, zq_channels)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2 = _norm(cout, groups, zq_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(_apply_norm(self.norm1, x, zq)))
        h = self.conv2(self.dropout(F.silu(_apply_norm(self.norm2, h, zq))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions (1x1-conv q, k, v, out)."""

    def __init__(self, channels: int, groups: int, zq_channels: int | None = None):
        super().__init__()
        self.norm = _norm(channels, groups, zq_channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        n = _apply_norm(self.norm, x, zq)
        q, k, v = (f(n).flatten(2).transpose(1, 2).unsqueeze(1) for f in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """DC: conv to C/4 + pixel-unshuffle, plus unshuffle-then-group-mean shortcut; else strided conv."""

    def __init__(self, channels: int, dc: bool):
        super().__init__()
        self.dc = dc
        self.conv = nn.Conv2d(channels, channels // 4, 3, 1, 1) if dc else nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.dc:
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        shortcut = F.pixel_unshuffle(x, 2).unflatten(1, (-1, 4)).mean(2)
        return F.pixel_unshuffle(self.conv(x), 2) + shortcut


class Upsample(nn.Module):
    """DC: conv to 4C + pixel-shuffle, plus repeat-then-shuffle shortcut; else nearest 2x + conv."""

    def __init__(self, channels: int, dc: bool):
        super().__init__()
        self.dc = dc
        self.conv = nn.Conv2d(channels, channels * 4 if dc else channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.dc:
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        shortcut = F.pixel_shuffle(x.repeat_interleave(4, dim=1), 2)
        return F.pixel_shuffle(self.conv(x), 2) + shortcut


class PixelEncoder(nn.Module):
    """Images (B, 3, H, W) in [-1, 1] -> (B, z_channels, H/stride, W/stride)."""

    def __init__(
        self,
        ch: int,
        ch_mult: list[int],
        num_res_blocks: int,
        attn_levels: list[int],
        z_channels: int,
        groups: int,
        dc: bool = True,
        patchify: int = 1,
        in_channels: int = 3,
    ):
        super().__init__()
        self.patchify, self.dc = patchify, dc
        self.conv_in = nn.Conv2d(in_channels * patchify**2, ch, 3, 1, 1)
        self.down = nn.ModuleList()
        block_in = ch
        for level, mult in enumerate(ch_mult):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                stage.block.append(ResnetBlock(block_in, ch * mult, groups))
                block_in = ch * mult
                if level in attn_levels:
                    stage.attn.append(AttnBlock(block_in, groups))
            if level != len(ch_mult) - 1:
                stage.downsample = Downsample(block_in, dc)
            self.down.append(stage)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, groups)
        self.mid.attn_1 = AttnBlock(block_in, groups)
        self.mid.block_2 = ResnetBlock(block_in, block_in, groups)
        self.norm_out = nn.GroupNorm(groups, block_in, eps=1e-6, affine=True)
        self.act = Swish()
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, 1, 1)
        if dc and block_in % z_channels:
            raise ValueError(f"DC shortcut needs the last width {block_in} to be a multiple of z_channels {z_channels}")
        self.out_group = block_in // z_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.patchify > 1:
            x = F.pixel_unshuffle(x, self.patchify)
        h = self.conv_in(x)
        for stage in self.down:
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        h = self.act(self.norm_out(h))
        if self.dc:
            return self.conv_out(h) + h.unflatten(1, (-1, self.out_group)).mean(2)
        return self.conv_out(h)


class PixelDecoder(nn.Module):
    """(z (B, z_channels, h, w), zq (B, zq_channels, h, w)) -> images (B, 3, h*stride, w*stride) ~[-1, 1]."""

    def __init__(
        self,
        ch: int,
        ch_mult: list[int],
        num_res_blocks: int,
        attn_levels: list[int],
        z_channels: int,
        zq_channels: int,
        groups: int,
        dc: bool = True,
        patchify: int = 1,
        out_channels: int = 3,
    ):
        super().__init__()
        self.patchify, self.dc = patchify, dc
        block_in = ch * ch_mult[-1]
        if dc and block_in % z_channels:
            raise ValueError(
                f"DC shortcut needs the bottom width {block_in} to be a multiple of z_channels {z_channels}"
            )
        self.in_repeats = block_in // z_channels
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, 1, 1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, groups, zq_channels)
        self.mid.attn_1 = AttnBlock(block_in, groups, zq_channels)
        self.mid.block_2 = ResnetBlock(block_in, block_in, groups, zq_channels)
        self.up = nn.ModuleList()
        for level in reversed(range(len(ch_mult))):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                stage.block.append(ResnetBlock(block_in, ch * ch_mult[level], groups, zq_channels))
                block_in = ch * ch_mult[level]
                if level in attn_levels:
                    stage.attn.append(AttnBlock(block_in, groups, zq_channels))
            if level != 0:
                stage.upsample = Upsample(block_in, dc)
            self.up.insert(0, stage)
        self.act = Swish()
        self.norm_out = SpatialNorm(block_in, zq_channels, groups)
        self.conv_out = nn.Conv2d(block_in, out_channels * patchify**2, 3, 1, 1)

    @property
    def last_layer(self) -> torch.Tensor:
        return self.conv_out.weight

    def forward(self, z: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        if self.dc:
            h = h + z.repeat_interleave(self.in_repeats, dim=1)
        h = self.mid.block_1(h, zq)
        h = self.mid.attn_1(h, zq)
        h = self.mid.block_2(h, zq)
        for stage in reversed(self.up):
            for i, block in enumerate(stage.block):
                h = block(h, zq)
                if len(stage.attn):
                    h = stage.attn[i](h, zq)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        h = self.conv_out(self.act(self.norm_out(h, zq)))
        return F.pixel_shuffle(h, self.patchify) if self.patchify > 1 else h
