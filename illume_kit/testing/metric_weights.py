"""Random-weight stand-ins for the pretrained networks the image metrics read (Inception-v3 for FID,
LPIPS-VGG, a tiny CLIP): nothing downloads here, so tests and demos write these files themselves.
The numbers they give are not comparable with published ones; the code paths are the real ones."""

from __future__ import annotations

import json
from pathlib import Path

import torch

# a CLIP that builds in milliseconds (open_clip.CLIP kwargs; the BPE tokenizer ships in the wheel)
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 128, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def _save(state: dict[str, torch.Tensor], path: str | Path) -> Path:
    """safetensors for a ``.safetensors`` path, else a plain tensor ``.pth`` (what the released files are)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def write_random_inception(path: str | Path, seed: int = 0, feature: int = 64) -> Path:
    """torch-fidelity's FID Inception-v3, randomly initialised, at ``path``."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    fetch, load = fe.load_state_dict_from_url, fe.FeatureExtractorInceptionV3.load_state_dict
    fe.load_state_dict_from_url = lambda *a, **k: {}  # build it without weights to keep its random init
    fe.FeatureExtractorInceptionV3.load_state_dict = lambda self, *a, **k: None
    try:
        torch.manual_seed(seed)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", [str(feature)])
    finally:
        fe.load_state_dict_from_url, fe.FeatureExtractorInceptionV3.load_state_dict = fetch, load
    return _save(net.state_dict(), path)


def write_random_lpips(path: str | Path, seed: int = 1, net: str = "vgg") -> Path:
    """An ``lpips.LPIPS`` with a random backbone and random linear heads at ``path``."""
    import lpips

    torch.manual_seed(seed)
    state = lpips.LPIPS(pretrained=False, net=net, pnet_rand=True, verbose=False).state_dict()
    # safetensors keeps one name of a shared tensor: the linear heads as lin<k> only
    return _save({k: v for k, v in state.items() if not k.startswith("lins.")}, path)


def write_tiny_clip(folder: str | Path, seed: int = 3) -> tuple[Path, Path]:
    """(weights .pth, model config .json) of a random ``TINY_CLIP``, for the clip-score metric."""
    import open_clip

    folder = Path(folder)
    torch.manual_seed(seed)
    weights, config = folder / "clip.pth", folder / "clip.json"
    torch.save(open_clip.CLIP(**TINY_CLIP).state_dict(), weights)
    config.write_text(json.dumps(TINY_CLIP))
    return weights, config
