"""Params and presets of the transformers language backbones (torch-free).

Recipe validation imports this module, never ``hf.py``: listing backbones and validating a recipe
must not pay for torch and transformers. Each family has one ``Params`` model; the size fields
describe a model built from scratch and are ignored when ``pretrained`` names a local transformers
folder (the folder's own config then wins). ``vocab_size`` is the embedding size of a from-scratch
model and the exact size of its byte-level BPE text tokenizer (see ``text_tokenizer.py``).

Presets: ``tiny`` builds in milliseconds and trains a step in ~20 ms on CPU (tests, CI, the shapes
world); the official-size ones copy the published configs so a run can be sized on a GPU before
the weights exist locally (ILLUME+ 3B/7B use Qwen2.5-3B/7B-Instruct, reference §3.1).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from illume_kit.core.params import ComponentParams

DType = Literal["float32", "bfloat16", "float16"]
RowInit = Literal["default", "mean", "normal"]


class _CausalLMParams(ComponentParams):
    """Fields every transformers causal-LM backbone shares."""

    pretrained: str | None = Field(
        default=None,
        description="local transformers folder (model + tokenizer) loaded with local_files_only=True; "
        "None builds from the size fields below with a freshly trained byte-level BPE text tokenizer",
    )
    architecture: dict[str, Any] | None = Field(
        default=None,
        description="the transformers config (config.json keys) to build instead of the size fields: what a "
        "checkpoint of a `pretrained` model records, so loading it needs no folder (its weights and text "
        "tokenizer are in the checkpoint). None = build from the size fields",
    )
    hidden_size: int = Field(default=128, ge=8, description="width of the residual stream")
    num_layers: int = Field(default=2, ge=1, description="number of transformer blocks")
    num_heads: int = Field(default=4, ge=1, description="attention heads (hidden_size must divide by it)")
    intermediate_size: int = Field(default=512, ge=1, description="MLP inner width")
    max_position_embeddings: int = Field(
        default=2048, ge=16, description="longest sequence the model is configured for"
    )
    vocab_size: int = Field(
        default=512,
        ge=300,
        description="text vocabulary of a from-scratch model: the byte-level BPE is trained to (and padded to) "
        "exactly this many tokens (>= 300: 256 byte symbols + specials + merges)",
    )
    dtype: DType = Field(default="float32", description="parameter dtype")
    initializer_range: float = Field(
        default=0.02,
        gt=0,
        description="std of the normal init of a from-scratch model's weights (transformers' "
        "config field of the same name; also the std of 'normal' new rows)",
    )
    new_rows_init: RowInit = Field(
        default="default",
        description="how extend_vocab initialises the rows of the layout's added ids (embedding and LM head): "
        "'default' = transformers' resize_token_embeddings (mean_resizing: Gaussian with the old rows' mean "
        "and covariance; rows that already existed are kept, as ILLUME+ does); 'mean' = the mean of the text "
        "rows; 'normal' = N(0, initializer_range)",
    )
    tie_word_embeddings: bool = Field(default=True, description="share the input embedding and the LM head")
    gradient_checkpointing: bool = Field(default=False, description="recompute activations in backward to save memory")
    attn_implementation: Literal["sdpa", "eager"] = Field(default="sdpa", description="transformers attention kernel")
    pad_vocab_to_multiple_of: int = Field(
        default=64, ge=1, description="extend_vocab rounds the embedding rows up to a multiple of this (1 = no padding)"
    )

    @model_validator(mode="after")
    def _check_heads(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}")
        kv = getattr(self, "num_kv_heads", None)
        if kv is not None and self.num_heads % kv:
            raise ValueError(f"num_heads {self.num_heads} must be divisible by num_kv_heads {kv}")
        return self


class Qwen2Params(_CausalLMParams):
    """Qwen2 / Qwen2.5 (transformers ``Qwen2ForCausalLM``)."""

    num_kv_heads: int = Field(default=2, ge=1, description="key/value heads (grouped-query attention)")
    rope_theta: float = Field(default=1_000_000.0, gt=0, description="RoPE base frequency")
    rms_norm_eps: float = Field(default=1e-6, gt=0, description="RMSNorm epsilon")


class LlamaParams(_CausalLMParams):
    """Llama (transformers ``LlamaForCausalLM``)."""

    num_kv_heads: int = Field(default=2, ge=1, description="key/value heads (grouped-query attention)")
    rope_theta: float = Field(default=500_000.0, gt=0, description="RoPE base frequency")
    rms_norm_eps: float = Field(default=1e-5, gt=0, description="RMSNorm epsilon")


class GPT2Params(_CausalLMParams):
    """GPT-2 (transformers ``GPT2LMHeadModel``): learned positions, so sequences <= max_position_embeddings."""

    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="residual, embedding and attention dropout")


_TINY = dict(
    hidden_size=128,
    num_layers=2,
    num_heads=4,
    intermediate_size=512,
    max_position_embeddings=2048,
    vocab_size=512,
    tie_word_embeddings=True,
)

QWEN2_PRESETS: dict[str, dict] = {
    "tiny": {**_TINY, "num_kv_heads": 2},
    # Qwen2.5-3B(-Instruct) config.json: the ILLUME+ 3B backbone.
    "qwen2.5-3b": dict(
        hidden_size=2048,
        num_layers=36,
        num_heads=16,
        num_kv_heads=2,
        intermediate_size=11008,
        max_position_embeddings=32768,
        vocab_size=151936,
        tie_word_embeddings=True,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        dtype="bfloat16",
    ),
    # Qwen2.5-7B(-Instruct) config.json: the ILLUME+ 7B backbone.
    "qwen2.5-7b": dict(
        hidden_size=3584,
        num_layers=28,
        num_heads=28,
        num_kv_heads=4,
        intermediate_size=18944,
        max_position_embeddings=32768,
        vocab_size=152064,
        tie_word_embeddings=False,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        dtype="bfloat16",
    ),
}
QWEN2_PRESETS["official"] = dict(QWEN2_PRESETS["qwen2.5-3b"])

LLAMA_PRESETS: dict[str, dict] = {
    "tiny": {**_TINY, "num_kv_heads": 2},
    # Llama-3.2-1B sizes (without its llama3 RoPE scaling: load the real folder via `pretrained` for that).
    "llama-3.2-1b": dict(
        hidden_size=2048,
        num_layers=16,
        num_heads=32,
        num_kv_heads=8,
        intermediate_size=8192,
        max_position_embeddings=131072,
        vocab_size=128256,
        tie_word_embeddings=True,
        rope_theta=500_000.0,
        rms_norm_eps=1e-5,
        dtype="bfloat16",
    ),
}
LLAMA_PRESETS["official"] = dict(LLAMA_PRESETS["llama-3.2-1b"])

GPT2_PRESETS: dict[str, dict] = {
    "tiny": dict(_TINY),
    # GPT-2 small (124M).
    "gpt2": dict(
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        intermediate_size=3072,
        max_position_embeddings=1024,
        vocab_size=50257,
        tie_word_embeddings=True,
        dropout=0.1,
    ),
}
GPT2_PRESETS["official"] = dict(GPT2_PRESETS["gpt2"])
