"""VQGAN: the single-codebook pixel tokenizer that DualViTok is measured against.

taming-transformers' VQGAN as LlamaGen configures it: a CNN encoder (ResBlocks + GroupNorm, x16
downsampling), a 1x1 conv down to 8-dim codes, one l2-normalised codebook, a CNN decoder that
mirrors the encoder, and an L2 + VQ + PatchGAN hinge objective. The encoder and decoder are
diffusers' taming-style ``Encoder``/``Decoder`` (attention blocks at the lowest level through
``AttnDownEncoderBlock2D``/``AttnUpDecoderBlock2D``), the codebook any registry quantizer.

Images enter in [0, 1] and are mapped to [-1, 1] inside; with ``patch_size`` > 1 they are
pixel-unshuffled first (and pixel-shuffled at the end) so the convs run at lower resolution.
``loss`` gives the generator objective; the trainer steps the discriminator separately with
``discriminator_loss`` over ``discriminator_parameters()``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import Decoder, Encoder
from torch import nn

from illume_kit.core.protocols import CodebookSpec, TokenizerOutput
from illume_kit.plugins.tokenizers.gan import PatchGANDiscriminator, adaptive_weight, hinge_d_loss, hinge_g_loss
from illume_kit.plugins.tokenizers.quantizers import build_quantizer
from illume_kit.plugins.tokenizers.vqgan.params import VQGANParams


class VQGAN(nn.Module):
    # the blocks FSDP shards one by one and activation checkpointing recomputes (train.parallel)
    _no_split_modules = ["ResnetBlock2D", "Attention"]
    Params = VQGANParams
    has_pixel_decoder = True
    # the discriminator only trains: inference weights (a converted release) may come without it
    training_only_prefixes = ("discriminator.",)

    def __init__(self, params: VQGANParams | None = None):
        super().__init__()
        self.params = p = params if params is not None else VQGANParams()
        widths = tuple(p.channels * m for m in p.channel_mult)
        levels = len(widths)
        io = 3 * p.patch_size**2
        down = ["DownEncoderBlock2D"] * levels
        up = ["UpDecoderBlock2D"] * levels
        if p.attention:  # taming: attention at the lowest resolution
            down[-1], up[0] = "AttnDownEncoderBlock2D", "AttnUpDecoderBlock2D"
        self.encoder = Encoder(
            io,
            p.z_channels,
            tuple(down),
            widths,
            p.num_res_blocks,
            p.norm_groups,
            "silu",
            double_z=False,
            mid_block_add_attention=p.attention,
        )
        self.quant_conv = nn.Conv2d(p.z_channels, p.code_dim, 1)
        self.quantizer = build_quantizer(p.quantizer, {"dim": p.code_dim})
        self.post_quant_conv = nn.Conv2d(p.code_dim, p.z_channels, 1)
        self.decoder = Decoder(
            p.z_channels,
            io,
            tuple(up),
            widths,
            p.num_res_blocks,
            p.norm_groups,
            "silu",
            "group",
            mid_block_add_attention=p.attention,
        )
        self.discriminator = (
            PatchGANDiscriminator(3, p.disc_width, p.disc_layers, p.disc_norm) if p.disc_weight > 0 else None
        )
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # (images, detached recon) from loss()

    # ------------------------------------------------------------------ VisualTokenizer contract

    @property
    def codebooks(self) -> tuple[CodebookSpec, ...]:
        p = self.params
        return (CodebookSpec("pixel", self.quantizer.codebook_size, p.code_dim, p.stride, p.z_channels),)

    def grid(self, height: int, width: int) -> dict[str, tuple[int, int]]:
        s = self.params.stride
        if height % s or width % s or height < s or width < s:
            raise ValueError(f"vqgan: image sides must be positive multiples of {s}, got {height}x{width}")
        return {"pixel": (height // s, width // s)}

    def encode(self, images: torch.Tensor) -> TokenizerOutput:
        """images (B, 3, H, W) in [0, 1] -> codes (B, h, w), features (B, h, w, z), quantized (B, d, h, w)."""
        h, w = self.grid(images.shape[-2], images.shape[-1])["pixel"]
        x = images * 2 - 1
        if self.params.patch_size > 1:
            x = F.pixel_unshuffle(x, self.params.patch_size)
        feats = self.encoder(x)
        z = self.quant_conv(feats)
        b, d = z.shape[:2]
        q, idx, aux = self.quantizer(z.flatten(2).transpose(1, 2))
        return TokenizerOutput(
            codes={"pixel": idx.reshape(b, h, w)},
            features={"pixel": feats.permute(0, 2, 3, 1)},
            quantized={"pixel": q.transpose(1, 2).reshape(b, d, h, w)},
            losses={"vq": aux},
        )

    def decode_quantized(self, quantized: torch.Tensor) -> torch.Tensor:
        """(B, code_dim, h, w) -> decoder output in [-1, 1] space (unclamped, for losses)."""
        x = self.decoder(self.post_quant_conv(quantized))
        if self.params.patch_size > 1:
            x = F.pixel_shuffle(x, self.params.patch_size)
        return x

    def decode(self, codes: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """codes {'pixel': (B, h, w)} -> images (B, 3, 16h, 16w) in [0, 1]."""
        idx = codes["pixel"]
        b, h, w = idx.shape
        q = self.quantizer.indices_to_codes(idx.reshape(b, h * w))
        q = q.transpose(1, 2).reshape(b, -1, h, w)
        return ((self.decode_quantized(q) + 1) / 2).clamp(0, 1)

    # ------------------------------------------------------------------ training

    def _gan_on(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.params.disc_start

    def loss(self, images: torch.Tensor, step: int = 0) -> dict[str, torch.Tensor]:
        """Generator objective: recon + codebook_weight * VQ (+ disc_weight * hinge G after disc_start)."""
        p = self.params
        out = self.encode(images)
        rec = self.decode_quantized(out.quantized["pixel"])
        target = images * 2 - 1
        recon = F.mse_loss(rec, target) if p.recon_loss == "l2" else F.l1_loss(rec, target)
        vq = out.losses["vq"]
        loss = p.recon_weight * recon + p.codebook_weight * vq
        with torch.no_grad():
            mse01 = F.mse_loss((rec.clamp(-1, 1) + 1) / 2, images)
        logs = {"recon_loss": recon.detach(), "vq_loss": vq.detach(), "psnr": -10 * torch.log10(mse01.clamp(min=1e-10))}
        if self._gan_on(step):
            g = hinge_g_loss(self.discriminator(rec))
            weight = (
                adaptive_weight(p.recon_weight * recon, g, self.decoder.conv_out.weight)
                if p.adaptive_disc_weight and self.training
                else torch.ones((), device=images.device)
            )
            loss = loss + p.disc_weight * weight * g
            logs |= {"g_loss": g.detach(), "disc_adaptive_weight": weight}
        self._last = (images, rec.detach())
        return {"loss": loss, **logs}

    def discriminator_loss(self, images: torch.Tensor, step: int = 0) -> dict[str, torch.Tensor]:
        """Hinge D loss on real ``images`` vs their reconstructions (reused from the last ``loss`` call on
        the same tensor); a zero leaf before ``disc_start`` or without a discriminator."""
        if not self._gan_on(step):
            return {"loss": torch.zeros((), device=images.device, requires_grad=True)}
        if self._last is not None and self._last[0] is images:
            rec = self._last[1]
        else:
            with torch.no_grad():
                rec = self.decode_quantized(self.encode(images).quantized["pixel"])
        self._last = None
        real, fake = self.discriminator(images * 2 - 1), self.discriminator(rec.detach())
        d = hinge_d_loss(real, fake)
        return {
            "loss": self.params.disc_weight * d,
            "d_loss": d.detach(),
            "logits_real": real.mean().detach(),
            "logits_fake": fake.mean().detach(),
        }

    def generator_parameters(self) -> Iterator[nn.Parameter]:
        """Everything but the discriminator (the tokenizer's own optimizer)."""
        return (v for k, v in self.named_parameters() if not k.startswith("discriminator."))

    def discriminator_parameters(self) -> Iterator[nn.Parameter]:
        return iter(self.discriminator.parameters() if self.discriminator is not None else ())
