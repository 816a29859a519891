"""Running the official ILLUME+ code small and offline, for the fixture scripts beside this file.

Imported by ``mllm.py`` (and others) under the official code's own environment (transformers 4.44.2,
diffusers 0.31, timm 0.9; see ``docs/parity.md``). Nothing of the official repository is copied: it
is put on ``sys.path`` from the path given on the command line, and only these things are patched:

- ``Qwen2VisionTransformerPretrainedModel.from_pretrained`` (the frozen Qwen2-VL ViT the release
  downloads from the hub as ``Emova-ollm/qwen2vit600m``) builds the ViT from a small config instead;
- nothing else: the vision tower's deepspeed-aware weight loading is never reached, because the
  weights are random and set with a plain ``load_state_dict``.

``TINY_DUALVITOK`` is a shrunken DualViTok in the official config format (the released
``configs/example/dualvitok/dualvitok_anyres_max512.py`` with small widths and codebooks), and
``illume_kit_params`` gives the matching illume-kit ``DualViTokParams`` fields, so one random
official model converts onto one illume-kit model.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

# The released ViT is Qwen2-VL's (patch 14, merge 2: the official ScalingLayerForQwen2ViT hard-codes
# both); only its widths and depth shrink.
TINY_VIT = {"depth": 2, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2, "hidden_size": 48, "in_channels": 3}

TINY_DUALVITOK = {
    "type": "DualViTok",
    "config": {
        "semantic_encoder": {
            "semantic_encoder": "tiny-qwen2vit",
            "num_blocks": 1,
            "proj_layer": "linear",
            "z_channels": 8,
            # the adapter blocks take Qwen2VLVisionConfig's default 16 heads: 64 gives a head width of 4,
            # the least its 2D rotary embedding splits
            "embed_dim": 64,
            "attn_implementation": "eager",
            "target_mlp": "norm",
        },
        "semantic_quantizer": {
            "type": "SimVQ",
            "dim": 8,
            "codebook_size": 64,
            "channel_first": True,
            "rotation_trick": False,
        },
        "semantic_decoder": {
            "z_channels": 8,
            "proj_layer": "linear_norm",
            "embed_dim": 64,
            "output_channels": 48,
            "num_blocks": 1,
            "attn_implementation": "eager",
        },
        "pixel_encoder": {
            "ch": 32,
            "attn_resolutions": [4],
            "ch_mult": [1, 1, 2, 2, 4],
            "codebook_size": 192,
            "double_z": False,
            "dropout": 0.0,
            "embed_dim": 8,
            "in_channels": 3,
            "num_res_blocks": 1,
            "out_channels": 3,
            "z_channels": 8,
            "use_dc_up_down_blocks": True,
        },
        "pixel_quantizer": {
            "type": "SimVQ",
            "dim": 8,
            "codebook_size": 192,
            "channel_first": True,
            "rotation_trick": False,
        },
        "pixel_decoder": {
            "ch": 32,
            "attn_resolutions": [4],
            "ch_mult": [1, 1, 2, 2, 4],
            "codebook_size": 192,
            "double_z": False,
            "dropout": 0.0,
            "embed_dim": 16,
            "in_channels": 3,
            "num_res_blocks": 1,
            "out_channels": 3,
            "z_channels": 16,
            "use_dc_up_down_blocks": True,
        },
        "pixel_drop_rate": None,
        "pixel_drop_batch_rate": 0.1,
        "pixel_noise_type": "random",
    },
}


def illume_kit_params(vq: dict = TINY_DUALVITOK, vit: dict = TINY_VIT) -> dict:
    """The illume-kit ``DualViTokParams`` fields of an official DualViTok config."""
    c = vq["config"]
    se, sd, pe, pd = c["semantic_encoder"], c["semantic_decoder"], c["pixel_encoder"], c["pixel_decoder"]
    return {
        "teacher": {
            "depth": vit["depth"],
            "embed_dim": vit["embed_dim"],
            "num_heads": vit["num_heads"],
            "mlp_ratio": vit["mlp_ratio"],
            "hidden_size": vit["hidden_size"],
            "patch_size": 14,
            "spatial_merge_size": 2,
        },
        "semantic_width": se["embed_dim"],
        "semantic_heads": 16,
        "semantic_mlp_ratio": 4,
        "semantic_encoder_blocks": se["num_blocks"],
        "semantic_decoder_blocks": sd["num_blocks"],
        "semantic_code_dim": se["z_channels"],
        "semantic_codebook_size": c["semantic_quantizer"]["codebook_size"],
        "encoder_channels": pe["ch"],
        "encoder_channel_mult": list(pe["ch_mult"]),
        "encoder_res_blocks": pe["num_res_blocks"],
        # MoVQ's attn_resolutions [4] put attention on the last level, as in the release
        "encoder_attn_levels": [len(pe["ch_mult"]) - 1] if pe["attn_resolutions"] == [4] else [],
        "pixel_z_channels": pe["z_channels"],
        "pixel_code_dim": pe["embed_dim"],
        "pixel_codebook_size": c["pixel_quantizer"]["codebook_size"],
        "decoder_channels": pd["ch"],
        "decoder_channel_mult": list(pd["ch_mult"]),
        "decoder_res_blocks": pd["num_res_blocks"],
        "decoder_attn_levels": [len(pd["ch_mult"]) - 1] if pd["attn_resolutions"] == [4] else [],
        "norm_groups": 32,
        "disc_weight": 0.0,
    }


def official_commit(repo: Path, given: str | None) -> str:
    if given:
        return given
    try:
        return subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        raise SystemExit(f"{repo} is not a git checkout: give the official commit with --commit") from None


def setup(repo: str | Path, vit: dict = TINY_VIT) -> Path:
    """Put the official code on ``sys.path`` and patch what would download or needs deepspeed."""
    repo = Path(repo).resolve()
    for sub in ("ILLUME", "vision_tokenizer"):
        if not (repo / sub).is_dir():
            raise SystemExit(f"{repo} has no {sub}/: give the root of an ILLUME_plus checkout")
    # vision_tokenizer/ first: both trees hold a `utils` package and the tokenizer's is the one
    # `tokenizer.builder` imports; the MLLM code imports `illume.*` only
    sys.path[:0] = [str(repo / "vision_tokenizer"), str(repo / "ILLUME")]
    from tokenizer.qwen2vit import modeling_qwen2_vl as vl
    from tokenizer.qwen2vit.configuration_qwen2_vl import Qwen2VLVisionConfig

    def from_config(cls, name, *args, attn_implementation="eager", **kwargs):
        config = Qwen2VLVisionConfig(**vit)
        config._attn_implementation = "eager"
        return cls(config)

    vl.Qwen2VisionTransformerPretrainedModel.from_pretrained = classmethod(from_config)
    return repo


def build_dualvitok(vq: dict = TINY_DUALVITOK):
    """The official DualViTok class built from an official-format config dict (random init)."""
    import tokenizer.dualvitok_model  # noqa: F401  (registers DualViTok and SimVQ)
    from tokenizer.builder import build_vq_model
    from utils.registry_utils import DotDict

    return build_vq_model(DotDict.convert(copy.deepcopy(vq))).eval()
