"""DualViTok: contract shapes, grids, the official sizes, teacher preprocessing, round trips."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from illume_kit.core.protocols import CodebookSpec, VisualTokenizer
from illume_kit.plugins.tokenizers.common.teacher import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    qwen2vl_patches,
    vit_input_size,
)
from illume_kit.plugins.tokenizers.dualvitok.model import DualViTok
from illume_kit.plugins.tokenizers.dualvitok.params import PRESETS, DualViTokParams
from illume_kit.testing import conformance


def tiny(**overrides) -> DualViTok:
    torch.manual_seed(0)
    return DualViTok(DualViTok.Params(**{**PRESETS["tiny"], **overrides}))


@pytest.fixture(scope="module")
def official_meta() -> DualViTok:
    with torch.device("meta"):
        return DualViTok(DualViTok.Params(**PRESETS["official"]))


def test_params_modules_are_torch_free():
    code = (
        "import sys, illume_kit.plugins.tokenizers.dualvitok.params, illume_kit.plugins.tokenizers.quantizer_params;"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_validate(name):
    DualViTokParams(**PRESETS[name])


def test_params_reject_bad_widths():
    with pytest.raises(ValueError, match="norm_groups"):
        DualViTokParams(encoder_channels=40)
    with pytest.raises(ValueError, match="out of range"):
        DualViTokParams(decoder_attn_levels=[7])
    # caught when the recipe is validated, not after a teacher has trained (the DC shortcut reshapes)
    with pytest.raises(ValueError, match="semantic_code_dim \\+ pixel_code_dim = 24"):
        DualViTokParams(**{**PRESETS["tiny"], "pixel_code_dim": 8})


def test_official_parameter_counts(official_meta):
    """The released sizes (counted by instantiating the official classes), exactly."""

    def count(module):
        return sum(p.numel() for p in module.parameters())

    enc = official_meta.semantic_encoder
    adapter = count(enc) - count(enc.model)
    assert count(enc.model) == 675_759_104
    assert adapter == 83_339_552  # ~83.3M
    assert count(official_meta.semantic_decoder) == 83_350_272  # ~83.4M
    assert count(official_meta.pixel_encoder) == 27_159_264  # ~27.2M
    assert count(official_meta.pixel_decoder) == 476_363_523  # ~476.4M
    assert not any(p.requires_grad for p in enc.model.parameters())


def test_official_codebooks_and_grids(official_meta):
    assert official_meta.codebooks == (
        CodebookSpec("semantic", 32768, 32, 28, 3584),
        CodebookSpec("pixel", 98304, 32, 16, 32),
    )
    # reference §2.5: semantic via the resize table, pixel at stride 16
    expected = {
        (256, 256): ((9, 9), (16, 16)),
        (512, 512): ((18, 18), (32, 32)),
        (384, 512): ((12, 16), (24, 32)),
        (384, 768): ((13, 26), (24, 48)),
        (320, 960): ((11, 33), (20, 60)),
        (256, 1024): ((9, 36), (16, 64)),
        (768, 768): ((27, 27), (48, 48)),
    }
    for (h, w), (sem, pix) in expected.items():
        assert official_meta.grid(h, w) == {"semantic": sem, "pixel": pix}, (h, w)
    with pytest.raises(ValueError, match="multiples of 16"):
        official_meta.grid(250, 256)


def test_vit_resize_rule():
    assert vit_input_size(512, 384, 28) == (448, 336)
    assert vit_input_size(100, 20, 28) == (84, 28)  # floored, at least one token
    assert vit_input_size(256, 256, 16) == (256, 256)  # the table is for stride 28 only


def test_teacher_patches_match_transformers_qwen2vl_processor():
    """Qwen2-VL patch order (2x2 merge windows contiguous, frame duplicated) as transformers produces it."""
    from transformers import Qwen2VLImageProcessor

    img = torch.rand(2, 3, 56, 84)
    ref = Qwen2VLImageProcessor(do_resize=False, do_rescale=False)(
        images=[i.permute(1, 2, 0).numpy() for i in img], return_tensors="pt", input_data_format="channels_last"
    )
    rows, grid = qwen2vl_patches(img, (56, 84), 14, 2, 2, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    assert torch.equal(grid, ref["image_grid_thw"])
    assert torch.allclose(rows, ref["pixel_values"], atol=1e-5)


def test_tiny_encode_decode_contract():
    model = tiny().eval()
    assert isinstance(model, VisualTokenizer) and model.has_pixel_decoder
    sem, pix = model.codebooks
    images = torch.rand(3, 3, 64, 96)
    with torch.no_grad():
        out = model.encode(images)
    grid = model.grid(64, 96)
    assert grid == {"semantic": (4, 6), "pixel": (8, 12)}  # tiny: pixel stride 8
    for spec in (sem, pix):
        codes = out.codes[spec.name]
        assert codes.shape == (3, *grid[spec.name]) and codes.dtype == torch.long
        assert 0 <= codes.min() and codes.max() < spec.size
        assert out.features[spec.name].shape == (3, *grid[spec.name], spec.feature_dim)
        assert out.quantized[spec.name].shape == (3, spec.code_dim, *grid[spec.name])
    assert set(out.losses) == {"semantic_vq", "pixel_vq"} and all(v.ndim == 0 for v in out.losses.values())
    with torch.no_grad():
        image = model.decode(out.codes)
        assert image.shape == (3, 3, 64, 96) and 0 <= image.min() and image.max() <= 1
        # decoding indices reproduces decoding the quantised maps of encode
        assert torch.allclose(image, model(images), atol=1e-5)


def test_features_are_pre_quantisation_and_pre_adapter():
    model = tiny().eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = model.encode(images)
        raw = model.teacher.features(model.semantic_encoder.model, images)
        pix = model.pixel_encoder(images * 2 - 1).permute(0, 2, 3, 1)
    assert torch.allclose(out.features["semantic"], raw) and torch.allclose(out.features["pixel"], pix)


def test_teacher_stays_frozen_and_in_eval():
    model = tiny().train()
    teacher = model.semantic_encoder.model
    assert not teacher.training and model.semantic_encoder.blocks.training
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in model.semantic_encoder.blocks.parameters())


def test_noise_only_in_training():
    model = tiny(pixel_drop_rate=1.0, pixel_drop_batch_rate=1.0)
    q_sem, q_pix = torch.randn(3, 16, 4, 4), torch.randn(3, 16, 4, 4)
    model.train()
    merged = model.merge_quantized(q_sem, q_pix)
    assert torch.equal(merged[:, 16:], q_pix.roll(1, dims=0))  # every position swapped with the neighbour
    model.eval()
    assert torch.equal(model.merge_quantized(q_sem, q_pix)[:, 16:], q_pix)


def test_siglip_teacher():
    """illume-kit's own SigLIP teacher: stride = its patch size, the grid follows the image."""
    model = tiny(teacher={**PRESETS["tiny"]["teacher"], "kind": "siglip"}).eval()
    sem = model.codebooks[0]
    assert (sem.stride, sem.feature_dim) == (8, 64)
    assert model.grid(32, 48)["semantic"] == (4, 6)
    with torch.no_grad():
        out = model.encode(torch.rand(2, 3, 32, 48))
        assert out.codes["semantic"].shape == (2, 4, 6) and out.features["semantic"].shape == (2, 4, 6, 64)
        assert model.decode(out.codes).shape == (2, 3, 32, 48)
    assert not any(q.requires_grad for q in model.semantic_encoder.model.parameters())


def test_siglip_teacher_loads_local_weights(tmp_path):
    from safetensors.torch import save_file

    from illume_kit.plugins.tokenizers.teacher.model import SemanticTeacher
    from illume_kit.plugins.tokenizers.teacher.params import TeacherParams

    params = {**PRESETS["tiny"]["teacher"], "kind": "siglip"}
    torch.manual_seed(1)
    trained = SemanticTeacher(TeacherParams(**params["siglip"])).eval()
    trained.save(tmp_path / "teacher")  # the folder the teacher's own training writes
    save_file({k: v.contiguous() for k, v in trained.clip.state_dict().items()}, tmp_path / "clip.safetensors")
    images = torch.rand(1, 3, 32, 32)
    for source in (tmp_path / "teacher", tmp_path / "clip.safetensors"):
        model = tiny(teacher={**params, "pretrained": str(source)}).eval()
        with torch.no_grad():
            assert torch.allclose(model.encode(images).features["semantic"], trained.encode_image(images), atol=1e-5)


def test_quantizers_are_pluggable():
    model = tiny(semantic_quantizer={"name": "fsq", "params": {"levels": [8, 8, 4]}}, semantic_code_dim=16)
    assert model.codebooks[0].size == 256
    with pytest.raises(ValueError, match="several indices"):
        tiny(pixel_quantizer={"name": "residual-vq", "params": {"num_quantizers": 2}})
    with pytest.raises(ValueError, match="code width is 16"):
        tiny(pixel_quantizer={"name": "simvq", "params": {"dim": 8}})


def test_usage_counters_reach_the_model():
    model = tiny().train()
    model.reset_codebook_usage()
    model.encode(torch.rand(2, 3, 64, 64))
    usage = model.codebook_usage()
    assert usage["semantic"]["tokens"] == 2 * 4 * 4 and usage["pixel"]["tokens"] == 2 * 8 * 8  # strides 16 and 8
    assert 0 < usage["pixel"]["usage"] <= min(1.0, 128 / model.pixel_quantizer.codebook_size)


@conformance.parametrize("tokenizer")
def test_conformance(check):
    check(lambda: tiny())


def test_registry_record_declares_what_the_tokenizer_provides():
    from illume_kit.core.plugins import get_registry

    conformance.check_declared(get_registry().get("tokenizer", "dualvitok").provides, tiny())
