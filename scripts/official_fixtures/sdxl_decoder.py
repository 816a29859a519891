"""The official ILLUME+ SDXL diffusion decoder, small and random, and what its pipeline outputs:
tests/fixtures/official/sdxl_decoder/.

Usage (in the official code's environment: diffusers 0.31, see docs/parity.md):
    python scripts/official_fixtures/sdxl_decoder.py OFFICIAL_REPO [--out DIR] [--commit SHA]
        [--dualvitok tests/fixtures/official/mllm/dualvitok.safetensors]

OFFICIAL_REPO is a checkout of illume-unified-mllm/ILLUME_plus; nothing of it is copied into this
project. What the script runs of it, as it is:

- ``vision_tokenizer/tokenizer/sdxl_decoder_pipe.py::StableDiffusionXLDecoderPipeline`` loaded with
  ``from_pretrained(folder, add_watermarker=False, vq_config=..., vq_model=..., torch_dtype=float32)``
  as ``generation_eval/models/illume.py::build_detokenizer`` loads the release, and called as its
  ``inference_tokenizer_decoder`` calls it: ``vq_indices=(semantic (1, h1, w1), pixel (1, h2, w2))``,
  ``height=2h, width=2w``, a seeded CPU generator, guidance 1.5; the code grids are those
  ``calculate_image_token_num`` gives for an (h, w) image (``RESOLUTION_MAPPING`` // 28, and // 16);
- its ``DualViTok2ImageEmbedder`` around the official ``DualViTok`` (``official_env.build_dualvitok``),
  whose weights are the MLLM fixture's output tokenizer (``--dualvitok``, the frozen DualViTok the
  MLLM's codes belong to), so this decoder composes with that fixture. The embedder is built here with
  ``device="cpu"`` and handed to the pipe as ``vq_model`` (the pipe's own branch for a ready
  embedder): the pipe would otherwise build it on ``"cuda"``. As in the release, the embedder casts
  the DualViTok to float16, so the code maps the UNet sees are float16 values.

The decoder folder is what the release's ``ILLUME-MLLM/dualvitok-sdxl-decoder`` holds, written by the
pipeline's own ``save_pretrained``: ``model_index.json``, ``unet/`` (a ``UNet2DConditionModel`` of
SDXL's architecture: DownBlock2D + two CrossAttn levels, ``addition_embed_type="text_time"``,
cross-attention dim 2048 and a 1280-wide pooled text slot, both of which the pipe hard-codes; input
4 latent + 16 code channels; small widths), ``vae/`` (an ``AutoencoderKL`` with SDXL's four levels,
stride 8, scaling factor 0.13025; small widths) and ``scheduler/`` (SDXL base's
``EulerDiscreteScheduler`` config: the release's file is not available offline, and an SDXL
fine-tune keeps its base scheduler). Weights are random (seeded), float32.

The 12 output sizes are asserted by the pipe, so the sizes are its two smallest: 512x512 (a 256x256
code image) and 768 wide x 1024 high (a 384x512 one). Recorded per size: the codes, seed, steps and
guidance, the final latents in full (through the pipe's ``callback_on_step_end``), and of the
[0, 1] image (``output_type="pt"``; the same numbers the default PIL output rounds) every 8th pixel
in both directions, a full-resolution 64x64 centre crop and the per-channel means: the full images
would be megabytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import official_env  # noqa: E402

SEED = 4321
STEPS = 5
GUIDANCE = 1.5  # generation_eval/models/illume.py InferenceConfig.diffusion_cfg_scale
SIZES = {"square": (256, 256), "tall": (512, 384)}  # code image (h, w); the pipe outputs (2h, 2w)
STRIDE, CROP = 8, 64

# SDXL base 1.0's scheduler/scheduler_config.json
SCHEDULER = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}
TIME_DIM = 8  # addition_time_embed_dim (SDXL: 256)
UNET = {
    "sample_size": 64,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [8, 8, 8],
    "layers_per_block": 1,
    "transformer_layers_per_block": [1, 1, 1],
    "attention_head_dim": [2, 2, 2],
    "norm_num_groups": 8,
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": TIME_DIM,
    "projection_class_embeddings_input_dim": 6 * TIME_DIM + 1280,
    "out_channels": 4,
}
VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 8, 8, 8],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("official_repo")
    ap.add_argument("--out", default=str(ROOT / "tests/fixtures/official/sdxl_decoder"))
    ap.add_argument("--dualvitok", default=str(ROOT / "tests/fixtures/official/mllm/dualvitok.safetensors"))
    ap.add_argument("--commit", default=None, help="official commit, if OFFICIAL_REPO is no git checkout")
    args = ap.parse_args()
    repo = official_env.setup(args.official_repo)
    commit = official_env.official_commit(repo, args.commit)

    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from safetensors.torch import load_file, save_file
    from tokenizer.dualvitok_model import RESOLUTION_MAPPING
    from tokenizer.sdxl_decoder_pipe import DualViTok2ImageEmbedder, StableDiffusionXLDecoderPipeline
    from utils.registry_utils import DotDict

    dualvitok = Path(args.dualvitok)
    mllm_meta = json.loads((dualvitok.parent / "fixture.json").read_text())
    vq_cfg = mllm_meta["dualvitok_config"]
    codebooks = [
        vq_cfg["config"]["semantic_quantizer"]["codebook_size"],
        vq_cfg["config"]["pixel_quantizer"]["codebook_size"],
    ]

    def embedder():
        vq = official_env.build_dualvitok(vq_cfg)
        vq.load_state_dict({k: v.float() for k, v in load_file(str(dualvitok)).items()})
        vq_config = DotDict.convert(
            {
                "vq_model": vq_cfg,
                "data_args": {"val": {"resolution": 256, "augment": {"type": "dualvitok_fix_resolution_val"}}},
            }
        )
        # the keyword arguments the pipe's __init__ gives its own embedder, on the CPU
        return DualViTok2ImageEmbedder(
            vq_config, vq, device="cpu", image_size=0, resize_factor=1, return_sequence=False, grid_feature_scale=1
        )

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    folder = out / "decoder"
    folder.mkdir(parents=True)

    emb = embedder()
    code_channels = emb.model.semantic_channel + emb.model.pixel_channel
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(in_channels=4 + code_channels, **UNET)
    vae = AutoencoderKL(**VAE)
    scheduler = EulerDiscreteScheduler.from_config(SCHEDULER)
    for model in (unet, vae):  # bfloat16-exact weights, stored as bfloat16: half the bytes, same values
        model.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in model.state_dict().items()})
        model.to(torch.bfloat16)
    StableDiffusionXLDecoderPipeline(
        vae=vae, unet=unet, scheduler=scheduler, add_watermarker=False, vq_model=emb
    ).save_pretrained(str(folder))

    pipe = StableDiffusionXLDecoderPipeline.from_pretrained(
        str(folder), add_watermarker=False, vq_config=None, vq_model=emb, torch_dtype=torch.float32
    )
    pipe.set_progress_bar_config(disable=True)

    g = torch.Generator().manual_seed(SEED + 1)
    runs, tensors = [], {}
    for name, (h, w) in SIZES.items():
        mapped_w, mapped_h = RESOLUTION_MAPPING[(w, h)]
        h1, w1, h2, w2 = mapped_h // 28, mapped_w // 28, h // 16, w // 16
        semantic = torch.randint(0, codebooks[0], (1, h1, w1), generator=g)
        pixel = torch.randint(0, codebooks[1], (1, h2, w2), generator=g)
        final = {}

        def keep_latents(pipe_, i, t, kw, final=final):
            final["latents"] = kw["latents"].clone()
            return {}

        seed = SEED + 10 + len(runs)
        image = pipe(
            vq_indices=(semantic, pixel),
            height=h * 2,
            width=w * 2,
            guidance_scale=GUIDANCE,
            num_inference_steps=STEPS,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="pt",
            callback_on_step_end=keep_latents,
        ).images
        H, W = image.shape[-2:]
        cy, cx = H // 2 - CROP // 2, W // 2 - CROP // 2
        tensors |= {
            f"{name}.semantic": semantic.contiguous(),
            f"{name}.pixel": pixel.contiguous(),
            f"{name}.code_map": pipe.indices_to_codes(semantic, pixel).float().contiguous(),
            f"{name}.latents": final["latents"].contiguous(),
            f"{name}.image_strided": image[..., ::STRIDE, ::STRIDE].contiguous(),
            f"{name}.image_crop": image[..., cy : cy + CROP, cx : cx + CROP].contiguous(),
            f"{name}.image_mean": image.double().mean(dim=(-2, -1)).contiguous(),
        }
        runs.append(
            {
                "name": name,
                "code_image": [h, w],
                "output": [H, W],
                "grids": {"semantic": [h1, w1], "pixel": [h2, w2]},
                "seed": seed,
                "crop_top_left": [cy, cx],
            }
        )
        print(f"{name}: codes {h1}x{w1} + {h2}x{w2} -> image {H}x{W}, mean {image.mean():.4f}")
    save_file(tensors, str(out / "outputs.safetensors"))
    meta = {
        "official_commit": commit,
        "made_by": "scripts/official_fixtures/sdxl_decoder.py",
        "pipeline": "vision_tokenizer/tokenizer/sdxl_decoder_pipe.py::StableDiffusionXLDecoderPipeline",
        "dualvitok": {
            "file": str(dualvitok.relative_to(ROOT)) if dualvitok.is_relative_to(ROOT) else str(dualvitok),
            "sha256": sha256(dualvitok),
            "config": vq_cfg,
        },
        "steps": STEPS,
        "guidance_scale": GUIDANCE,
        "image_stride": STRIDE,
        "image_crop": CROP,
        "runs": runs,
    }
    (out / "fixture.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
