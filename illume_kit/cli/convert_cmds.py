"""`illume-kit convert`: released weights -> illume-kit checkpoints.

    illume-kit convert dualvitok-official pytorch_model.bin runs/dualvitok_official
    illume-kit convert illume-plus-official ILLUME_PLUS_DIR runs/illume_plus --dualvitok dualvitok.bin \
        [--diffusion SDXL_DECODER_DIR]

``dualvitok-official`` writes one component, used from a recipe as ``tokenizer: {name: dualvitok,
preset: official, weights: runs/dualvitok_official}``. ``illume-plus-official`` writes a whole model
(released MLLM + DualViTok [+ SDXL decoder]) that ``inspect``, ``understand``, ``generate`` and ``edit``
load. Torch pickles are read with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path

from illume_kit.cli.args import check_output_dir


def _dualvitok_official(src: str, out: str) -> dict:
    from illume_kit.core.plugins import get_registry
    from illume_kit.model.checkpoint import save_component
    from illume_kit.plugins.tokenizers.dualvitok.convert import instantiate_official, load_official_file
    from illume_kit.plugins.tokenizers.dualvitok.params import PRESETS, DualViTokParams

    if not Path(src).is_file():
        raise FileNotFoundError(f"{src}: no such file (the released DualViTok pytorch_model.bin or .safetensors)")
    spec = get_registry().get("tokenizer", "dualvitok")
    params = DualViTokParams.model_validate({**PRESETS["official"], "disc_weight": 0.0})
    state = load_official_file(src, params)
    model = instantiate_official(state, params)
    save_component(
        model,
        "tokenizer",
        spec,
        params,
        out,
        preset="official",
        extra={"converted_from": str(Path(src).name), "converter": "dualvitok-official"},
    )
    return {"tensors": len(state), "parameters": sum(p.numel() for p in model.parameters())}


def _params_file(path: str | None) -> dict | None:
    """illume-kit DualViTok params from a JSON or YAML file (data only)."""
    if path is None:
        return None
    from illume_kit.core.yamlio import YamlError, safe_load

    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the DualViTok params file: {exc}") from None
    try:
        data = safe_load(text, str(path))  # JSON is YAML
    except YamlError as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: DualViTok params must be a mapping of DualViTok fields")
    return data


def _illume_plus_official(src: str, out: str, args) -> dict:
    from illume_kit.model.convert_official import ConversionError, convert_illume_plus

    if args.dualvitok is None:
        raise ConversionError("illume-plus-official needs --dualvitok FILE: the released DualViTok weights")
    return convert_illume_plus(
        src,
        args.dualvitok,
        out,
        dualvitok_params=_params_file(args.dualvitok_params),
        diffusion=args.diffusion,
        dtype=args.dtype,
        anchor_base=args.anchor_base,
    )


CONVERTERS = {
    "dualvitok-official": lambda src, out, args=None: _dualvitok_official(src, out),
    "illume-plus-official": _illume_plus_official,
}


def cmd_convert(args) -> int:
    from illume_kit.cli.output import console

    check_output_dir(args.output, "output")
    info = CONVERTERS[args.kind](args.source, args.output, args)
    console.print(
        f"[green]converted[/] {args.source} -> {args.output}: {info['tensors']} tensors, "
        f"{info['parameters']:,} parameters"
    )
    return 0


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert released weights into an illume-kit component checkpoint")
    p.add_argument("kind", choices=sorted(CONVERTERS))
    p.add_argument("source", help="the released weights: DualViTok file, or the ILLUME+ MLLM folder")
    p.add_argument("output", help="output folder")
    p.add_argument("--dualvitok", help="illume-plus-official: the released DualViTok weights file")
    p.add_argument(
        "--dualvitok-params",
        help="illume-plus-official: a JSON/YAML file of DualViTok params (default: the released architecture)",
    )
    p.add_argument("--diffusion", help="illume-plus-official: the released SDXL decoder folder (diffusers format)")
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="illume-plus-official: backbone dtype (the release is bfloat16)",
    )
    p.add_argument(
        "--anchor-base",
        type=int,
        choices=(256, 384, 512, 768, 1024),
        default=512,
        help="illume-plus-official: the anchor table generate/edit size images with by default",
    )
    p.set_defaults(func=cmd_convert)
