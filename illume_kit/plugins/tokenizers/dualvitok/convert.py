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
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from illume_kit.core.build import ConversionError  # noqa: F401  (raised here, re-exported)
from illume_kit.plugins.tokenizers.dualvitok.params import DualViTokParams

VIT_PREFIX = "semantic_encoder.model."
_RENAMES = ((re.compile(r"^(semantic|pixel)_quantizer\.(?!vq\.)"), r"\1_quantizer.vq."),)


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


# pickle opcodes that import a name or call/build an object: a weights-only load allows only
# torch's own tensor rebuilders among them, so a refused pickle holding these carries code or objects
_CODE_OPS = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD"}


def _pickle_globals(path: Path) -> list[str] | None:
    """The names the first pickle in ``path`` imports (None: not a pickle). Parses, never loads."""
    names: list[str] = []
    strings: list[str] = []
    try:
        with path.open("rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if isinstance(arg, str):
                    strings = [*strings[-1:], arg]
                if op.name == "GLOBAL":
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL":
                    names.append(".".join(strings[-2:]))
                elif op.name in _CODE_OPS and not names:
                    names.append(op.name)
    except Exception:  # any parse failure: not a pickle
        return None
    return names


def _refused(path: Path, what: str) -> ConversionError:
    return ConversionError(
        f"{path} {what}, which a weights-only load refuses; illume-kit will not run code or build objects from a "
        "weights file. Obtain the weights as a .safetensors file, or as a plain state dict of tensors "
        "saved with torch.save"
    )


def _unreadable(path: Path, exc: BaseException) -> ConversionError:
    """One message for a file torch.load refused: code/objects in it, or not a checkpoint at all."""
    text = str(exc)
    if zipfile.is_zipfile(path):
        if "GLOBAL" in text or "global" in text:
            named = re.search(r"GLOBAL ([\w.]+)", text)
            return _refused(path, "holds Python code or objects" + (f" ({named.group(1)})" if named else ""))
        return ConversionError(f"{path} is a zip archive but not a torch checkpoint (no data.pkl in one folder)")
    names = _pickle_globals(path)
    if names is None:
        return ConversionError(f"{path} is neither a torch checkpoint nor a .safetensors file")
    if names:
        shown = ", ".join(dict.fromkeys(names[:3]))
        return _refused(path, f"is a pickle that holds Python code or objects ({shown})")
    return _refused(path, "is a pickle in a form torch's weights-only loader does not read")


def _torch_load(path: Path) -> Any:
    if path.stat().st_size == 0:
        raise ConversionError(f"{path} is empty (expected the released pytorch_model.bin or a .safetensors file)")
    try:
        with warnings.catch_warnings():  # torch's protocol warning: the error below says what matters
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return _load_weights_only(path)
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise _unreadable(path, exc) from None


def _load_weights_only(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True)


def load_official_file(path: str, params: DualViTokParams | None = None) -> dict[str, torch.Tensor]:
    """Read a released checkpoint file (torch pickle with ``weights_only=True``, or .safetensors) and convert it."""
    src = Path(path)
    if str(path).endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            checkpoint = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConversionError(f"{path} is not a readable .safetensors file: {first}") from None
    else:
        checkpoint = _torch_load(src)
    try:
        return convert_official(checkpoint, params)
    except ConversionError as exc:
        raise ConversionError(f"{path}: {exc}") from None


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
