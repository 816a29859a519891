import pytest
import torch
from pydantic import ValidationError

from illume_kit.core.protocols import VisualTokenizer
from illume_kit.core.registry import import_target
from illume_kit.data.params import ShapesParams
from illume_kit.data.shapes import ShapesDataset
from illume_kit.plugins.tokenizers.vqgan.model import VQGAN
from illume_kit.plugins.tokenizers.vqgan.params import PRESETS, VQGANParams
from illume_kit.testing import conformance


def tiny(**kw):
    torch.manual_seed(0)
    return VQGAN(VQGANParams(**{**PRESETS["tiny"], **kw}))


def shapes_batch(n=4, size=32):
    ds = ShapesDataset(ShapesParams(num_samples=n, image_size=size, edits=False))
    return torch.stack([ds[i]["image"] for i in range(n)])


def test_registry_record_resolves():
    from importlib import resources

    import yaml

    rec = yaml.safe_load(resources.files("illume_kit").joinpath("registry.yaml").read_text())["tokenizer"]["vqgan"]
    assert import_target(rec["target"]) is VQGAN and import_target(rec["params"]) is VQGANParams
    presets = import_target(rec["presets"])
    assert {"tiny", "official"} <= set(presets)
    for values in presets.values():
        VQGANParams(**values)


def test_official_size_matches_llamagen_vq16():
    with torch.device("meta"):
        m = VQGAN(VQGANParams(**PRESETS["official"]))
    n = sum(p.numel() for p in m.generator_parameters())
    assert 70e6 < n < 74e6, n  # LlamaGen VQ-16: 72M
    (spec,) = m.codebooks
    assert (spec.name, spec.size, spec.code_dim, spec.stride, spec.feature_dim) == ("pixel", 16384, 8, 16, 256)


def test_contract_shapes_any_size_and_ranges():
    m = tiny().eval()
    assert isinstance(m, VisualTokenizer) and m.has_pixel_decoder
    x = torch.rand(2, 3, 32, 48)
    assert m.grid(32, 48) == {"pixel": (4, 6)}  # tiny: stride 8
    out = m.encode(x)
    codes = out.codes["pixel"]
    assert codes.shape == (2, 4, 6) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < m.codebooks[0].size
    assert out.features["pixel"].shape == (2, 4, 6, 64)
    assert out.quantized["pixel"].shape == (2, 8, 4, 6) and out.losses["vq"].ndim == 0
    img = m.decode(out.codes)
    assert img.shape == (2, 3, 32, 48) and 0 <= img.min() and img.max() <= 1
    # decoding the codes reproduces decoding the quantized map
    ref = ((m.decode_quantized(out.quantized["pixel"]) + 1) / 2).clamp(0, 1)
    assert torch.allclose(img, ref, atol=1e-5)


@pytest.mark.parametrize("hw", [(36, 32), (32, 4), (0, 16)])
def test_grid_rejects_non_multiples(hw):
    with pytest.raises(ValueError, match="multiples of 8"):
        tiny().grid(*hw)
    if hw[0] > 0:
        with pytest.raises(ValueError, match="multiples of 8"):
            tiny().encode(torch.rand(1, 3, *hw))


def test_overfits_a_few_shapes_images():
    m = tiny(disc_weight=0.0)
    assert m.discriminator is None
    x = shapes_batch(4, 32)
    opt = torch.optim.Adam(m.generator_parameters(), lr=2e-3)
    losses, psnr = [], []
    for step in range(50):
        out = m.loss(x, step)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
        psnr.append(out["psnr"].item())
    assert sum(losses[-5:]) / 5 < 0.4 * sum(losses[:5]) / 5, losses
    assert psnr[-1] > psnr[0] + 5, psnr


def test_gan_terms_switch_on_and_train_only_the_discriminator():
    m = tiny(disc_start=10, disc_weight=0.5)
    x = shapes_batch(2, 32)
    assert "g_loss" not in m.loss(x, step=9)
    d0 = m.discriminator_loss(x, step=9)["loss"]
    assert d0.item() == 0.0 and d0.requires_grad  # backward-able, touches nothing
    out = m.loss(x, step=10)
    assert "g_loss" in out and torch.isfinite(out["loss"])
    m.zero_grad()
    d = m.discriminator_loss(x, step=10)
    d["loss"].backward()
    assert all(p.grad is None for p in m.generator_parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.discriminator_parameters())
    gen, disc = set(map(id, m.generator_parameters())), set(map(id, m.discriminator_parameters()))
    assert not gen & disc and len(gen) + len(disc) == len(list(m.parameters()))


def test_adaptive_weight_and_l1_options_run():
    m = tiny(disc_start=0, adaptive_disc_weight=True, recon_loss="l1")
    out = m.loss(shapes_batch(2, 32))
    assert out["disc_adaptive_weight"] > 0 and torch.isfinite(out["loss"])


def test_other_quantizer_from_registry():
    m = tiny(quantizer={"name": "fsq", "params": {"levels": [4, 4, 4]}})
    assert m.codebooks[0].size == 64
    codes = m.eval().encode(torch.rand(1, 3, 16, 16)).codes["pixel"]
    assert codes.shape == (1, 2, 2) and codes.max() < 64


def test_params_validation():
    with pytest.raises(ValidationError, match="norm_groups"):
        VQGANParams(channels=24, norm_groups=32)
    with pytest.raises(ValidationError, match="code_dim"):
        VQGANParams(quantizer={"name": "vq", "params": {"dim": 16}})
    with pytest.raises(ValidationError):
        VQGANParams(codebook_size=10)
    assert VQGANParams(**PRESETS["tiny"]).stride == 8


@conformance.parametrize("tokenizer")
def test_conformance(check):
    check(lambda: tiny())


def test_registry_record_declares_what_the_tokenizer_provides():
    from illume_kit.core.plugins import get_registry

    conformance.check_declared(get_registry().get("tokenizer", "vqgan").provides, tiny())
