"""SigLIP-only tokenizer: the semantic half of DualViTok on its own.

Frozen teacher -> adapter (LayerNorm target, 1x1 projection, ViT blocks with 2D RoPE, linear to the
code width) -> one quantizer -> semantic decoder reconstructing the normalised teacher features
(loss 1 - cos). The same modules as DualViTok's semantic branch, so the ablation differs only in
what the paper argues about: no pixel branch.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from illume_kit.core.protocols import CodebookSpec, TokenizerOutput
from illume_kit.plugins.tokenizers.common.quantizer import build_code_quantizer
from illume_kit.plugins.tokenizers.common.semantic import SemanticDecoder, SemanticEncoder, semantic_cosine_loss
from illume_kit.plugins.tokenizers.common.teacher import Teacher
from illume_kit.plugins.tokenizers.siglip.params import SigLIPTokenizerParams


class SigLIPTokenizer(nn.Module):
    # the blocks FSDP shards one by one and activation checkpointing recomputes (train.parallel)
    _no_split_modules = ["Qwen2VLVisionBlock", "ResidualAttentionBlock"]
    Params = SigLIPTokenizerParams
    has_pixel_decoder = False  # semantic-only: images come back through a diffusion detokenizer

    def __init__(self, params: SigLIPTokenizerParams | None = None):
        super().__init__()
        p = self.params = params if params is not None else SigLIPTokenizerParams()
        self.teacher = Teacher(p.teacher)
        self.semantic_encoder = SemanticEncoder(
            self.teacher, p.width, p.heads, p.mlp_ratio, p.encoder_blocks, p.code_dim
        )
        self.semantic_quantizer = build_code_quantizer(p.quantizer, p.code_dim, p.codebook_size, "semantic")
        self.semantic_decoder = SemanticDecoder(
            p.code_dim, p.width, p.heads, p.mlp_ratio, p.decoder_blocks, self.teacher.width
        )

    def checkpoint_params(self, params: dict) -> dict:
        """What a checkpoint's manifest records: the teacher written out, its weights being ours."""
        return {**params, "teacher": self.teacher.self_contained(self.semantic_encoder.model)}

    @property
    def codebooks(self) -> tuple[CodebookSpec, ...]:
        return (
            CodebookSpec(
                "semantic",
                self.semantic_quantizer.codebook_size,
                self.params.code_dim,
                self.teacher.stride,
                self.teacher.width,
            ),
        )

    def grid(self, height: int, width: int) -> dict[str, tuple[int, int]]:
        s = self.teacher.stride
        if height < s or width < s or height % s or width % s:
            raise ValueError(
                f"the siglip tokenizer needs image sides that are positive multiples of {s}, got {height}x{width}"
            )
        return {"semantic": self.teacher.grid(height, width)}

    def _encode(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self.grid(*images.shape[-2:])
        z, target, raw = self.semantic_encoder(images)
        b, h, w, _ = z.shape
        q = self.semantic_quantizer(z.reshape(b, h * w, -1).float())
        return {
            "codes": q.indices.reshape(b, h, w),
            "raw": raw,
            "target": target,
            "vq": q.aux_loss,
            "quantized": q.quantized.reshape(b, h, w, -1).permute(0, 3, 1, 2),
        }

    def encode(self, images: torch.Tensor) -> TokenizerOutput:
        out = self._encode(images)
        return TokenizerOutput(
            codes={"semantic": out["codes"]},
            features={"semantic": out["raw"]},
            quantized={"semantic": out["quantized"]},
            losses={"semantic_vq": out["vq"]},
        )

    def codes_to_maps(self, codes: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        c = codes["semantic"]
        b, h, w = c.shape
        q = self.semantic_quantizer.indices_to_codes(c.reshape(b, h * w))
        return {"semantic": q.reshape(b, h, w, -1).permute(0, 3, 1, 2)}

    def decode(self, codes: Mapping[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError(
            "the siglip tokenizer is semantic-only: decode its codes with the `diffusion` detokenizer"
        )

    def loss(self, images: torch.Tensor, step: int = 0) -> dict[str, torch.Tensor]:
        p = self.params
        out = self._encode(images)
        rec = self.semantic_decoder(out["quantized"].permute(0, 2, 3, 1))
        cos = semantic_cosine_loss(rec, out["target"])
        total = p.codebook_weight * out["vq"] + p.recon_weight * cos
        return {"loss": total, "semantic_vq": out["vq"].detach(), "semantic_rec": cos.detach()}

    @torch.no_grad()
    def semantic_cosine(self, images: torch.Tensor) -> torch.Tensor:
        out = self._encode(images)
        rec = self.semantic_decoder(out["quantized"].permute(0, 2, 3, 1))
        return F.cosine_similarity(rec.float(), out["target"].float(), dim=-1).flatten(1).mean(1)
