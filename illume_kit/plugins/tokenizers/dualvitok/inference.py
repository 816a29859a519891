"""DualViTok's inference paths: precision, memory layout, compilation, batched any-resolution encode.

A runtime setting (``DualViTok.set_inference``), never saved: checkpoints and Params are the same
whichever path runs. The default (fp32, contiguous, eager) is the reference path, the one the
parity tests hold to the official code. Any other setting runs, in eval mode only:

- the Qwen2-VL blocks (teacher ViT, semantic adapter and decoder) batched, one SDPA call per block
  over (B, heads, N, d) (``common.batched_vision``) instead of one per image;
- ``precision`` "bf16"/"fp16": the networks under autocast; both quantizer lookups (nearest code,
  index -> code) stay float32 (the quantizers disable autocast and take float32 input), and the
  returned features, maps and images are float32;
- ``channels_last``: the pixel CNNs' inputs in ``torch.channels_last``, which convolutions follow
  (the weights keep their layout, so a state dict saved afterwards is the same);
- ``compile``: ``torch.compile`` of the pixel encoder, the pixel decoder (with its post-quant conv)
  and the batched block stack; the quantizers run eagerly between them.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from illume_kit.plugins.tokenizers.common.batched_vision import vision_stack

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class InferenceSettings:
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"DualViTok inference precision {self.precision!r} is not one of {', '.join(map(repr, PRECISIONS))}"
            )

    @property
    def is_reference(self) -> bool:
        return self == InferenceSettings()

    def describe(self) -> str:
        parts = [self.precision] + ["channels-last"] * self.channels_last + ["compiled"] * self.compile
        return " ".join(parts)


def _pixel_decode(post_quant_conv: nn.Module, decoder: nn.Module, zq: torch.Tensor) -> torch.Tensor:
    return decoder(post_quant_conv(zq), zq)


class FastPath:
    """The pieces one non-reference setting runs: compiled (or eager) callables and the autocast context."""

    def __init__(self, settings: InferenceSettings, pixel_encoder: nn.Module):
        self.settings = settings
        self.dtype = PRECISIONS[settings.precision]
        if settings.compile:
            # one compiled graph per (module, shape): the teacher, adapter and decoder stacks share
            # ``vision_stack``'s code, so a few sizes and batch sizes pass dynamo's default limit of 8
            import torch._dynamo.config

            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            self.stack = torch.compile(vision_stack, dynamic=False)
            self.pixel_encoder = torch.compile(pixel_encoder, dynamic=False)
            self.pixel_decode = torch.compile(_pixel_decode, dynamic=False)
        else:
            self.stack, self.pixel_encoder, self.pixel_decode = vision_stack, pixel_encoder, _pixel_decode

    def autocast(self, device: torch.device):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.settings.channels_last else x


def encode_many(tok, images: Sequence[torch.Tensor], batch_size: int = 8) -> list[dict[str, torch.Tensor]]:
    """Codes of images of any (valid) sizes: (3, H, W) tensors in [0, 1] -> per image, in input order,
    {codebook: (h, w) indices}. Images of one size are encoded together, ``batch_size`` at a time."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, image in enumerate(images):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image {i}: expected a (3, H, W) tensor, got shape {tuple(image.shape)}")
        tok.grid(*image.shape[-2:])
        groups[tuple(image.shape[-2:])].append(i)
    out: list[dict[str, torch.Tensor] | None] = [None] * len(images)
    for indices in groups.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            codes = tok.encode(torch.stack([images[i] for i in chunk])).codes
            for j, i in enumerate(chunk):
                out[i] = {name: c[j] for name, c in codes.items()}
    return out
