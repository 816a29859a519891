"""ILLUME+'s released SDXL diffusion decoder (``ILLUME-MLLM/dualvitok-sdxl-decoder``) as a ``diffusion``
detokenizer.

The release is a diffusers pipeline folder (``model_index.json``, ``unet/``, ``vae/``, ``scheduler/``)
for ILLUME+'s ``StableDiffusionXLDecoderPipeline``. Its decoding path and the detokenizer's agree
step by step (``tests/plugins/decoders/test_sdxl_official_parity.py`` checks it against the
pipeline's own outputs):

- code map: the DualViTok's quantised maps, semantic resized bicubically to the pixel grid,
  concatenated (semantic first), then nearest-resized to the latent grid and concatenated to the
  4 latent channels;
- text path zero (77 zero tokens there, one here: attention over identical zero keys gives the
  same), pooled text zero, ``time_ids = [0, 0, 0, 0, 0, size_index]`` over its 12 output sizes;
- classifier-free guidance against an all-zero code map, 1.5 by default, 50 steps;
- the initial latents one ``randn_tensor`` draw of (B, 4, H/8, W/8) from the generator, times the
  scheduler's ``init_noise_sigma``; the scheduler is the folder's (class and config);
- latents / ``scaling_factor`` into the VAE, images ``x / 2 + 0.5`` clamped to [0, 1].

One difference: the release computes the code maps with the DualViTok cast to float16; the
detokenizer computes them in the tokenizer's dtype. On the fixture that moves the image by < 1e-4.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from illume_kit.plugins.decoders.folder import DiffusersFolderError, read_pipeline_folder
from illume_kit.plugins.decoders.params import DIFFUSION_PRESETS, DiffusionDetokenizerParams


def official_sdxl_params(folder: str | Path, **overrides: Any) -> dict[str, Any]:
    """``DiffusionDetokenizerParams`` fields for the released SDXL decoder folder.

    The ``official`` preset (VAE space, SDXL UNet, ILLUME+'s 12 output sizes, guidance 1.5, 50 steps)
    with ``pretrained: folder`` (UNet, VAE and scheduler are read from it at ``attach``) and the
    folder's scheduler. Every config in the folder is checked here (a missing or garbled one raises
    ``DiffusersFolderError`` naming the file); the weights are checked when they are loaded.
    ``overrides`` are further fields (e.g. ``num_inference_steps``).
    """
    info = read_pipeline_folder(folder, need_weights=False)
    if info.vae_config is None:
        raise DiffusersFolderError(f"{Path(folder) / 'vae'}: missing (the SDXL decoder denoises in its VAE's latent)")
    fields = {**DIFFUSION_PRESETS["official"], **info.scheduler_params(), "pretrained": str(folder), **overrides}
    DiffusionDetokenizerParams(**fields)  # a bad override fails here, naming the field
    return fields


def load_official_sdxl(folder: str | Path, tokenizer: Any, **overrides: Any):
    """The released SDXL decoder folder as a ``DiffusionDetokenizer`` attached to ``tokenizer`` (the
    converted DualViTok whose codes it decodes), in eval mode.

    For a self-contained checkpoint, record ``detok.checkpoint_params(official_sdxl_params(folder))``:
    the folder's architectures and scheduler written out, ``pretrained`` cleared (the weights are then
    the checkpoint's own).
    """
    from illume_kit.plugins.decoders.diffusion import DiffusionDetokenizer

    det = DiffusionDetokenizer(DiffusionDetokenizerParams(**official_sdxl_params(folder, **overrides)))
    det.attach(tokenizer)
    return det.eval()
