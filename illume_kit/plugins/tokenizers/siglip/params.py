"""SigLIP-only tokenizer ``Params`` and presets (torch-free).

The paper's semantic-only baseline: codes that reconstruct a frozen SigLIP's patch features and
nothing else. It has no pixel decoder, so it composes only with the ``diffusion`` detokenizer.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from illume_kit.core.params import ComponentParams, QuantizerRef
from illume_kit.plugins.tokenizers.common.params import TeacherParams


def _siglip_teacher() -> TeacherParams:
    return TeacherParams(kind="siglip")


class SigLIPTokenizerParams(ComponentParams):
    teacher: TeacherParams = Field(
        default_factory=_siglip_teacher,
        description="frozen semantic encoder (kind siglip: an open_clip tower; "
        "pretrained: a teacher folder from a `teacher` stage or a local weights file)",
    )
    width: int = Field(1152, ge=1, description="adapter / semantic-decoder block width")
    heads: int = Field(16, ge=1, description="attention heads of those blocks")
    mlp_ratio: int = Field(4, ge=1, description="MLP width / block width")
    encoder_blocks: int = Field(4, ge=0, description="adapter blocks between the teacher and the codes")
    decoder_blocks: int = Field(4, ge=0, description="semantic-decoder blocks between codes and features")
    code_dim: int = Field(32, ge=1, description="code width")
    codebook_size: int = Field(32768, ge=2, description="codebook size")
    quantizer: QuantizerRef = Field(
        default_factory=lambda: QuantizerRef(name="simvq"),
        description="the quantizer; dim and codebook_size come from above unless set",
    )
    codebook_weight: float = Field(1.0, ge=0.0, description="weight of the quantizer loss")
    recon_weight: float = Field(1.0, ge=0.0, description="weight of the 1 - cos feature reconstruction loss")

    @model_validator(mode="after")
    def _check(self):
        if self.teacher.kind != "siglip":
            raise ValueError("the siglip tokenizer needs teacher.kind: siglip")
        if self.width % self.heads:
            raise ValueError("width must be divisible by heads")
        return self


PRESETS: dict[str, dict[str, Any]] = {
    # SigLIP-so400m/14 @384 tower shapes, ILLUME+-sized semantic codebook
    "official": {
        "teacher": {
            "kind": "siglip",
            "siglip": {
                "image_size": 384,
                "patch_size": 14,
                "vision_width": 1152,
                "vision_layers": 27,
                "vision_head_width": 72,
                "mlp_ratio": 3.7362,
                "embed_dim": 1152,
                "text_width": 1152,
                "text_layers": 27,
                "text_heads": 16,
                "context_length": 64,
            },
        }
    },
    "tiny": {
        "teacher": {"kind": "siglip", "siglip": {}},
        "width": 64,
        "heads": 2,
        "mlp_ratio": 2,
        "encoder_blocks": 1,
        "decoder_blocks": 1,
        "code_dim": 16,
        "codebook_size": 1024,
    },
}
