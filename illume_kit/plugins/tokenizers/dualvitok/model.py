"""DualViTok: the ILLUME+ dual visual tokenizer as an illume-kit ``VisualTokenizer``.

Two codebooks per image, coarse first: ``semantic`` (teacher ViT -> adapter -> SimVQ, stride 28
through the resize table) and ``pixel`` (MoVQ CNN -> 1x1 -> SimVQ, stride 16). The pixel decoder
reconstructs the image from both code maps (semantic bicubic-resized to the pixel grid, concatenated
semantic first), the semantic decoder reconstructs the teacher's normalised features.
For the LLM's input side ``encode`` also returns the *pre-quantisation* features ILLUME+ feeds its
projectors: the raw teacher output (before LayerNorm and adapter) and the raw CNN output (before
the quant conv). Submodule names follow the official checkpoint, so ``convert.py`` is a renaming of
the two quantizers only. Images at the boundary are (B, 3, H, W) in [0, 1]; inside, the pixel
branch works in [-1, 1] like the original.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from illume_kit.core.protocols import CodebookSpec, TokenizerOutput
from illume_kit.plugins.tokenizers.common.quantizer import build_code_quantizer
from illume_kit.plugins.tokenizers.common.semantic import SemanticDecoder, SemanticEncoder
from illume_kit.plugins.tokenizers.common.teacher import Teacher
from illume_kit.plugins.tokenizers.dualvitok import loss as _loss
from illume_kit.plugins.tokenizers.dualvitok.inference import FastPath, InferenceSettings, encode_many
from illume_kit.plugins.tokenizers.dualvitok.params import PRESETS, DualViTokParams
from illume_kit.plugins.tokenizers.dualvitok.pixel import PixelDecoder, PixelEncoder
from illume_kit.plugins.tokenizers.gan import PatchGANDiscriminator


class DualViTokInputEncoder(nn.Module):
    """The LLM-side copy of DualViTok's two encoders (ILLUME+'s ``DualVisionTower``): the teacher ViT
    (``semantic``) and the pixel CNN (``pixel``), giving the same pre-quantisation features as
    ``DualViTok.encode`` but from their own weights. It starts frozen; an mllm stage that names the
    ``input_encoder`` group trains it, with gradients through both encoders."""

    # the blocks FSDP shards one by one and activation checkpointing recomputes (train.parallel)
    _no_split_modules = ["Qwen2VLVisionBlock", "ResidualAttentionBlock", "ResnetBlock", "AttnBlock"]

    def __init__(self, tokenizer: DualViTok) -> None:
        super().__init__()
        self._teacher = [tokenizer.teacher]  # preprocessing and grid only; a list keeps it out of the module tree
        self.semantic = copy.deepcopy(tokenizer.semantic_encoder.model)
        self.pixel = copy.deepcopy(tokenizer.pixel_encoder)
        self.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        teacher = self._teacher[0]
        return {
            "semantic": teacher.run(self.semantic, images),
            "pixel": self.pixel(images * 2 - 1).permute(0, 2, 3, 1),
        }


class DualViTok(nn.Module):
    """ILLUME+'s dual visual tokenizer (see the module docstring).

    Inference paths: ``tok.set_inference(precision="bf16", channels_last=True, compile=True)`` picks
    how ``encode``, ``decode``, ``encode_many`` and ``forward`` run in eval mode; ``set_inference()``
    restores the reference path (fp32, eager, contiguous), the one that matches the official code
    exactly. ``precision`` is "fp32", "bf16" or "fp16" (autocast; the quantizer lookups stay
    float32). It is a runtime setting: not in Params or checkpoints, ignored in training mode.
    What each option does and costs: ``dualvitok.inference`` and docs/benchmarks.md.
    ``encode_many(images, batch_size)`` encodes a list of images of mixed sizes, grouped by size.
    """

    # the blocks FSDP shards one by one and activation checkpointing recomputes (train.parallel)
    _no_split_modules = ["Qwen2VLVisionBlock", "ResidualAttentionBlock", "ResnetBlock", "AttnBlock"]
    Params = DualViTokParams
    PRESETS = PRESETS
    has_pixel_decoder = True
    # the discriminator only trains: inference weights (a converted release) may come without it
    training_only_prefixes = ("discriminator.",)

    def __init__(self, params: DualViTokParams | None = None):
        super().__init__()
        p = self.params = params if params is not None else DualViTokParams()
        teacher = self.teacher = Teacher(p.teacher)
        # semantic branch
        self.semantic_encoder = SemanticEncoder(
            teacher,
            p.semantic_width,
            p.semantic_heads,
            p.semantic_mlp_ratio,
            p.semantic_encoder_blocks,
            p.semantic_code_dim,
        )
        self.semantic_quantizer = build_code_quantizer(
            p.semantic_quantizer, p.semantic_code_dim, p.semantic_codebook_size, "semantic"
        )
        self.semantic_decoder = SemanticDecoder(
            p.semantic_code_dim,
            p.semantic_width,
            p.semantic_heads,
            p.semantic_mlp_ratio,
            p.semantic_decoder_blocks,
            teacher.width,
        )
        # pixel branch
        self.pixel_encoder = PixelEncoder(
            p.encoder_channels,
            p.encoder_channel_mult,
            p.encoder_res_blocks,
            p.encoder_attn_levels,
            p.pixel_z_channels,
            p.norm_groups,
            dc=p.dc_blocks,
            patchify=p.patchify,
        )
        self.pixel_quant_conv = nn.Conv2d(p.pixel_z_channels, p.pixel_code_dim, 1)
        self.pixel_quantizer = build_code_quantizer(p.pixel_quantizer, p.pixel_code_dim, p.pixel_codebook_size, "pixel")
        zq = p.semantic_code_dim + p.pixel_code_dim
        self.pixel_post_quant_conv = nn.Conv2d(zq, zq, 1)
        self.pixel_decoder = PixelDecoder(
            p.decoder_channels,
            p.decoder_channel_mult,
            p.decoder_res_blocks,
            p.decoder_attn_levels,
            zq,
            zq,
            p.norm_groups,
            dc=p.dc_blocks,
            patchify=p.patchify,
        )
        # training-only parts: the discriminator is a submodule (its optimiser is separate, see
        # discriminator_parameters); LPIPS is a frozen metric kept out of the state dict.
        self.discriminator = (
            PatchGANDiscriminator(3, p.disc_width, p.disc_layers, p.disc_norm) if p.disc_weight > 0 else None
        )
        self._lpips: list[nn.Module] = []
        self._last_reconstruction: tuple[torch.Tensor, torch.Tensor] | None = None
        self._fast: FastPath | None = None  # plain attributes: compiled copies stay out of the module tree
        self._fast_paths: dict[InferenceSettings, FastPath] = {}  # switching back does not recompile

    # ------------------------------------------------------------------ inference paths
    def set_inference(self, precision: str = "fp32", channels_last: bool = False, compile: bool = False) -> DualViTok:
        """Choose the eval-mode inference path (see the class docstring); returns self."""
        settings = InferenceSettings(precision, channels_last, compile)
        if settings.is_reference:
            self._fast = None
        else:
            if settings not in self._fast_paths:
                self._fast_paths[settings] = FastPath(settings, self.pixel_encoder)
            self._fast = self._fast_paths[settings]
        return self

    @property
    def inference_settings(self) -> InferenceSettings:
        return InferenceSettings() if self._fast is None else self._fast.settings

    def _fast_path(self) -> FastPath | None:
        return None if self.training else self._fast

    def encode_many(self, images: Sequence[torch.Tensor], batch_size: int = 8) -> list[dict[str, torch.Tensor]]:
        """(3, H, W) images of any valid sizes in [0, 1] -> per image {codebook: (h, w) codes}, in input
        order; images of one size are encoded together, ``batch_size`` at a time."""
        return encode_many(self, images, batch_size)

    # ------------------------------------------------------------------ contract
    @classmethod
    def from_official(cls, path: str, params: DualViTokParams) -> DualViTok:
        """The released DualViTok weights file (safetensors, or a weights-only torch pickle) as this
        class with ``params``; ``ConversionError`` names what does not fit."""
        from illume_kit.plugins.tokenizers.dualvitok.convert import instantiate_official, load_official_file

        return instantiate_official(load_official_file(path, params), params)

    def make_input_encoder(self) -> DualViTokInputEncoder:
        return DualViTokInputEncoder(self)

    def checkpoint_params(self, params: dict) -> dict:
        """What a checkpoint's manifest records: the teacher written out, its weights being ours."""
        return {**params, "teacher": self.teacher.self_contained(self.semantic_encoder.model)}

    @property
    def codebooks(self) -> tuple[CodebookSpec, ...]:
        p = self.params
        return (
            CodebookSpec(
                "semantic",
                self.semantic_quantizer.codebook_size,
                p.semantic_code_dim,
                self.teacher.stride,
                self.teacher.width,
            ),
            CodebookSpec(
                "pixel", self.pixel_quantizer.codebook_size, p.pixel_code_dim, p.pixel_stride, p.pixel_z_channels
            ),
        )

    def grid(self, height: int, width: int) -> dict[str, tuple[int, int]]:
        s = self.params.pixel_stride
        if height < s or width < s or height % s or width % s:
            raise ValueError(f"DualViTok needs image sides that are positive multiples of {s}, got {height}x{width}")
        return {"semantic": self.teacher.grid(height, width), "pixel": (height // s, width // s)}

    def encode(self, images: torch.Tensor) -> TokenizerOutput:
        """images (B, 3, H, W) in [0, 1] -> codes, LLM-side features, quantised maps, quantizer losses."""
        out = self._encode(images)
        return TokenizerOutput(
            codes={"semantic": out["semantic_codes"], "pixel": out["pixel_codes"]},
            features={"semantic": out["semantic_features"], "pixel": out["pixel_features"]},
            quantized={"semantic": out["semantic_quantized"], "pixel": out["pixel_quantized"]},
            losses={"semantic_vq": out["semantic_vq"], "pixel_vq": out["pixel_vq"]},
        )

    def decode(self, codes: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """{'semantic': (B, hs, ws), 'pixel': (B, hp, wp)} -> images (B, 3, 16 hp, 16 wp) in [0, 1]."""
        q_sem = self.codes_to_quantized("semantic", codes["semantic"])
        q_pix = self.codes_to_quantized("pixel", codes["pixel"])
        return ((self.decode_quantized(q_sem, q_pix).float() + 1) / 2).clamp(0, 1)

    def loss(self, images: torch.Tensor, step: int = 0) -> dict[str, torch.Tensor]:
        """Generator objective; ``loss`` is the scalar to minimise, the rest are detached parts."""
        return _loss.generator_loss(self, images, step)

    def discriminator_loss(self, images: torch.Tensor, step: int = 0) -> dict[str, torch.Tensor]:
        """PatchGAN objective for the discriminator step (reuses ``loss``'s reconstructions of ``images``)."""
        return _loss.discriminator_loss(self, images, step)

    def discriminator_active(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.params.disc_start

    def generator_parameters(self):
        return (q for n, q in self.named_parameters() if q.requires_grad and not n.startswith("discriminator."))

    def discriminator_parameters(self):
        return iter(()) if self.discriminator is None else self.discriminator.parameters()

    def codes_to_maps(self, codes: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Codes -> quantised maps (B, code_dim, h, w) per codebook (what a diffusion decoder conditions on)."""
        return {name: self.codes_to_quantized(name, c) for name, c in codes.items()}

    @torch.no_grad()
    def semantic_cosine(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image mean cosine between the semantic decoder's reconstruction and the teacher target."""
        out = self._encode(images)
        rec = self.decode_semantic(out["semantic_quantized"])
        return F.cosine_similarity(rec.float(), out["semantic_target"].float(), dim=-1).flatten(1).mean(1)

    # ------------------------------------------------------------------ pieces
    def codes_to_quantized(self, name: str, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) indices -> (B, code_dim, h, w) quantised map."""
        quantizer = self.semantic_quantizer if name == "semantic" else self.pixel_quantizer
        b, h, w = codes.shape
        return quantizer.indices_to_codes(codes.reshape(b, h * w)).reshape(b, h, w, -1).permute(0, 3, 1, 2)

    def _encode(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        b = images.shape[0]
        self.grid(*images.shape[-2:])
        fast = self._fast_path()
        if fast is None:
            z_sem, target, raw = self.semantic_encoder(images)
            pix = self.pixel_encoder(images * 2 - 1)
            h_pix = self.pixel_quant_conv(pix)
        else:
            with fast.autocast(images.device):
                z_sem, target, raw = self.semantic_encoder(images, fast.stack)
                pix = fast.pixel_encoder(fast.layout(images * 2 - 1))
                h_pix = self.pixel_quant_conv(pix)
            raw, pix, target = raw.float(), pix.float().contiguous(), target.float()
        hs, ws = z_sem.shape[1:3]
        # the lookups are float32 whatever the path (the quantizers also switch autocast off)
        sq = self.semantic_quantizer(z_sem.reshape(b, hs * ws, -1).float())
        hp, wp = pix.shape[-2:]
        pq = self.pixel_quantizer(h_pix.flatten(2).transpose(1, 2).float())
        return {
            "semantic_codes": sq.indices.reshape(b, hs, ws),
            "pixel_codes": pq.indices.reshape(b, hp, wp),
            "semantic_features": raw,
            "pixel_features": pix.permute(0, 2, 3, 1),
            "semantic_quantized": sq.quantized.reshape(b, hs, ws, -1).permute(0, 3, 1, 2),
            "pixel_quantized": pq.quantized.transpose(1, 2).reshape(b, -1, hp, wp),
            "semantic_vq": sq.aux_loss,
            "pixel_vq": pq.aux_loss,
            "semantic_target": target,
        }

    def merge_quantized(self, q_sem: torch.Tensor, q_pix: torch.Tensor) -> torch.Tensor:
        """concat(bicubic(semantic -> pixel grid), pixel), with code-swap noise in training."""
        q_sem = F.interpolate(q_sem.float(), size=q_pix.shape[-2:], mode="bicubic", align_corners=False).to(q_pix.dtype)
        p = self.params
        if self.training and p.pixel_drop_rate:
            q_pix = _loss.code_swap_noise(q_pix, p.pixel_drop_rate, p.pixel_drop_batch_rate, p.pixel_noise_type)
        return torch.cat([q_sem, q_pix], dim=1)

    def decode_quantized(self, q_sem: torch.Tensor, q_pix: torch.Tensor) -> torch.Tensor:
        """Quantised maps (B, C, h, w) -> image in ~[-1, 1] (unclamped)."""
        zq = self.merge_quantized(q_sem, q_pix)
        fast = self._fast_path()
        if fast is None:
            return self.pixel_decoder(self.pixel_post_quant_conv(zq), zq)
        with fast.autocast(zq.device):
            return fast.pixel_decode(self.pixel_post_quant_conv, self.pixel_decoder, fast.layout(zq)).float()

    def decode_semantic(self, q_sem: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) semantic codes -> (B, h, w, teacher width) reconstructed normalised features."""
        fast = self._fast_path()
        if fast is None:
            return self.semantic_decoder(q_sem.permute(0, 2, 3, 1))
        with fast.autocast(q_sem.device):
            return self.semantic_decoder(q_sem.permute(0, 2, 3, 1), fast.stack).float()

    def forward_train(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self._encode(images)
        out["reconstruction"] = self.decode_quantized(out["semantic_quantized"], out["pixel_quantized"])
        out["semantic_decoded"] = self.decode_semantic(out["semantic_quantized"])
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction in [0, 1] (what the eval loop measures)."""
        out = self._encode(images)
        return ((self.decode_quantized(out["semantic_quantized"], out["pixel_quantized"]) + 1) / 2).clamp(0, 1)

    @property
    def perceptual(self) -> nn.Module:
        if not self._lpips:
            from illume_kit.plugins.tokenizers.dualvitok.perceptual import LPIPS, RANDOM

            # checked when the loss is first built, not in Params: a checkpoint whose params leave it unset
            # still loads (eval and inference never build the perceptual loss)
            if not self.params.perceptual_weights:
                raise ValueError(
                    f"tokenizer params perceptual_weights: not set, and perceptual_weight is "
                    f"{self.params.perceptual_weight:g}: give a local LPIPS-VGG weights file (.safetensors or .pt), "
                    f"or perceptual_weights: {RANDOM} for a randomly initialised VGG (tests and smoke runs only), "
                    "or perceptual_weight: 0"
                )
            self._lpips.append(LPIPS(self.params.perceptual_weights))
        ref = self.pixel_decoder.conv_out.weight
        return self._lpips[0].to(device=ref.device, dtype=ref.dtype)

    def codebook_usage(self) -> dict[str, dict[str, float]]:
        return {"semantic": self.semantic_quantizer.usage(), "pixel": self.pixel_quantizer.usage()}

    def reset_codebook_usage(self) -> None:
        self.semantic_quantizer.reset_usage()
        self.pixel_quantizer.reset_usage()
