"""A real open_clip SigLIP architecture as the semantic teacher: a timm vision tower inside a
``CustomTextCLIP`` (how open_clip's ``ViT-*-SigLIP-*`` configs build), loaded from a local weights file.

The release is simulated by a tiny random config of that architecture (timm's ``test_vit`` tower with
SigLIP's attention-pool head, a bidirectional text tower), built with open_clip itself and saved.
"""

from __future__ import annotations

import shutil

import open_clip
import pytest
import torch
import yaml
from safetensors.torch import save_file

from illume_kit.core.recipe import load_recipe
from illume_kit.model.checkpoint import load_checkpoint, save_checkpoint
from illume_kit.model.compose import compose
from illume_kit.plugins.tokenizers.common.params import TeacherParams
from illume_kit.plugins.tokenizers.common.teacher import Teacher
from illume_kit.plugins.tokenizers.teacher.model import SemanticTeacher
from illume_kit.plugins.tokenizers.teacher.params import TeacherParams as SigLIPParams

TINY_SIGLIP = {  # ViT-B-16-SigLIP's structure at test size
    "embed_dim": 64,
    "init_logit_bias": -10,
    "custom_text": True,
    "vision_cfg": {"image_size": 224, "timm_model_name": "test_vit", "timm_pool": "map", "timm_proj": "none"},
    "text_cfg": {
        "context_length": 16,
        "vocab_size": 1000,
        "width": 32,
        "heads": 2,
        "layers": 1,
        "no_causal_mask": True,
        "proj_bias": True,
        "pool_type": "last",
        "norm_kwargs": {"eps": 1e-6},
    },
}


@pytest.fixture
def release(tmp_path):
    torch.manual_seed(0)
    cfg = {k: v for k, v in TINY_SIGLIP.items() if k != "custom_text"}
    model = open_clip.CustomTextCLIP(**cfg).eval()
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return model, path


def test_siglip_architecture_loads_from_a_weights_file(release):
    model, path = release
    siglip = {"open_clip_config": TINY_SIGLIP, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    teacher = Teacher(TeacherParams(kind="siglip", pretrained=str(path), siglip=siglip))
    net = teacher.build()
    assert net.mean.flatten().tolist() == [0.5] * 3  # SigLIP's normalisation, not CLIP's
    assert isinstance(net.clip, open_clip.CustomTextCLIP)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in net.clip.state_dict().items())
    assert (teacher.stride, teacher.width) == (16, 64)
    images = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        want = model.visual.trunk.forward_features((images - net.mean) / net.std)
        got = teacher.features(net, images)
        assert got.shape == (2, 14, 14, 64)
        prefix = model.visual.trunk.num_prefix_tokens  # test_vit has a class token; SigLIP has none
        assert prefix == 1 and torch.allclose(got.reshape(2, 196, 64), want[:, prefix:], atol=1e-6)
        assert teacher.features(net, torch.rand(1, 3, 64, 96)).shape == (1, 4, 6, 64)  # the grid follows the image
        assert torch.allclose(
            net.embed_image(images), model.encode_image((images - net.mean) / net.std, normalize=True)
        )
    with pytest.raises(ValueError, match="encodes images only"):
        net.embed_text(["a red square"])  # a 1000-token text tower cannot read CLIP BPE ids


def test_checkpoint_of_a_siglip_teacher_loads_without_the_file(tmp_path, release):
    model, path = release
    recipe = {
        "extends": ["base/tiny.yaml"],
        "name": "siglip_release",
        "tokenizer": {
            "name": "siglip",
            "preset": "tiny",
            "params": {
                "teacher": {"kind": "siglip", "pretrained": str(path), "siglip": {"open_clip_config": TINY_SIGLIP}}
            },
        },
        "detokenizer": {"name": "diffusion", "preset": "tiny"},
        "data": {"name": "shapes", "params": {"image_size": 64}},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    resolved = load_recipe(tmp_path / "r.yaml")
    composed = compose(resolved).eval()
    save_checkpoint(composed, resolved, tmp_path / "ck")
    shutil.move(path, tmp_path / "moved.safetensors")
    loaded, manifest = load_checkpoint(tmp_path / "ck")
    teacher = manifest["components"]["tokenizer"]["params"]["teacher"]
    assert teacher["pretrained"] is None and teacher["siglip"]["open_clip_config"]["custom_text"] is True
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(
            loaded.tokenizer.encode(images).codes["semantic"], composed.tokenizer.encode(images).codes["semantic"]
        )


def test_shipped_open_clip_config_builds_offline_on_meta():
    with torch.device("meta"):
        teacher = SemanticTeacher(SigLIPParams(open_clip_model="ViT-B-16-SigLIP"))
    assert isinstance(teacher.clip, open_clip.CustomTextCLIP)
    assert (teacher.patch_size, teacher.feature_dim) == (16, 768)
    assert 190e6 < sum(p.numel() for p in teacher.clip.parameters()) < 210e6
    with pytest.raises(ValueError, match="ships a config"):
        SemanticTeacher(SigLIPParams(open_clip_model="no-such-model"))
    bad = {**TINY_SIGLIP, "vision_cfg": {**TINY_SIGLIP["vision_cfg"], "timm_model_name": "no_such_vit"}}
    with pytest.raises(ValueError, match="does not build"):
        SemanticTeacher(SigLIPParams(open_clip_config=bad))
