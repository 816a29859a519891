"""Build the diffusers UNet of the diffusion detokenizer and call it with ILLUME+'s conditioning.

The code map enters by channel concatenation, so the UNet's ``in_channels`` is the denoised space's
channels plus the code-map channels, known only once a tokenizer is attached. The output-size index
(ILLUME+ §4) enters where each UNet class takes a global condition:
- ``UNet2DModel`` (and a ``UNet2DConditionModel`` without SDXL's added conditions): a class embedding
  (``num_class_embeds`` = number of known output sizes) added to the timestep embedding;
- ``UNet2DConditionModel`` with SDXL's ``addition_embed_type="text_time"``: exactly as ILLUME+ does,
  ``time_ids = [0, 0, 0, 0, 0, size_index]`` with zero pooled text embeddings.
The cross-attention text path of a condition UNet is fed zeros (ILLUME+ neutralises it). One zero
token is exactly equivalent to 77: attention over identical keys averages identical zero values.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def build_unet(p: Any, in_channels: int, out_channels: int) -> nn.Module:
    from diffusers import UNet2DConditionModel, UNet2DModel

    n_sizes = len(p.output_sizes) or None
    attn = list(p.attention_levels) + [True] * (len(p.block_out_channels) - len(p.attention_levels))
    cfg: dict[str, Any] = dict(
        in_channels=in_channels,
        out_channels=out_channels,
        block_out_channels=tuple(p.block_out_channels),
        layers_per_block=p.layers_per_block,
        norm_num_groups=p.norm_num_groups,
    )
    if p.unet_type == "unet2d":
        cfg |= dict(
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
            num_class_embeds=n_sizes,
        )
        cfg |= p.unet_config
        return UNet2DModel(**cfg)
    cfg |= dict(
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        cross_attention_dim=p.block_out_channels[-1],
    )
    cfg |= p.unet_config
    if cfg.get("addition_embed_type") != "text_time":
        cfg.setdefault("num_class_embeds", n_sizes)
    return UNet2DConditionModel(**cfg)


def unet_class(name: str) -> type:
    from diffusers import UNet2DConditionModel, UNet2DModel

    classes = {"UNet2DModel": UNet2DModel, "UNet2DConditionModel": UNet2DConditionModel}
    if name not in classes:
        raise ValueError(f"unsupported denoiser class {name!r} (supported: {', '.join(classes)})")
    return classes[name]


def size_conditioning_kind(unet: nn.Module) -> str:
    """'time_ids' (SDXL added conditions), 'class' (class embedding) or 'none'."""
    cfg = unet.config
    if getattr(cfg, "addition_embed_type", None) == "text_time":
        return "time_ids"
    return "class" if getattr(cfg, "num_class_embeds", None) else "none"


def call_unet(unet: nn.Module, x: torch.Tensor, t: torch.Tensor, size_index: torch.Tensor | None) -> torch.Tensor:
    """One denoiser prediction. ``x`` already carries the code-map channels; ``size_index`` is (B,) long."""
    cfg = unet.config
    b = x.shape[0]
    kwargs: dict[str, Any] = {}
    kind = size_conditioning_kind(unet)
    if kind == "class" and size_index is not None:
        kwargs["class_labels"] = size_index
    if hasattr(cfg, "cross_attention_dim"):  # UNet2DConditionModel: zero text path
        kwargs["encoder_hidden_states"] = x.new_zeros(b, 1, cfg.cross_attention_dim)
        if kind == "time_ids":
            idx = size_index if size_index is not None else torch.zeros(b, dtype=torch.long, device=x.device)
            time_ids = x.new_zeros(b, 6)
            time_ids[:, 5] = idx.to(x.dtype)
            pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
            kwargs["added_cond_kwargs"] = {"text_embeds": x.new_zeros(b, pooled), "time_ids": time_ids}
    return unet(x, t, **kwargs).sample
