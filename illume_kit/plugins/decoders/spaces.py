"""Where the diffusion detokenizer denoises: pixels folded into channels, or a VAE latent.

On a CPU the cost of a conv UNet follows channels x resolution, so a tiny decoder should not run its
convs at full image resolution. ``PixelSpace`` pixel-unshuffles the image (p x p patches become
3*p*p channels): the UNet runs at H/p, and since unshuffling is a permutation, Gaussian noise in
that space is Gaussian noise on pixels. ``VAESpace`` is the Stable Diffusion / ILLUME+ route: a
frozen diffusers ``AutoencoderKL`` (stride 8, 4 channels at SDXL size) maps images to latents.

Both take and return images in [-1, 1] and expose ``channels`` and ``stride`` (pixels per cell).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from illume_kit.plugins.meta import building_on_meta


class PixelSpace(nn.Module):
    def __init__(self, patch_size: int) -> None:
        super().__init__()
        self.stride = patch_size
        self.channels = 3 * patch_size * patch_size

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return F.pixel_unshuffle(images, self.stride)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(x, self.stride)


class VAESpace(nn.Module):
    """A frozen AutoencoderKL; latents are scaled (and shifted, SD3-style) to unit variance."""

    def __init__(self, config: dict | None = None, pretrained: str | None = None) -> None:
        super().__init__()
        from diffusers import AutoencoderKL

        if pretrained is not None and building_on_meta():  # compose --meta: the folder's config, no weights
            self.vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(pretrained), local_files_only=True))
        elif pretrained is not None:
            self.vae = AutoencoderKL.from_pretrained(str(pretrained), local_files_only=True, torch_dtype=torch.float32)
        else:
            self.vae = AutoencoderKL(**(config or {}))
        self.vae.requires_grad_(False)

    def load(self, folder: str | Path) -> None:
        from diffusers import AutoencoderKL

        ref = next(self.vae.parameters())
        if building_on_meta():
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(folder), local_files_only=True))
        else:
            vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True, torch_dtype=ref.dtype)
        vae = vae.to(ref.device, ref.dtype)
        self.vae = vae.requires_grad_(False)

    @property
    def channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def stride(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def _mean_std(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per-channel ``latents_mean`` / ``latents_std`` when the VAE config has them (diffusers'
        SDXL pipelines then map latents as ``z * std / scaling + mean``), else None."""
        cfg = self.vae.config
        mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
        if mean is None or std is None:
            return None
        view = (1, -1) + (1,) * (like.dim() - 2)
        return (
            torch.tensor(mean, device=like.device, dtype=like.dtype).view(view),
            torch.tensor(std, device=like.device, dtype=like.dtype).view(view),
        )

    def _shift(self) -> float:
        return getattr(self.vae.config, "shift_factor", None) or 0.0

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        dist = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        z = dist.sample(generator=generator)
        stats = self._mean_std(z)
        if stats is not None:
            return (z - stats[0]) * self.vae.config.scaling_factor / stats[1]
        return (z - self._shift()) * self.vae.config.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        stats = self._mean_std(z)
        if stats is not None:
            z = z * stats[1] / self.vae.config.scaling_factor + stats[0]
        else:
            z = z / self.vae.config.scaling_factor + self._shift()
        return self.vae.decode(z.to(self.vae.dtype)).sample
