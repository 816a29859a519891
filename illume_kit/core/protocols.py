"""The contracts between the three parts of a unified multimodal LLM.

ILLUME+ splits an "any-to-any" model into a visual tokenizer (image -> per-codebook codes and
continuous features), a language backbone (a causal LM whose vocabulary is extended with image
tokens) and a detokenizer (codes -> pixels). illume-kit makes each a plugin; this module is all
a plugin author has to satisfy. They are `typing.Protocol`s, so nothing needs to inherit from us:
behaviour is checked by the conformance suite in `illume_kit.testing`, not by isinstance.

Every component class has a nested pydantic ``Params`` model (``extra="forbid"``) and is built
from one validated instance: ``Component(Component.Params(**params))``.

This module imports no torch at runtime: listing and validating recipes must stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from pydantic import BaseModel

    from illume_kit.core.layout import VocabLayout


@dataclass(frozen=True)
class CodebookSpec:
    """One level of discrete image tokens.

    ``stride`` is the number of input pixels per token side at the tokenizer's nominal resolution
    (DualViTok: semantic 28 through its resize table, pixel 16). ``feature_dim`` is the width of the
    continuous features the LLM sees on its input side for this level (DualViTok semantic: the
    teacher ViT width, 3584 at official size), ``code_dim`` the width of a quantised code.
    """

    name: str
    size: int
    code_dim: int
    stride: int
    feature_dim: int

    def __post_init__(self) -> None:
        if self.size < 1 or self.code_dim < 1 or self.stride < 1 or self.feature_dim < 1:
            raise ValueError(f"codebook {self.name!r}: size, code_dim, stride, feature_dim must be >= 1")


@dataclass
class TokenizerOutput:
    """What ``VisualTokenizer.encode`` returns, keyed by codebook name in tokenizer order.

    codes:     LongTensor (B, h, w) per codebook, values in [0, size).
    features:  (B, h, w, feature_dim) continuous pre-quantisation features for the LLM input side.
    quantized: (B, code_dim, h, w) quantised maps (what a decoder consumes).
    losses:    named scalar auxiliary losses (quantizer commitment etc.); may be empty.
    """

    codes: dict[str, "torch.Tensor"]
    features: dict[str, "torch.Tensor"] = field(default_factory=dict)
    quantized: dict[str, "torch.Tensor"] = field(default_factory=dict)
    losses: dict[str, "torch.Tensor"] = field(default_factory=dict)


@dataclass
class QuantizerOutput:
    """One return shape over every quantizer: ``(quantized, indices, aux_loss)``."""

    quantized: "torch.Tensor"
    indices: "torch.Tensor"
    aux_loss: "torch.Tensor"

    def __iter__(self):
        return iter((self.quantized, self.indices, self.aux_loss))


@dataclass
class BackboneOutput:
    logits: "torch.Tensor"
    past_key_values: Any = None
    hidden_states: "torch.Tensor | None" = None


@runtime_checkable
class VisualTokenizer(Protocol):
    Params: ClassVar[type["BaseModel"]]
    has_pixel_decoder: bool  # False for semantic-only tokenizers: they need a diffusion detokenizer

    @property
    def codebooks(self) -> tuple[CodebookSpec, ...]: ...

    def grid(self, height: int, width: int) -> dict[str, tuple[int, int]]:
        """Token grid (rows, cols) per codebook for an image of this size; raises ValueError if invalid."""

    def encode(self, images: "torch.Tensor") -> TokenizerOutput:
        """images: (B, 3, H, W) in [0, 1]."""

    def decode(self, codes: Mapping[str, "torch.Tensor"]) -> "torch.Tensor":
        """Codes -> images in [0, 1]; only tokenizers with ``has_pixel_decoder``."""

    def loss(self, images: "torch.Tensor", step: int = 0) -> dict[str, "torch.Tensor"]:
        """Training losses, must contain a scalar ``loss``."""


@runtime_checkable
class LanguageBackbone(Protocol):
    Params: ClassVar[type["BaseModel"]]

    @property
    def hidden_size(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...

    text_tokenizer: Any

    def extend_vocab(self, layout: "VocabLayout") -> None: ...

    def embed(self, ids: "torch.Tensor") -> "torch.Tensor": ...

    def forward(
        self,
        inputs_embeds: "torch.Tensor",
        attention_mask: "torch.Tensor | None" = None,
        past_key_values: Any = None,
        position_ids: "torch.Tensor | None" = None,
    ) -> BackboneOutput: ...


@runtime_checkable
class Detokenizer(Protocol):
    Params: ClassVar[type["BaseModel"]]

    @property
    def consumes(self) -> tuple[str, ...]: ...

    @property
    def output_scale(self) -> int: ...

    def attach(self, tokenizer: VisualTokenizer) -> None:
        """Called once by compose before weights load: size conditioning from the tokenizer."""

    def decode(self, codes: Mapping[str, "torch.Tensor"], **sampling: Any) -> "torch.Tensor":
        """Codes -> images in [0, 1] at ``output_scale`` x the codes' pixel resolution."""


@runtime_checkable
class Quantizer(Protocol):
    Params: ClassVar[type["BaseModel"]]

    @property
    def codebook_size(self) -> int: ...

    def forward(self, z: "torch.Tensor") -> QuantizerOutput:
        """z: (B, N, dim) channel-last."""

    def indices_to_codes(self, indices: "torch.Tensor") -> "torch.Tensor": ...
