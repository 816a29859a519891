"""The contracts between the three parts of a unified multimodal LLM.

ILLUME+ splits an "any-to-any" model into a visual tokenizer (image -> per-codebook codes and
continuous features), a language backbone (a causal LM whose vocabulary is extended with image
tokens) and a detokenizer (codes -> pixels). illume-kit makes each a plugin; this module is all
a plugin author has to satisfy. They are `typing.Protocol`s, so nothing needs to inherit from us:
behaviour is checked by the conformance suite in `illume_kit.testing`.

The required protocols (``VisualTokenizer``, ``LanguageBackbone``, ``Detokenizer``, ``Quantizer``,
``Metric``) come first. Below them, each optional capability is a small runtime-checkable protocol:
illume-kit uses a capability only where ``isinstance(component, Capability)`` holds, so these
classes are the one place that names each optional method. ``docs/plugins.md`` lists them all.

Every component class has a nested pydantic ``Params`` model (``extra="forbid"``) and is built
from one validated instance: ``Component(Component.Params(**params))``.

This module imports no torch at runtime: listing and validating recipes must stay fast.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

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

    codes: dict[str, torch.Tensor]
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    quantized: dict[str, torch.Tensor] = field(default_factory=dict)
    losses: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class QuantizerOutput:
    """One return shape over every quantizer: ``(quantized, indices, aux_loss)``."""

    quantized: torch.Tensor
    indices: torch.Tensor
    aux_loss: torch.Tensor

    def __iter__(self):
        return iter((self.quantized, self.indices, self.aux_loss))


@dataclass
class BackboneOutput:
    logits: torch.Tensor
    past_key_values: Any = None
    hidden_states: torch.Tensor | None = None


@runtime_checkable
class VisualTokenizer(Protocol):
    Params: ClassVar[type[BaseModel]]
    has_pixel_decoder: bool  # False for semantic-only tokenizers: they need a diffusion detokenizer

    @property
    def codebooks(self) -> tuple[CodebookSpec, ...]: ...

    def grid(self, height: int, width: int) -> dict[str, tuple[int, int]]:
        """Token grid (rows, cols) per codebook for an image of this size; raises ValueError if invalid."""

    def encode(self, images: torch.Tensor) -> TokenizerOutput:
        """images: (B, 3, H, W) in [0, 1]."""

    def decode(self, codes: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Codes -> images in [0, 1]; only tokenizers with ``has_pixel_decoder``."""

    def loss(self, images: torch.Tensor, step: int = 0) -> dict[str, torch.Tensor]:
        """Training losses, must contain a scalar ``loss``."""


@runtime_checkable
class LanguageBackbone(Protocol):
    Params: ClassVar[type[BaseModel]]

    @property
    def hidden_size(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...

    text_tokenizer: Any

    def extend_vocab(self, layout: VocabLayout) -> None: ...

    def embed(self, ids: torch.Tensor) -> torch.Tensor: ...

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        position_ids: torch.Tensor | None = None,
    ) -> BackboneOutput: ...


@runtime_checkable
class Detokenizer(Protocol):
    Params: ClassVar[type[BaseModel]]

    @property
    def consumes(self) -> tuple[str, ...]: ...

    @property
    def output_scale(self) -> int: ...

    def decode(self, codes: Mapping[str, torch.Tensor], **sampling: Any) -> torch.Tensor:
        """Codes -> images in [0, 1] at ``output_scale`` x the codes' pixel resolution."""


@runtime_checkable
class Quantizer(Protocol):
    Params: ClassVar[type[BaseModel]]

    @property
    def codebook_size(self) -> int: ...

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """z: (B, N, dim) channel-last."""

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor: ...


@dataclass
class EvalContext:
    """What ``illume-kit eval`` hands every metric: the loaded model and its recipe, the held-out data,
    and a ``cache`` that metrics computed in one pass share (the reconstruction pass fills it once).

    ``metrics``: every ``eval.metrics`` entry; ``names``: those of the family being computed
    (``rec/psnr`` is of family ``rec``).
    ``options``: the recipe's typed ``eval.options``; ``decode``: detokenizer sampling options.
    ``metric_params``: family -> params of its ``Params`` (``eval.metric_params`` and ``--metric-param``).
    """

    model: Any
    resolved: Any
    dataset: Any
    num_samples: int
    split: str = "val"
    metrics: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    options: Any = None
    decode: Mapping[str, Any] = field(default_factory=dict)
    out_dir: Path | None = None
    quiet: bool = True
    cache: dict[str, Any] = field(default_factory=dict)
    metric_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@runtime_checkable
class Metric(Protocol):
    """An evaluation metric family (role ``metric``), registered under the family name that prefixes
    its results: a metric registered as ``sharpness`` returns ``{"sharpness/laplacian": 0.31, ...}``.

    ``goal`` says which way is better for every number it returns (``"max"`` or ``"min"``).
    """

    Params: ClassVar[type[BaseModel]]
    goal: Literal["max", "min"]

    def compute(self, ctx: EvalContext) -> Mapping[str, float]:
        """Metric name -> value, each name ``<family>/<quantity>``."""


# ---- optional capabilities ------------------------------------------------------------------
@runtime_checkable
class ImagePairs(Protocol):
    """Metric fed the reconstruction pass's batches (``rfid``, ``lpips``): ``eval`` builds the families it
    names before the pass and calls ``update`` on each that has it, once per batch; ``compute`` then
    reports what was accumulated. Under torch.distributed each rank sees its share of the batches, so
    the state must be reduced over ranks in ``compute``."""

    def update(self, reference: torch.Tensor, candidate: torch.Tensor) -> None:
        """reference, candidate: (B, 3, H, W) in [0, 1], the originals and their reconstructions."""


@runtime_checkable
class ScoresGenerations(Protocol):
    """Metric fed images the unified model generates from the eval set's captions (``fid``,
    ``clip-score``): the families that have it share one generation pass."""

    def update_generated(self, reference: torch.Tensor, generated: torch.Tensor, captions: list[str]) -> None:
        """reference: the eval images, generated: images drawn from their captions, (B, 3, H, W) in [0, 1]."""


@runtime_checkable
class CodeMaps(Protocol):
    """Tokenizer: codes -> quantised maps, what a diffusion detokenizer conditions on
    (registry ``provides: [code_maps]``)."""

    def codes_to_maps(self, codes: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{codebook: (B, h, w) codes} -> {codebook: (B, code_dim, h, w)}, equal to ``encode().quantized``."""


@runtime_checkable
class SemanticScore(Protocol):
    """Tokenizer with a semantic teacher: how well its codes keep the teacher's features (``sem/cosine``)."""

    def semantic_cosine(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> (B,) cosine in [-1, 1] per image."""


@runtime_checkable
class Adversarial(Protocol):
    """Tokenizer trained with a discriminator; the trainer steps it with its own optimizer.

    ``discriminator`` may be ``None`` (adversarial loss switched off by params); when it is a module,
    ``params.disc_start`` (if present) is the first step of the adversarial loss.
    """

    discriminator: Any

    def discriminator_loss(self, images: torch.Tensor, step: int = 0) -> dict[str, torch.Tensor]:
        """Discriminator losses; must contain a scalar ``loss``."""


@runtime_checkable
class TrainingOnlyWeights(Protocol):
    """Component whose state holds parts only training uses (a GAN discriminator). A weights file
    given as a recipe's ``weights:`` may lack them (released inference weights never carry them:
    they keep their fresh initialisation) or carry them when this build has none (they are dropped);
    every other key must match exactly."""

    training_only_prefixes: tuple[str, ...]


@runtime_checkable
class SeparateInputEncoder(Protocol):
    """Tokenizer that can give the LLM its own copy of the encoders behind its continuous features
    (recipe ``model.input_encoder: separate``; ILLUME+'s released MLLM fine-tunes such a copy while the
    frozen tokenizer keeps making the output codes). The returned module maps images (B, 3, H, W) in
    [0, 1] to ``{codebook: (B, h, w, feature_dim)}``, the same features ``encode`` returns, and starts
    with the tokenizer's weights, frozen. Its forward keeps gradients in the caller's grad mode (no
    ``torch.no_grad`` inside): an mllm stage's ``input_encoder`` group trains it through those features."""

    def make_input_encoder(self) -> Any: ...


@runtime_checkable
class CheckpointParams(Protocol):
    """Rewrite the params a checkpoint manifest records (drop what the saved weights make redundant)."""

    def checkpoint_params(self, params: dict[str, Any]) -> dict[str, Any]: ...


@runtime_checkable
class SavesExtra(Protocol):
    """Write files beside the component's ``model.safetensors`` in a checkpoint."""

    def save_extra(self, folder: str | Path) -> None: ...


@runtime_checkable
class LoadsExtra(Protocol):
    """Read what ``save_extra`` wrote; called after construction, before weights and ``extend_vocab``."""

    def load_extra(self, folder: str | Path) -> None: ...


@runtime_checkable
class TextVocab(Protocol):
    """Backbone whose text vocabulary is smaller than its current embedding table; the vocab layout
    starts its image and structure tokens at ``text_vocab_size`` (default: ``vocab_size``)."""

    @property
    def text_vocab_size(self) -> int: ...


@runtime_checkable
class RetrainsTextTokenizer(Protocol):
    """Backbone trained from scratch that can fit its text tokenizer to the task texts (same size)."""

    def retrain_text_tokenizer(self, texts: Iterable[str]) -> None: ...


@runtime_checkable
class IncrementalCache(Protocol):
    """Backbone that supplies an empty KV cache object for the first sampling step."""

    def new_cache(self) -> Any: ...


@runtime_checkable
class StaticKVCache(Protocol):
    """Backbone that supplies a KV cache preallocated for ``batch`` rows of ``max_len`` positions:
    the sampler's static decode loop (``cache: static``) feeds it one token per step at fixed shapes.
    A forward on that cache takes a 2D attention mask of any length up to ``max_len`` or a boolean 4D
    one ``(batch, 1, T, L)``: the loop passes the filled positions rounded up, and attention need read
    no more of the cache than those ``L`` positions."""

    def new_static_cache(self, batch: int, max_len: int) -> Any: ...


@runtime_checkable
class Attaches(Protocol):
    """Detokenizer that sizes itself from the tokenizer; compose calls it once, before weights load,
    and reports a ``ValueError`` it raises as an incompatibility."""

    def attach(self, tokenizer: VisualTokenizer) -> None: ...


@runtime_checkable
class ExpectsCodebooks(Protocol):
    """Detokenizer trained for specific codebooks; compose checks size and dim against the tokenizer."""

    @property
    def expected_codebooks(self) -> tuple[CodebookSpec, ...]: ...


@runtime_checkable
class ReportsSizes(Protocol):
    """Dataset that knows each item's (H, W) without decoding it (size-bucketed batching)."""

    def size_of(self, index: int) -> tuple[int, int]: ...


@runtime_checkable
class ServesTasks(Protocol):
    """Dataset that knows, without decoding an item, which ``mllm`` tasks (``und``, ``t2i``, ``edit``)
    its items serve: the stage reports what it trains from what, and warns of a weighted task no item serves."""

    def task_counts(self) -> Mapping[str, Mapping[str, int]]:
        """{source: {task: items serving it}}: one source (the dataset's registry name) for a plain
        dataset, one per part for a mixture."""


CAPABILITIES: dict[str, tuple[type, ...]] = {
    "tokenizer": (CodeMaps, SemanticScore, Adversarial, CheckpointParams, SavesExtra, LoadsExtra),
    "backbone": (
        TextVocab,
        RetrainsTextTokenizer,
        IncrementalCache,
        StaticKVCache,
        CheckpointParams,
        SavesExtra,
        LoadsExtra,
    ),
    "detokenizer": (Attaches, ExpectsCodebooks, CheckpointParams, SavesExtra, LoadsExtra),
    "dataset": (ReportsSizes, ServesTasks),
    "metric": (ImagePairs, ScoresGenerations),
}


def capabilities(component: Any, role: str) -> list[str]:
    """Names of the optional capabilities of ``role`` that ``component`` implements."""
    return [c.__name__ for c in CAPABILITIES.get(role, ()) if isinstance(component, c)]
