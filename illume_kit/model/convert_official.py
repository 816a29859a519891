"""The released ILLUME+ system -> one illume-kit checkpoint (``illume-kit convert illume-plus-official``).

What the release is, and where each part lands:

- the MLLM folder (transformers format, ``model_type: illume_qwen2``, its extended Qwen2.5 tokenizer):
  the Qwen2 weights become the ``qwen2`` backbone as they are, every row of the embedding kept (the
  release has 283,047 rows for 282,776 ids; the spare rows are in its logits, so they stay in ours);
  ``model.mm_projector.projector_{1,2}`` become the semantic and pixel projectors; the MLLM's own
  fine-tuned encoders ``model.vision_tower.{semantic,pixel}_encoder`` become the model's separate
  input encoder (recipe ``model.input_encoder: separate``);
- the DualViTok weights (``--dualvitok``): the frozen tokenizer that makes and decodes output codes;
- optionally the SDXL decoder folder (``--diffusion``): the diffusion detokenizer.

The checkpoint's recipe draws and sizes images as the release's own inference does
(``model.prompt_style: official``, ``eval.options``: ``sampling: official`` with the release's
repetition penalty, ``preprocess: official``), and the MLLM's ``generation_config.json`` (its eos ids)
travels with the backbone.

The text vocabulary size is where the release's image ids start (``special_tokens_ids[0]``), and the
vocab layout built from it must give every structure, tag and code token the id the released
tokenizer gives it. Weights are read from safetensors, or from torch pickles with
``weights_only=True``; anything that is not what it should be is one ``ConversionError`` naming the
file and the key.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from illume_kit.core.build import ConversionError

__all__ = ["ConversionError", "convert_illume_plus", "read_official_mllm", "split_official_state"]

MODEL_TYPE = "illume_qwen2"
# config keys of the release that are ILLUME's, not Qwen2's
_ILLUME_KEYS = {
    "mm_vision_tower",
    "mm_projector",
    "mm_hidden_size",
    "mm_patch_merge_type",
    "special_tokens_ids",
    "image_aspect_ratio",
    "use_mm_proj",
    "tune_mm_mlp_adapter",
    "mm_use_im_start_end",
    "mm_use_im_patch_token",
    "image_grid_pinpoints",
    "tokenizer_model_max_length",
    "tokenizer_padding_side",
    "vision_tokenizer_levels",
    "text_token_num",
}
_TOWER, _PROJ = "model.vision_tower.", "model.mm_projector."


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ConversionError(f"{path} is missing (the released MLLM folder has config.json and its weights)")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _weight_files(folder: Path) -> list[Path]:
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        files = sorted(folder.glob(pattern))
        if files:
            return files
    raise ConversionError(f"{folder} holds no weights (model*.safetensors or pytorch_model*.bin)")


def _load_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in files:
        if f.suffix == ".safetensors":
            try:
                part = load_file(str(f))
            except (SafetensorError, OSError, ValueError) as exc:
                raise ConversionError(f"{f} is not a readable .safetensors file: {str(exc).splitlines()[0]}") from None
        else:
            try:
                part = torch.load(f, map_location="cpu", weights_only=True)
            except Exception as exc:  # pickles fail in many ways; each is "not a plain weights file"
                raise ConversionError(
                    f"{f} is not a weights-only torch checkpoint ({type(exc).__name__}); illume-kit never runs code "
                    "from a weights file: obtain the weights as .safetensors"
                ) from None
            if not isinstance(part, Mapping) or not all(isinstance(v, torch.Tensor) for v in part.values()):
                raise ConversionError(f"{f} is not a state dict of tensors")
        state.update(part)
    return state


def read_official_mllm(folder: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, state dict) of a released ILLUME+ MLLM folder, checked to be one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConversionError(f"{folder} is not a folder (give the released MLLM folder, with config.json)")
    config = _read_json(folder / "config.json")
    if config.get("model_type") != MODEL_TYPE:
        raise ConversionError(
            f"{folder / 'config.json'}: model_type is {config.get('model_type')!r}, the released ILLUME+ MLLM "
            f"is {MODEL_TYPE!r}"
        )
    for key in ("special_tokens_ids", "mm_hidden_size", "vocab_size", "hidden_size"):
        if key not in config:
            raise ConversionError(f"{folder / 'config.json'}: {key} is missing (an ILLUME+ MLLM config has it)")
    return config, _load_weights(_weight_files(folder))


def split_official_state(state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The release's keys by illume-kit part: ``backbone`` (transformers Qwen2 names, unchanged),
    ``projectors`` (semantic / pixel MLPs) and ``input_encoder`` (semantic ViT / pixel CNN)."""
    parts: dict[str, dict[str, torch.Tensor]] = {"backbone": {}, "projectors": {}, "input_encoder": {}}
    renames = (
        (_PROJ + "projector_1.", "projectors", "semantic."),
        (_PROJ + "projector_2.", "projectors", "pixel."),
        (_TOWER + "semantic_encoder.", "input_encoder", "semantic."),
        (_TOWER + "pixel_encoder.", "input_encoder", "pixel."),
    )
    for key, value in state.items():
        for prefix, part, new in renames:
            if key.startswith(prefix):
                parts[part][new + key[len(prefix) :]] = value
                break
        else:
            if key.startswith((_TOWER, _PROJ)):
                raise ConversionError(f"unexpected key {key!r}: not a part of ILLUME+'s vision tower or projector")
            parts["backbone"][key] = value
    return parts


def _qwen2_architecture(config: Mapping[str, Any]) -> dict[str, Any]:
    arch = {k: v for k, v in config.items() if k not in _ILLUME_KEYS}
    arch["model_type"] = "qwen2"
    return arch


def _recipe(
    config: dict,
    text_vocab: int,
    dualvitok_params: dict,
    dtype: str,
    detokenizer: dict | None,
    anchor_base: int,
    repetition_penalty: float,
) -> dict:
    return {
        "illume_kit": 1,
        "name": "illume_plus_official",
        "description": "the released ILLUME+ system, converted (illume-kit convert illume-plus-official)",
        "tokenizer": {"name": "dualvitok", "params": {**dualvitok_params, "disc_weight": 0.0}},
        "backbone": {
            "name": "qwen2",
            "params": {
                "architecture": _qwen2_architecture(config),
                "vocab_size": text_vocab,
                "dtype": dtype,
                "pad_vocab_to_multiple_of": 1,
            },
        },
        "detokenizer": detokenizer or {"name": "vq"},
        "model": {
            "image_input": "continuous",
            "prompt_style": "official",
            "input_encoder": "separate",
            "level_order": "coarse_first",
        },
        # images sized as the release sizes them (native aspect to understand, anchors to draw and edit)
        # and drawn as its own generate() draws them
        "eval": {
            "options": {
                "preprocess": "official",
                "anchor_base": anchor_base,
                "sampling": "official",
                "repetition_penalty": repetition_penalty,
            }
        },
        "run": {"seed": 0},
    }


def _load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str, optional=()) -> None:
    try:
        missing, unexpected = module.load_state_dict(dict(state), strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc))
        raise ConversionError(f"{what}: {first}") from None
    missing = [k for k in missing if k not in optional]
    if missing or unexpected:
        raise ConversionError(
            f"{what}: the release's weights do not fit (missing: {', '.join(sorted(missing)[:4]) or 'none'}; "
            f"unexpected: {', '.join(sorted(unexpected)[:4]) or 'none'})"
        )


def convert_illume_plus(
    mllm: str | Path,
    dualvitok: str | Path,
    out: str | Path,
    dualvitok_params: Mapping[str, Any] | None = None,
    diffusion: str | Path | None = None,
    dtype: str = "float32",
    anchor_base: int = 512,
) -> dict[str, Any]:
    """Convert the release into the checkpoint folder ``out``; returns a summary for the CLI.

    ``dualvitok_params``: illume-kit DualViTok params of the tokenizer (default: the ``official``
    preset, the released architecture). ``anchor_base``: the anchor table ``generate`` and ``edit``
    size images with by default (the release's last stages train on the 512 table)."""
    from illume_kit.core.plugins import get_registry
    from illume_kit.core.recipe import load_recipe
    from illume_kit.model.checkpoint import save_checkpoint
    from illume_kit.model.compose import assemble, build_component

    mllm = Path(mllm)
    config, state = read_official_mllm(mllm)
    text_vocab = int(config["special_tokens_ids"][0])
    if not Path(dualvitok).is_file():
        raise ConversionError(f"{dualvitok}: no such file (the released DualViTok weights)")
    tok_cls = get_registry().get("tokenizer", "dualvitok").load()
    tok_params = tok_cls.Params.model_validate({**tok_cls.PRESETS["official"], **(dualvitok_params or {})})
    detok = None
    if diffusion is not None:
        det_cls = get_registry().get("detokenizer", "diffusion").load()
        detok = {"name": "diffusion", "params": det_cls.official_params(diffusion)}
    gen = mllm / "generation_config.json"
    generation = _read_json(gen) if gen.is_file() else {}
    penalty = float(generation.get("repetition_penalty", 1.0))
    with tempfile.TemporaryDirectory() as tmp:
        recipe_file = Path(tmp) / "recipe.yaml"
        data = _recipe(config, text_vocab, tok_params.model_dump(mode="json"), dtype, detok, anchor_base, penalty)
        recipe_file.write_text(yaml.safe_dump(data, sort_keys=False))
        resolved = load_recipe(recipe_file)
    tokenizer = tok_cls.from_official(str(dualvitok), tok_params)
    comps = resolved.components
    backbone = build_component(comps["backbone"].spec, comps["backbone"].params)
    try:
        backbone.use_text_tokenizer(mllm)
        backbone.use_generation_config(mllm)  # the release's eos ids and repetition penalty
    except (FileNotFoundError, TypeError, ValueError) as exc:
        raise ConversionError(str(exc)) from None
    detokenizer = build_component(comps["detokenizer"].spec, comps["detokenizer"].params)
    names = {sec: rc.spec.name for sec, rc in comps.items()}
    try:
        model = assemble(tokenizer, backbone, detokenizer, resolved.recipe.model, names=names)
    except ValueError as exc:
        raise ConversionError(f"{mllm}: {exc}") from None
    parts = split_official_state(state)
    tied = bool(config.get("tie_word_embeddings", False))
    _load_strict(backbone.model, parts["backbone"], f"{mllm} (language model)", ("lm_head.weight",) if tied else ())
    _load_strict(model.projectors, parts["projectors"], f"{mllm} (mm_projector)")
    _load_strict(model.input_encoder, parts["input_encoder"], f"{mllm} (vision_tower)")
    if diffusion is not None:
        detokenizer.load_official(diffusion)
    extra = {
        "trained_sizes": [],  # the release's training sizes are its anchor tables: no size to warn about
        "converter": "illume-plus-official",
        "converted_from": {"mllm": mllm.name, "dualvitok": Path(dualvitok).name},
    }
    if diffusion is not None:
        extra["converted_from"]["diffusion"] = Path(diffusion).name
    model.eval()
    save_checkpoint(model, resolved, out, extra=extra)
    return {
        "tensors": len(state),
        "parameters": sum(p.numel() for p in model.parameters()),
        "text_vocab": text_vocab,
        "rows": backbone.vocab_size,
    }
