"""Language backbones: transformers causal LMs behind the ``LanguageBackbone`` protocol.

The LLM itself is transformers' own ``Qwen2ForCausalLM`` / ``LlamaForCausalLM`` / ``GPT2LMHeadModel``;
this module only adapts it to what the unified model needs:

- the text tokenizer travels with the model (a local pretrained one, or a byte-level BPE);
- ``extend_vocab(layout)`` appends the vocab layout's structure tokens and resolution tags to the
  tokenizer as plain added tokens (as ILLUME+ does with ``add_tokens``), checks they land on exactly
  the layout's ids, and resizes the embedding and LM head to cover every image-token id;
- ``forward`` takes input embeddings (image features are spliced in by the caller) and returns
  logits plus a transformers ``DynamicCache``, so a sampler can decode step by step;
- ``save_pretrained`` writes a native transformers folder that ``pretrained:`` loads back, with the
  text vocabulary size and the layout kept in ``config.json`` so reloading needs no recipe.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import (
    AutoConfig,
    DynamicCache,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    StaticCache,
)

from illume_kit.core.layout import VocabLayout
from illume_kit.core.protocols import BackboneOutput
from illume_kit.plugins.backbones import decode_attention
from illume_kit.plugins.backbones.params import GPT2Params, LlamaParams, Qwen2Params
from illume_kit.plugins.backbones.text_tokenizer import (
    default_text_tokenizer,
    load_text_tokenizer,
    train_text_tokenizer,
)
from illume_kit.plugins.meta import building_on_meta

# Extra keys this module keeps in the transformers config.json.
TEXT_VOCAB_KEY = "illume_text_vocab_size"
LAYOUT_KEY = "illume_vocab_layout"
# config keys a recorded architecture leaves out: where it came from, code it might name, and this
# module's own keys (set again when the rebuilt backbone is extended)
_UNPORTABLE_CONFIG_KEYS = frozenset(
    {"_name_or_path", "auto_map", "architectures", "transformers_version", TEXT_VOCAB_KEY, LAYOUT_KEY}
)


class HFCausalLMBackbone(nn.Module):
    """Shared adapter; a family subclass names its transformers classes and maps its Params to a config."""

    Params: ClassVar[type]
    model_cls: ClassVar[type[PreTrainedModel]]
    model_type: ClassVar[str]  # transformers config.model_type this family loads

    def __init__(self, params=None):
        super().__init__()
        self.params = params if params is not None else self.Params()
        p = self.params
        self._source_config: dict[str, Any] | None = None  # the architecture a checkpoint records
        if p.pretrained:
            self.model, self.text_tokenizer = self._load(Path(p.pretrained).expanduser())
            self._source_config = self.model.config.to_dict()
        elif p.architecture:
            # a checkpoint of a pretrained model: its architecture, the text tokenizer comes from load_extra
            self.text_tokenizer = default_text_tokenizer(p.vocab_size)
            config = self._architecture_config(p.architecture)
            self.model = self.model_cls._from_config(
                config, dtype=getattr(torch, p.dtype), attn_implementation=p.attn_implementation
            )
            self._source_config = config.to_dict()
        else:
            self.text_tokenizer = default_text_tokenizer(p.vocab_size)
            tok = self.text_tokenizer
            # GPT-2 configs default bos/eos to 50256, outside a small vocabulary: use the tokenizer's ids.
            config = self.make_config(
                p, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
            )
            self.model = self.model_cls._from_config(
                config, dtype=getattr(torch, p.dtype), attn_implementation=p.attn_implementation
            )
        cfg = self.model.config
        self._text_vocab_size = int(getattr(cfg, TEXT_VOCAB_KEY, None) or len(self.text_tokenizer))
        stored = getattr(cfg, LAYOUT_KEY, None)
        try:
            self.vocab_layout: VocabLayout | None = VocabLayout.from_dict(stored) if stored else None
        except ValueError as exc:
            where = f"{p.pretrained}/config.json" if p.pretrained else "the backbone config"
            raise ValueError(f"{where}: {LAYOUT_KEY}: {exc}") from None
        setattr(cfg, TEXT_VOCAB_KEY, self._text_vocab_size)
        if self.vocab_layout is not None:
            self._check_token_ids(self.vocab_layout)
        if p.gradient_checkpointing:
            enable = getattr(self.model, "activation_checkpointing_enable", None)
            if enable is not None:
                enable({"use_reentrant": False})
            else:  # transformers < 5
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        fwd = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in fwd else "past_key_values"  # renamed in transformers 5.x
        self.model.train(self.training)

    # ---- family hooks ------------------------------------------------------------------------
    @classmethod
    def make_config(cls, p, **special_ids: int | None) -> PretrainedConfig:
        """A transformers config for a from-scratch model of these params."""
        raise NotImplementedError

    # ---- construction helpers ----------------------------------------------------------------
    def _load(self, path: Path):
        if not path.is_dir():
            raise FileNotFoundError(
                f"backbone pretrained folder {str(path)!r} does not exist. illume-kit loads transformers models "
                "from a local folder only (local_files_only=True, nothing is downloaded): put the model there "
                "first, e.g. `huggingface-cli download Qwen/Qwen2.5-3B-Instruct --local-dir <folder>`"
            )
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"backbone pretrained folder {str(path)!r} has no config.json: not a transformers model folder "
                "(loaded with local_files_only=True)"
            )
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        if config.model_type != self.model_type:
            raise ValueError(
                f"{str(path)!r} holds a {config.model_type!r} model but {type(self).__name__} loads "
                f"{self.model_type!r} models; pick the backbone whose family matches the folder"
            )
        p = self.params
        if building_on_meta():  # compose --meta: the folder's architecture, no weights read
            model = self.model_cls._from_config(
                config, dtype=getattr(torch, p.dtype), attn_implementation=p.attn_implementation
            )
        else:
            model = self.model_cls.from_pretrained(
                str(path),
                local_files_only=True,
                dtype=getattr(torch, p.dtype),
                attn_implementation=p.attn_implementation,
            )
        return model, load_text_tokenizer(path)

    def _architecture_config(self, arch: dict[str, Any]) -> PretrainedConfig:
        if arch.get("model_type", self.model_type) != self.model_type:
            raise ValueError(
                f"backbone architecture is a {arch.get('model_type')!r} config but {type(self).__name__} builds "
                f"{self.model_type!r} models"
            )
        # the family's own config class reads it: a config never selects code (no auto_map)
        kept = {k: v for k, v in arch.items() if k not in _UNPORTABLE_CONFIG_KEYS}
        return self.model_cls.config_class.from_dict(kept)

    def checkpoint_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """What a checkpoint's manifest records: a ``pretrained`` model's architecture and real sizes in
        place of its folder (the weights and the text tokenizer are in the checkpoint)."""
        if self._source_config is None:
            return params
        cfg = self.model.config
        arch = {k: v for k, v in self._source_config.items() if k not in _UNPORTABLE_CONFIG_KEYS}
        sizes = {
            "hidden_size": cfg.hidden_size,
            "num_layers": cfg.num_hidden_layers,
            "num_heads": cfg.num_attention_heads,
            "intermediate_size": getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None),
            "max_position_embeddings": cfg.max_position_embeddings,
            "num_kv_heads": getattr(cfg, "num_key_value_heads", None),
            "tie_word_embeddings": getattr(cfg, "tie_word_embeddings", None),
        }
        sizes = {k: v for k, v in sizes.items() if v is not None and k in params}
        return {**params, **sizes, "vocab_size": self.text_vocab_size, "pretrained": None, "architecture": arch}

    def _set_special_ids(self, config: PretrainedConfig) -> None:
        tok = self.text_tokenizer
        config.bos_token_id, config.eos_token_id, config.pad_token_id = (
            tok.bos_token_id,
            tok.eos_token_id,
            tok.pad_token_id,
        )

    @classmethod
    def from_pretrained(cls, folder: str | Path, **params: Any) -> HFCausalLMBackbone:
        """Load a folder written by ``save_pretrained`` (or any local transformers folder of this family)."""
        return cls(cls.Params(pretrained=str(folder), **params))

    # ---- protocol ----------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def initializer_range(self) -> float:
        """Std of the config's normal init: new embedding rows and image-position tables use it too."""
        return float(getattr(self.model.config, "initializer_range", 0.02))

    @property
    def vocab_size(self) -> int:
        """Rows of the embedding / columns of the logits now (after extend_vocab: >= layout.total_size)."""
        return int(self.model.get_input_embeddings().weight.shape[0])

    @property
    def text_vocab_size(self) -> int:
        """Size of the text vocabulary before extension: where the layout's structure tokens start."""
        return self._text_vocab_size

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

    def new_cache(self) -> DynamicCache:
        """An empty KV cache to pass as ``past_key_values`` on the first step."""
        return DynamicCache(config=self.model.config)

    def new_static_cache(self, batch: int, max_len: int) -> StaticCache:
        """An empty KV cache preallocated for ``batch`` rows of ``max_len`` positions (transformers'
        ``StaticCache``). The one of the last call is emptied and handed out again when the shape
        matches: a compiled step keeps the cache tensors' addresses (CUDA graphs replay on them).
        A forward on it may pass a boolean 4D mask ``(batch, 1, T, L)``, ``L <= max_len``: attention
        then reads only the first ``L`` cached positions."""
        impl = self.model.config._attn_implementation
        if impl in decode_attention.NAMES:
            # the same kernel, reading only the cache window a 4D mask names (decode_attention.py)
            self.model.set_attn_implementation(decode_attention.NAMES[impl])
        weight = self.model.get_input_embeddings().weight
        key = (batch, max_len, weight.device, weight.dtype)
        kept = getattr(self, "_static_cache", None)
        if kept is not None and kept[0] == key:
            kept[1].reset()
            return kept[1]
        cache = StaticCache(config=self.model.config, max_cache_len=max_len)
        self._static_cache = (key, cache)
        return cache

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        position_ids: torch.Tensor | None = None,
        *,
        use_cache: bool | None = None,
        output_hidden_states: bool = False,
    ) -> BackboneOutput:
        """One causal pass over ``inputs_embeds`` (B, T, hidden).

        ``attention_mask`` (B, past + T) marks real tokens with 1 (left padding for batched prompts of
        different lengths, then pass ``position_ids`` too). ``use_cache`` defaults to True when a cache
        is passed or the module is in eval mode; the returned ``past_key_values`` then holds it.
        """
        if use_cache is None:
            use_cache = past_key_values is not None or not self.training
        out = self.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            **{self._cache_kw: past_key_values},
        )
        cache = getattr(out, self._cache_kw, None) if use_cache else None
        hidden = out.hidden_states[-1] if output_hidden_states else None
        return BackboneOutput(logits=out.logits, past_key_values=cache, hidden_states=hidden)

    # ---- vocabulary --------------------------------------------------------------------------
    def extend_vocab(self, layout: VocabLayout) -> None:
        """Add the layout's structure tokens and resolution tags; resize embeddings and LM head.

        Idempotent for the layout this backbone already carries (e.g. reloaded from a saved folder).
        """
        if self.vocab_layout is not None:
            if layout != self.vocab_layout:
                raise ValueError(
                    f"backbone vocab already extended with a different layout (ends at {self.vocab_layout.total_size}, "
                    f"new one at {layout.total_size}); build a fresh backbone for a new layout"
                )
            self._check_token_ids(layout)
            return
        tok = self.text_tokenizer
        vocab = tok.get_vocab()
        present = [t for t in layout.special_tokens if t in vocab]
        # a tokenizer reloaded from a checkpoint already carries the layout tokens at the layout's ids;
        # ILLUME+'s released tokenizer also names every code as a text token (<|image_level{i}_{c}|>)
        reloaded = len(present) == len(layout.special_tokens) and (
            len(tok) == self.text_vocab_size + len(present) or _names_codes(tok, layout)
        )
        if layout.text_vocab_size != self.text_vocab_size or (len(tok) != self.text_vocab_size and not reloaded):
            raise ValueError(
                f"vocab layout starts its structure tokens at id {layout.text_vocab_size}, but this backbone's text "
                f"vocabulary has {self.text_vocab_size} tokens (tokenizer length {len(tok)}): build the layout "
                "from backbone.text_vocab_size"
            )
        if present and not reloaded:
            raise ValueError(
                f"the text tokenizer already has layout tokens {present[:5]}: they would not get the layout's ids"
            )
        if not reloaded:
            tok.add_tokens(list(layout.special_tokens))
        self._check_token_ids(layout)
        self._resize(layout.total_size)
        self.vocab_layout = layout
        setattr(self.model.config, LAYOUT_KEY, layout.to_dict())

    def _check_token_ids(self, layout: VocabLayout) -> None:
        ids = self.text_tokenizer.convert_tokens_to_ids(list(layout.special_tokens))
        wrong = [
            (t, got, layout.token_id(t)) for t, got in zip(layout.special_tokens, ids) if got != layout.token_id(t)
        ]
        if wrong:
            t, got, want = wrong[0]
            raise ValueError(
                f"text tokenizer gives {t!r} id {got} but the vocab layout says {want} "
                f"({len(wrong)} layout tokens disagree)"
            )

    def _resize(self, total: int) -> None:
        how = self.params.new_rows_init
        multiple = self.params.pad_vocab_to_multiple_of
        # never fewer rows than a loaded model has: a converted release keeps its spare rows, which its
        # logits (and so its sampling) cover
        current = self.vocab_size
        rows = max(-(-total // multiple) * multiple, current if current >= total else 0)
        if rows == current:
            return
        from transformers.utils import logging as hf_logging

        # a model on the meta device (compose --meta) has shapes but no values to initialise rows from
        on_meta = self.model.get_input_embeddings().weight.is_meta
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the mean-resizing notice is noise for every compose
        try:
            self.model.resize_token_embeddings(rows, mean_resizing=(how == "default" and not on_meta))
        finally:
            hf_logging.set_verbosity(level)
        if how == "default" or on_meta:
            return
        start = self.text_vocab_size
        weights = [self.model.get_input_embeddings().weight]
        head = self.model.get_output_embeddings()
        if head is not None and head.weight is not weights[0]:
            weights.append(head.weight)
        std = self.initializer_range
        with torch.no_grad():
            for w in weights:
                if how == "mean":
                    w[start:] = w[:start].float().mean(0).to(w.dtype)
                else:
                    w[start:].normal_(0.0, std)

    def retrain_text_tokenizer(self, texts: Iterable[str]) -> None:
        """Replace a from-scratch backbone's default tokenizer by a BPE trained on ``texts``.

        The size stays ``text_vocab_size``, so a vocab layout computed before stays valid; layout
        tokens already added are added again at the same ids. Call before training the text rows.
        """
        if self.params.pretrained:
            raise ValueError(
                f"backbone was loaded from {self.params.pretrained!r}: its embeddings belong to that folder's "
                "tokenizer, retraining the tokenizer would scramble them"
            )
        tok = train_text_tokenizer(texts, self.text_vocab_size)
        if self.vocab_layout is not None:
            tok.add_tokens(list(self.vocab_layout.special_tokens))
        self.text_tokenizer = tok
        if self.vocab_layout is not None:
            self._check_token_ids(self.vocab_layout)
        self._set_special_ids(self.model.config)

    # ---- persistence -------------------------------------------------------------------------
    def save_extra(self, folder: str | Path) -> None:
        """Checkpoint hook: the text tokenizer (it may have been retrained) and the generation config (a
        released model's eos ids and repetition penalty) travel with the weights."""
        self.text_tokenizer.save_pretrained(str(Path(folder) / "text_tokenizer"))
        self.model.generation_config.save_pretrained(str(Path(folder) / "generation"))

    def use_generation_config(self, folder: str | Path) -> bool:
        """Adopt ``folder/generation_config.json`` (a released model's); False when there is none."""
        path = Path(folder) / "generation_config.json"
        if not path.is_file():
            return False
        from transformers import GenerationConfig

        try:
            self.model.generation_config = GenerationConfig.from_pretrained(str(path.parent), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a usable generation config: {str(exc).splitlines()[0]}") from None
        return True

    def use_text_tokenizer(self, folder: str | Path) -> None:
        """Adopt the tokenizer saved in ``folder`` (e.g. a released model's own) before ``extend_vocab``."""
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # a folder's config.json may name a model type transformers lacks
        try:
            self.text_tokenizer = load_text_tokenizer(folder)
        finally:
            hf_logging.set_verbosity(level)
        self._set_special_ids(self.model.config)

    def load_extra(self, folder: str | Path) -> None:
        """Checkpoint hook, called before ``extend_vocab``: restore the saved text tokenizer."""
        sub = Path(folder) / "text_tokenizer"
        if sub.is_dir():
            self.text_tokenizer = load_text_tokenizer(sub)
            self._set_special_ids(self.model.config)
        self.use_generation_config(Path(folder) / "generation")

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write a native transformers folder (config, safetensors weights, tokenizer)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        setattr(self.model.config, TEXT_VOCAB_KEY, self.text_vocab_size)
        if self.vocab_layout is not None:
            setattr(self.model.config, LAYOUT_KEY, self.vocab_layout.to_dict())
        self.model.save_pretrained(str(folder))
        self.text_tokenizer.save_pretrained(str(folder))
        return folder


def code_token(level: int, code: int) -> str:
    """ILLUME+'s text form of code ``code`` of level ``level`` (its extended tokenizer holds them all)."""
    return f"<|image_level{level}_{code}|>"


def _names_codes(tok: Any, layout: VocabLayout) -> bool:
    """Whether ``tok`` is ILLUME+'s extended tokenizer for ``layout``: every code a text token at the
    layout's id (checked at both ends of each range) and nothing else added."""
    if len(tok) != layout.total_size:
        return False
    probe = [(code_token(i, c), cb.start + c) for i, cb in enumerate(layout.codebooks) for c in (0, cb.size - 1)]
    return all(tok.convert_tokens_to_ids(t) == want for t, want in probe)


def _rope_decoder_config(config_cls: type, p: Any, special_ids: dict) -> PretrainedConfig:
    """Qwen2 and Llama share one config vocabulary (GQA, RMSNorm, RoPE)."""
    return config_cls(
        vocab_size=p.vocab_size,
        hidden_size=p.hidden_size,
        intermediate_size=p.intermediate_size,
        num_hidden_layers=p.num_layers,
        num_attention_heads=p.num_heads,
        num_key_value_heads=p.num_kv_heads,
        max_position_embeddings=p.max_position_embeddings,
        rms_norm_eps=p.rms_norm_eps,
        tie_word_embeddings=p.tie_word_embeddings,
        initializer_range=p.initializer_range,
        **special_ids,
        rope_parameters={"rope_type": "default", "rope_theta": p.rope_theta},
    )


class Qwen2Backbone(HFCausalLMBackbone):
    """Qwen2 / Qwen2.5 (the ILLUME+ backbone family)."""

    Params = Qwen2Params
    model_cls = Qwen2ForCausalLM
    model_type = "qwen2"

    @classmethod
    def make_config(cls, p: Qwen2Params, **special_ids: int | None) -> PretrainedConfig:
        return _rope_decoder_config(Qwen2Config, p, special_ids)


class LlamaBackbone(HFCausalLMBackbone):
    """Llama 2 / 3 family."""

    Params = LlamaParams
    model_cls = LlamaForCausalLM
    model_type = "llama"

    @classmethod
    def make_config(cls, p: LlamaParams, **special_ids: int | None) -> PretrainedConfig:
        return _rope_decoder_config(LlamaConfig, p, special_ids)


class GPT2Backbone(HFCausalLMBackbone):
    """GPT-2: learned absolute positions, so sequences are capped at ``max_position_embeddings``."""

    Params = GPT2Params
    model_cls = GPT2LMHeadModel
    model_type = "gpt2"

    @classmethod
    def make_config(cls, p: GPT2Params, **special_ids: int | None) -> PretrainedConfig:
        return GPT2Config(
            vocab_size=p.vocab_size,
            n_embd=p.hidden_size,
            n_layer=p.num_layers,
            n_head=p.num_heads,
            n_inner=p.intermediate_size,
            n_positions=p.max_position_embeddings,
            resid_pdrop=p.dropout,
            embd_pdrop=p.dropout,
            attn_pdrop=p.dropout,
            tie_word_embeddings=p.tie_word_embeddings,
            initializer_range=p.initializer_range,
            **special_ids,
        )
