"""`illume-kit convert`: released weights -> an illume-kit component checkpoint.

    illume-kit convert dualvitok-official pytorch_model.bin runs/dualvitok_official

The output folder is used from a recipe as ``tokenizer: {name: dualvitok, preset: official,
weights: runs/dualvitok_official}``. Torch pickles are read with ``weights_only=True``.
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


CONVERTERS = {"dualvitok-official": _dualvitok_official}


def cmd_convert(args) -> int:
    from illume_kit.cli.output import console

    check_output_dir(args.output, "output")
    info = CONVERTERS[args.kind](args.source, args.output)
    console.print(
        f"[green]converted[/] {args.source} -> {args.output}: {info['tensors']} tensors, "
        f"{info['parameters']:,} parameters"
    )
    return 0


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert released weights into an illume-kit component checkpoint")
    p.add_argument("kind", choices=sorted(CONVERTERS))
    p.add_argument("source", help="the released weights file")
    p.add_argument("output", help="output folder")
    p.set_defaults(func=cmd_convert)
