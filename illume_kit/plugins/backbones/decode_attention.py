"""SDPA for decoding from a preallocated KV cache (the sampler's static loop).

transformers' ``sdpa`` attention reads every position of a ``StaticCache``, however few are filled,
and under ``torch.compile`` it copies the key/value heads for grouped-query attention (``repeat_kv``)
over that whole length each step. This variant, registered with transformers as ``illume_kit_sdpa``
(and ``illume_kit_eager`` beside ``eager``), differs from ``sdpa`` in two cases only:

- a 4D attention mask ``(B, 1, T, L)`` shorter than the cache limits attention to the first ``L``
  cached positions, so a decode loop that grows ``L`` in buckets reads what it filled, not the whole
  preallocation;
- a single query token attends per key/value head, its query heads stacked as query rows
  (``(B, H, 1, D) -> (B, H_kv, H / H_kv, D)``), compiled or not: the same arithmetic as repeating
  the key/value heads, without the copy.

Everything else goes to transformers' own ``sdpa`` function unchanged (the eager variant applies
only the window, then the model's own eager attention).
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

NAME = "illume_kit_sdpa"
NAMES = {"sdpa": NAME, "eager": "illume_kit_eager"}


def _window(attention_mask, key, value):
    if attention_mask is not None and attention_mask.ndim == 4:
        # no comparison with the cache length: a compiled step stays one graph for every window
        n = attention_mask.shape[-1]
        return key[:, :, :n], value[:, :, :n]
    return key, value


def windowed_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    key, value = _window(attention_mask, key, value)
    B, H, T, D = query.shape
    groups = H // key.shape[1]
    if T == 1 and groups > 1 and not dropout and kwargs.get("position_bias") is None:
        out = F.scaled_dot_product_attention(
            query.reshape(B, H // groups, groups, D), key, value, attn_mask=attention_mask, scale=scaling
        )
        return out.reshape(B, 1, H, value.shape[-1]), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def windowed_eager(module: torch.nn.Module, query, key, value, attention_mask, **kwargs):
    """The model's own eager attention (its modeling file's ``eager_attention_forward``) over the window."""
    key, value = _window(attention_mask, key, value)
    if attention_mask is not None and attention_mask.dtype == torch.bool:  # eager adds its mask
        attention_mask = torch.zeros((), dtype=query.dtype, device=query.device).masked_fill(
            ~attention_mask, torch.finfo(query.dtype).min
        )
    return sys.modules[type(module).__module__].eager_attention_forward(
        module, query, key, value, attention_mask, **kwargs
    )


AttentionInterface.register(NAME, windowed_sdpa)
AttentionMaskInterface.register(NAME, sdpa_mask)
AttentionInterface.register(NAMES["eager"], windowed_eager)
AttentionMaskInterface.register(NAMES["eager"], eager_mask)
