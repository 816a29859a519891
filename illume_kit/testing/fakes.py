"""Stand-in components for tests and benchmarks of the parts around a tokenizer.

Detokenizers, the unified model's sequence code and the sampler only need a tokenizer's codebook
specs, codes, features, ``codes_to_maps`` and (for ``vq``) ``decode``; training a real tokenizer to
test them would be slow and would couple the two. ``FakeTokenizer`` has fixed random tables:
``encode`` average-pools each codebook's stride (ceil mode, so a coarse level's grid need not divide
the image), projects the patch colours and picks the nearest code, so codes depend on the image;
``decode`` is a fixed 1x1 conv + pixel shuffle at the finest stride.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from illume_kit.core.protocols import CodebookSpec, TokenizerOutput


def level(name: str, size: int, code_dim: int, stride: int, feature_dim: int | None = None) -> CodebookSpec:
    return CodebookSpec(name, size, code_dim, stride, feature_dim or code_dim)


class FakeTokenizer(nn.Module):
    """``semantic`` / ``pixel``: (size, code_dim, stride) of the two default levels; ``codebooks``
    replaces both with any levels (coarse first). ``semantic_only`` drops the pixel level and the pixel
    decoder, like the SigLIP baseline. Image sides must be positive multiples of ``multiple``
    (default: the largest stride)."""

    def __init__(
        self,
        semantic_only: bool = False,
        semantic: tuple[int, int, int] = (16, 4, 16),
        pixel: tuple[int, int, int] = (32, 6, 8),
        seed: int = 0,
        codebooks: Sequence[CodebookSpec] | None = None,
        multiple: int | None = None,
    ) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        if codebooks is None:
            codebooks = [level("semantic", *semantic)] + ([] if semantic_only else [level("pixel", *pixel)])
        self._codebooks = tuple(codebooks)
        self.has_pixel_decoder = not semantic_only
        self.multiple = multiple or max(cb.stride for cb in self._codebooks)
        feat = {}
        for cb in self._codebooks:
            self.register_buffer(f"table_{cb.name}", torch.randn(cb.size, cb.code_dim, generator=g))
            self.register_buffer(f"proj_{cb.name}", torch.randn(3, cb.code_dim, generator=g))
            feat[cb.name] = nn.Parameter(torch.randn(3, cb.feature_dim, generator=g), requires_grad=False)
        self.feat = nn.ParameterDict(feat)  # parameters, frozen: tests change them as an optimiser step would
        fine = self._codebooks[-1]
        self.out = nn.Conv2d(sum(cb.code_dim for cb in self._codebooks), 3 * fine.stride**2, 1)
        self.out.requires_grad_(False)

    @property
    def codebooks(self) -> tuple[CodebookSpec, ...]:
        return self._codebooks

    def grid(self, height: int, width: int) -> dict[str, tuple[int, int]]:
        if height <= 0 or width <= 0 or height % self.multiple or width % self.multiple:
            raise ValueError(f"image sides must be positive multiples of {self.multiple}, got {height}x{width}")
        return {cb.name: (math.ceil(height / cb.stride), math.ceil(width / cb.stride)) for cb in self._codebooks}

    def encode(self, images: torch.Tensor) -> TokenizerOutput:
        codes, feats = {}, {}
        for cb in self._codebooks:
            patches = F.avg_pool2d(images * 2 - 1, cb.stride, ceil_mode=True).permute(0, 2, 3, 1)  # (B, h, w, 3)
            z = patches @ getattr(self, f"proj_{cb.name}")
            table = getattr(self, f"table_{cb.name}")
            dist = torch.cdist(z.flatten(1, 2), table[None].expand(z.shape[0], -1, -1))
            codes[cb.name] = dist.argmin(-1).view(z.shape[:3])
            feats[cb.name] = patches @ self.feat[cb.name]
        return TokenizerOutput(codes=codes, features=feats, quantized=self.codes_to_maps(codes))

    def codes_to_maps(self, codes: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            cb.name: F.embedding(codes[cb.name], getattr(self, f"table_{cb.name}")).permute(0, 3, 1, 2)
            for cb in self._codebooks
            if cb.name in codes
        }

    def decode(self, codes: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not self.has_pixel_decoder:
            raise RuntimeError("semantic-only FakeTokenizer has no pixel decoder")
        fine = self._codebooks[-1].name
        maps = self.codes_to_maps(codes)
        grid = maps[fine].shape[-2:]
        x = torch.cat(
            [F.interpolate(m, size=grid, mode="bicubic") if m.shape[-2:] != grid else m for m in maps.values()], 1
        )
        return torch.sigmoid(F.pixel_shuffle(self.out(x), self._codebooks[-1].stride))

    def loss(self, images: torch.Tensor, step: int = 0) -> dict[str, torch.Tensor]:
        return {"loss": images.new_zeros(())}
