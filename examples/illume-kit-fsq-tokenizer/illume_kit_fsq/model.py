"""A small convolutional autoencoder with finite scalar quantization (Mentzer et al. 2023).

Pixel-unshuffle first (cost follows channels x resolution on CPU), a few residual convs, FSQ from
vector-quantize-pytorch, and the mirror image back up. One codebook named ``pixel``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from vector_quantize_pytorch import FSQ

from illume_kit.core.protocols import CodebookSpec, TokenizerOutput
from illume_kit_fsq.params import FSQTokenizerParams


class _Res(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(8, c),
            nn.SiLU(),
            nn.Conv2d(c, c, 3, padding=1),
            nn.GroupNorm(8, c),
            nn.SiLU(),
            nn.Conv2d(c, c, 3, padding=1),
        )

    def forward(self, x):
        return x + self.body(x)


class FSQTokenizer(nn.Module):
    Params = FSQTokenizerParams
    has_pixel_decoder = True

    def __init__(self, params: FSQTokenizerParams) -> None:
        super().__init__()
        self.params = params
        if params.downsample not in (8, 16):
            raise ValueError("downsample must be 8 or 16")
        c, s, d = params.channels, params.downsample // 4, len(params.levels)
        self.encoder = nn.Sequential(
            nn.PixelUnshuffle(4),
            nn.Conv2d(48, c, 3, padding=1),
            _Res(c),
            nn.Conv2d(c, c, 3, stride=s, padding=1) if s > 1 else nn.Identity(),
            _Res(c),
            nn.Conv2d(c, d, 1),
        )
        self.quantizer = FSQ(levels=list(params.levels))
        self.decoder = nn.Sequential(
            nn.Conv2d(d, c, 3, padding=1),
            _Res(c),
            nn.Upsample(scale_factor=s, mode="nearest") if s > 1 else nn.Identity(),
            _Res(c),
            nn.Conv2d(c, 48, 3, padding=1),
            nn.PixelShuffle(4),
        )
        self._codebooks = (CodebookSpec("pixel", math.prod(params.levels), d, params.downsample, d),)

    @property
    def codebooks(self) -> tuple[CodebookSpec, ...]:
        return self._codebooks

    def grid(self, height: int, width: int) -> dict[str, tuple[int, int]]:
        s = self.params.downsample
        if height % s or width % s or height <= 0 or width <= 0:
            raise ValueError(f"image sides must be positive multiples of {s}, got {height}x{width}")
        return {"pixel": (height // s, width // s)}

    def _quantize(self, x: torch.Tensor):
        z = self.encoder(x * 2 - 1)  # (B, d, h, w)
        b, d, h, w = z.shape
        zq, idx = self.quantizer(z.flatten(2).transpose(1, 2))  # channel-last tokens (B, h*w, d)
        return z, zq.transpose(1, 2).reshape(b, d, h, w), idx.reshape(b, h, w)

    def encode(self, images: torch.Tensor) -> TokenizerOutput:
        self.grid(images.shape[-2], images.shape[-1])
        z, zq, idx = self._quantize(images)
        return TokenizerOutput(
            codes={"pixel": idx}, features={"pixel": z.permute(0, 2, 3, 1)}, quantized={"pixel": zq}, losses={}
        )

    def codes_to_maps(self, codes):
        c = codes["pixel"]
        b, h, w = c.shape
        q = self.quantizer.indices_to_codes(c.reshape(b, h * w))  # (B, h*w, d)
        return {"pixel": q.transpose(1, 2).reshape(b, -1, h, w)}

    def decode(self, codes) -> torch.Tensor:
        zq = self.codes_to_maps(codes)["pixel"]
        return ((self.decoder(zq) + 1) / 2).clamp(0, 1)

    def loss(self, images: torch.Tensor, step: int = 0) -> dict[str, torch.Tensor]:
        _, zq, _ = self._quantize(images)
        rec = (self.decoder(zq) + 1) / 2
        mse = F.mse_loss(rec, images)
        return {"loss": mse, "mse": mse}
