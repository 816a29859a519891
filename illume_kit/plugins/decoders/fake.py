"""A stand-in visual tokenizer for detokenizer tests and benchmarks.

Detokenizers only need a tokenizer's codebook specs, ``codes_to_maps`` and (for ``vq``) ``decode``;
training a real tokenizer to test a decoder would be slow and would couple the two. ``FakeTokenizer``
has fixed random codebooks: ``encode`` quantises patch colours (so codes do depend on the image),
``decode`` is a fixed 1x1 conv + pixel shuffle. ``semantic_only=True`` drops the pixel level and the
pixel decoder, like the SigLIP baseline.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from illume_kit.core.protocols import CodebookSpec, TokenizerOutput


class FakeTokenizer(nn.Module):
    def __init__(
        self,
        semantic_only: bool = False,
        semantic: tuple[int, int, int] = (16, 4, 16),  # (size, code_dim, stride)
        pixel: tuple[int, int, int] = (32, 6, 8),
        seed: int = 0,
    ) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        levels = [("semantic", semantic)] + ([] if semantic_only else [("pixel", pixel)])
        self._codebooks = tuple(CodebookSpec(n, s, d, st, d) for n, (s, d, st) in levels)
        self.has_pixel_decoder = not semantic_only
        for cb in self._codebooks:
            self.register_buffer(f"table_{cb.name}", torch.randn(cb.size, cb.code_dim, generator=g))
            self.register_buffer(f"proj_{cb.name}", torch.randn(3, cb.code_dim, generator=g))
        fine = self._codebooks[-1]
        self.out = nn.Conv2d(sum(cb.code_dim for cb in self._codebooks), 3 * fine.stride**2, 1)
        self.out.requires_grad_(False)

    @property
    def codebooks(self) -> tuple[CodebookSpec, ...]:
        return self._codebooks

    def grid(self, height: int, width: int) -> dict[str, tuple[int, int]]:
        for cb in self._codebooks:
            if height % cb.stride or width % cb.stride:
                raise ValueError(f"{height}x{width} is not a multiple of the {cb.name} stride {cb.stride}")
        return {cb.name: (height // cb.stride, width // cb.stride) for cb in self._codebooks}

    def encode(self, images: torch.Tensor) -> TokenizerOutput:
        codes, feats, quant = {}, {}, {}
        for cb in self._codebooks:
            patches = F.avg_pool2d(images, cb.stride).permute(0, 2, 3, 1)  # (B, h, w, 3)
            z = patches @ getattr(self, f"proj_{cb.name}")
            table = getattr(self, f"table_{cb.name}")
            codes[cb.name] = torch.cdist(z.flatten(1, 2), table[None].expand(z.shape[0], -1, -1)).argmin(-1).view(z.shape[:3])
            feats[cb.name] = z
        quant = self.codes_to_maps(codes)
        return TokenizerOutput(codes=codes, features=feats, quantized=quant)

    def codes_to_maps(self, codes: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            cb.name: F.embedding(codes[cb.name], getattr(self, f"table_{cb.name}")).permute(0, 3, 1, 2)
            for cb in self._codebooks
            if cb.name in codes
        }

    def decode(self, codes: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not self.has_pixel_decoder:
            raise RuntimeError("semantic-only FakeTokenizer has no pixel decoder")
        maps = self.codes_to_maps(codes)
        grid = maps["pixel"].shape[-2:]
        x = torch.cat([F.interpolate(m, size=grid, mode="bicubic") if m.shape[-2:] != grid else m for m in maps.values()], 1)
        return torch.sigmoid(F.pixel_shuffle(self.out(x), self._codebooks[-1].stride))

    def loss(self, images: torch.Tensor, step: int = 0) -> dict[str, torch.Tensor]:
        return {"loss": images.new_zeros(())}
