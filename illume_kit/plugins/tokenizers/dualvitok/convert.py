"""Load the released ILLUME+ DualViTok checkpoint (ILLUME-MLLM/dualvitok ``pytorch_model.bin``).

Our module tree mirrors the official one, so conversion is strict renaming: only the two SimVQ
quantizers live one level deeper here (``semantic_quantizer.vq.frozen_codebook``, because every
illume-kit quantizer wraps its vector-quantize-pytorch module as ``vq``). Everything is checked
against the ``official`` preset built on the meta device: every tensor must be used, none may be
missing (the frozen ViT ``semantic_encoder.model.*`` may be absent as a whole: ILLUME+'s inference
loaders take it from qwen2vit600m), shapes must agree. The discriminator is not in the released
file; ``instantiate_official`` gives it a fresh initialisation.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import torch

from illume_kit.plugins.tokenizers.dualvitok.params import DualViTokParams

VIT_PREFIX = "semantic_encoder.model."
_RENAMES = ((re.compile(r"^(semantic|pixel)_quantizer\.(?!vq\.)"), r"\1_quantizer.vq."),)


class ConversionError(ValueError):
    """The state dict does not match the official DualViTok layout; the message lists every problem."""


def unwrap(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Bare state dict from a bare dict or one nested under 'ema' / 'model' / 'state_dict' (that order,
    as ILLUME+'s loaders); a DDP ``module.`` prefix on every key is dropped."""
    state: Any = checkpoint
    for key in ("ema", "model", "state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError("expected a state dict of tensors (bare, or under 'ema', 'model' or 'state_dict')")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


@functools.lru_cache(maxsize=4)
def _expected_shapes(params_json: str) -> dict[str, tuple[int, ...]]:
    from illume_kit.plugins.tokenizers.dualvitok.model import DualViTok

    params = DualViTokParams.model_validate_json(params_json)
    with torch.device("meta"):
        model = DualViTok(params.model_copy(update={"disc_weight": 0.0}))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _official_params() -> DualViTokParams:
    return DualViTokParams()


def convert_official(checkpoint: Mapping[str, Any], params: DualViTokParams | None = None) -> dict[str, torch.Tensor]:
    """Official DualViTok state dict (any nesting) -> illume-kit ``DualViTok`` state dict.

    Strict: raises ``ConversionError`` listing unused keys, missing keys and shape mismatches. The
    result has no ``discriminator.*`` keys, and no ViT keys if the input had none.
    """
    state = unwrap(checkpoint)
    expected = _expected_shapes((params or _official_params()).model_dump_json())
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for pattern, repl in _RENAMES:
            key = pattern.sub(repl, key)
        converted[key] = value
    has_vit = any(k.startswith(VIT_PREFIX) for k in converted)
    required = {k for k in expected if has_vit or not k.startswith(VIT_PREFIX)}
    unused = sorted(set(converted) - set(expected))
    missing = sorted(required - set(converted))
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {expected[k]}"
        for k, v in converted.items()
        if k in expected and tuple(v.shape) != expected[k]
    ]
    if unused or missing or mismatched:
        lines = ["checkpoint does not match the official DualViTok layout:"]
        for title, items in (("unused keys", unused), ("missing keys", missing), ("shape mismatches", mismatched)):
            if items:
                shown = ", ".join(items[:20]) + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
                lines.append(f"  {len(items)} {title}: {shown}")
        raise ConversionError("\n".join(lines))
    return converted


def load_official_file(path: str, params: DualViTokParams | None = None) -> dict[str, torch.Tensor]:
    """Read a released checkpoint file (torch pickle with ``weights_only=True``, or .safetensors) and convert it."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        checkpoint = load_file(str(path))
    else:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return convert_official(checkpoint, params)


def instantiate_official(state_dict: Mapping[str, torch.Tensor], params: DualViTokParams | None = None):
    """A ``DualViTok`` whose weights *are* the converted tensors (built on meta, no random init).

    Avoids allocating and initialising 1.35B parameters before overwriting them. If the ViT keys are
    absent, ``params.teacher.pretrained`` must name the local Qwen2-VL vision folder.
    """
    from illume_kit.plugins.tokenizers.common.teacher import Teacher
    from illume_kit.plugins.tokenizers.dualvitok.model import DualViTok
    from illume_kit.plugins.tokenizers.gan import PatchGANDiscriminator

    params = params or _official_params()
    state = convert_official(state_dict, params) if not any(".vq." in k for k in state_dict) else dict(state_dict)
    has_vit = any(k.startswith(VIT_PREFIX) for k in state)
    if not has_vit and not params.teacher.pretrained:
        raise ConversionError("the checkpoint has no semantic_encoder.model.* weights: set teacher.pretrained")
    with torch.device("meta"):
        model = DualViTok(params.model_copy(update={"disc_weight": 0.0}))
    if not has_vit:
        model.semantic_encoder.model = Teacher(params.teacher).build()
    model.load_state_dict(state, strict=has_vit, assign=True)
    _materialize_buffers(model)
    if params.disc_weight > 0:
        model.params = params
        model.discriminator = PatchGANDiscriminator(3, params.disc_width, params.disc_layers, params.disc_norm)
    return model


def _materialize_buffers(model: torch.nn.Module) -> None:
    """Recompute the non-persistent buffers (RoPE frequencies, usage counters) left on meta."""
    for module in model.modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if not buf.is_meta:
                continue
            if name in ("inv_freq", "original_inv_freq"):
                value = module.compute_axial_rope_parameters(module.config)[0]
            else:
                value = torch.zeros(buf.shape, dtype=buf.dtype)
            setattr(module, name, value)
