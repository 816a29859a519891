"""DualViTok training objective, the shared PatchGAN pieces, LPIPS loading, code-swap noise."""

from __future__ import annotations

import pytest
import torch

from illume_kit.plugins.tokenizers.dualvitok.loss import code_swap_noise
from illume_kit.plugins.tokenizers.dualvitok.model import DualViTok
from illume_kit.plugins.tokenizers.dualvitok.params import PRESETS
from illume_kit.plugins.tokenizers.gan import PatchGANDiscriminator, adaptive_weight, hinge_d_loss, hinge_g_loss


def tiny(**overrides) -> DualViTok:
    torch.manual_seed(0)
    return DualViTok(DualViTok.Params(**{**PRESETS["tiny"], **overrides}))


# --- gan.py -------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_patchgan_shapes(norm):
    d = PatchGANDiscriminator(3, width=8, n_layers=3, norm=norm)
    assert d(torch.rand(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    assert PatchGANDiscriminator(3, width=8, n_layers=2)(torch.rand(1, 3, 32, 32)).shape == (1, 1, 6, 6)


def test_hinge_losses():
    real, fake = torch.full((4,), 2.0), torch.full((4,), -2.0)
    assert hinge_d_loss(real, fake).item() == 0.0  # beyond the margins: nothing to learn
    assert hinge_d_loss(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(1.0)
    assert hinge_g_loss(torch.tensor([1.0, 3.0])).item() == -2.0


def test_adaptive_weight_is_grad_norm_ratio():
    w = torch.ones(3, requires_grad=True)
    rec, g = (w * 2).sum(), (w * 0.5).sum()  # grads 2 and 0.5 per element
    assert adaptive_weight(rec, g, w).item() == pytest.approx(4.0, rel=1e-3)
    with torch.no_grad():
        assert adaptive_weight(w.sum(), w.sum(), w).item() == 1.0


# --- loss ---------------------------------------------------------------------------------------
def test_generator_loss_parts_and_gradients():
    model = tiny().train()
    out = model.loss(torch.rand(2, 3, 64, 64), step=0)
    assert set(out) == {"loss", "pixel_rec", "pixel_vq", "semantic_vq", "semantic_rec"}  # GAN not on yet
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.values())
    p = model.params
    expected = out["pixel_rec"] + out["pixel_vq"] + p.semantic_weight * (out["semantic_vq"] + out["semantic_rec"])
    assert torch.allclose(out["loss"].detach(), expected)
    out["loss"].backward()
    for name in (
        "semantic_encoder.blocks.0.attn.qkv.weight",
        "semantic_decoder.proj_out.0.weight",
        "pixel_encoder.conv_in.weight",
        "pixel_decoder.conv_out.weight",
        "pixel_quantizer.vq.code_transform.weight",
        "semantic_quantizer.vq.code_transform.weight",
    ):
        assert model.get_parameter(name).grad is not None, name
    assert all(q.grad is None for q in model.semantic_encoder.model.parameters())
    generator = {id(q) for q in model.generator_parameters()}
    assert not any(id(q) in generator for q in model.discriminator.parameters())
    assert generator == {id(q) for n, q in model.named_parameters() if q.requires_grad and "discriminator" not in n}


def test_gan_alternation():
    model = tiny(disc_start=5).train()
    images = torch.rand(2, 3, 64, 64)
    assert not model.discriminator_active(4) and model.discriminator_active(5)
    before = model.discriminator_loss(images, step=0)
    before["loss"].backward()  # valid no-op before the start step
    assert all(q.grad is None or q.grad.abs().sum() == 0 for q in model.discriminator.parameters())

    gen = model.loss(images, step=5)
    assert "gan_g" in gen
    gen["loss"].backward()
    assert all(q.grad is None or q.grad.abs().sum() == 0 for q in model.discriminator.parameters())

    calls = []
    original = model.forward_train
    model.forward_train = lambda x: calls.append(1) or original(x)
    disc = model.discriminator_loss(images, step=5)  # reuses the reconstructions of the same batch
    assert not calls and disc["loss"].item() == pytest.approx(0.1 * disc["d_loss"].item())
    disc["loss"].backward()
    assert all(q.grad is not None for q in model.discriminator.parameters())
    model.discriminator_loss(torch.rand(2, 3, 64, 64), step=5)  # another batch: recomputed
    assert calls == [1]


def test_adaptive_gan_weight_and_no_discriminator():
    model = tiny(disc_start=0, adaptive_disc_weight=True).train()
    out = model.loss(torch.rand(2, 3, 64, 64), step=0)
    assert out["gan_weight"] > 0
    bare = tiny(disc_weight=0.0)
    assert bare.discriminator is None and list(bare.discriminator_parameters()) == []
    assert not any(k.startswith("discriminator") for k in bare.state_dict())
    with pytest.raises(RuntimeError, match="no discriminator"):
        bare.discriminator_loss(torch.rand(1, 3, 64, 64), step=10**6)


def test_perceptual_path_with_random_weights_stays_out_of_state_dict():
    model = tiny(perceptual_weight=1.0, perceptual_weights="random").train()
    with pytest.warns(UserWarning, match="perceptual_weights: random"):
        out = model.loss(torch.rand(1, 3, 64, 64), step=0)
    assert out["perceptual"] > 0
    out["loss"].backward()
    assert not any("vgg" in k or "lpips" in k for k in model.state_dict())
    assert model.pixel_decoder.conv_out.weight.grad is not None


def test_lpips_reads_upstream_key_names(tmp_path):
    from safetensors.torch import save_file

    from illume_kit.plugins.tokenizers.dualvitok.perceptual import LPIPS

    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="random"):
        source = LPIPS("random")
    upstream = {}
    for k, v in source.state_dict().items():
        if k.startswith("vgg."):
            upstream["features." + k[4:]] = v.clone()  # torchvision vgg16 names
        else:
            upstream[f"lin{k.split('.')[1]}.model.1.weight"] = v.clone()  # lpips package names
    save_file(upstream, tmp_path / "lpips_vgg.safetensors")
    loaded = LPIPS(str(tmp_path / "lpips_vgg.safetensors"))
    x, y = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.allclose(loaded(x, y), source(x, y))
    assert loaded(x, x).item() == pytest.approx(0.0, abs=1e-6) and loaded(x, y) > 0


def test_code_swap_noise_rates():
    torch.manual_seed(0)
    q = torch.randn(64, 4, 8, 8)
    assert torch.equal(code_swap_noise(q, 0.0, 1.0, "random"), q)
    assert torch.equal(code_swap_noise(q, 1.0, 0.0, "random"), q)
    swapped = code_swap_noise(q, 0.5, 0.5, "random")
    changed = (swapped != q).any(1)  # (B, h, w)
    per_sample = changed.flatten(1).float().mean(1)
    assert 0.2 < (per_sample > 0).float().mean() < 0.8  # about half the samples are noised
    assert 0.35 < per_sample[per_sample > 0].mean() < 0.65  # about half their positions
    assert torch.equal(swapped[changed.unsqueeze(1).expand_as(q)], q.roll(1, 0)[changed.unsqueeze(1).expand_as(q)])
    assert (code_swap_noise(q, 1.0, 1.0, "zero") == 0).all()


def test_perceptual_weights_unset_is_an_error_naming_the_param():
    model = tiny(perceptual_weight=1.0).train()  # builds and loads: the choice is checked when the loss is built
    with pytest.raises(ValueError, match=r"perceptual_weights: not set.*perceptual_weights: random"):
        model.loss(torch.rand(1, 3, 64, 64), step=0)
    missing = tiny(perceptual_weight=1.0, perceptual_weights="/nonexistent/lpips.safetensors").train()
    with pytest.raises(FileNotFoundError, match="perceptual_weights: /nonexistent/lpips.safetensors is not a file"):
        missing.loss(torch.rand(1, 3, 64, 64), step=0)


def test_lpips_matches_the_lpips_package_on_the_same_weights(tmp_path):
    """The lpips package's own VGG LPIPS (its linear heads from the wheel, a random VGG) and this module
    loaded from its saved state dict measure the same distance."""
    lpips = pytest.importorskip("lpips")
    from illume_kit.plugins.tokenizers.dualvitok.perceptual import LPIPS, lpips_key_map

    torch.manual_seed(0)
    ref = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
    state = ref.state_dict()
    ours_keys = set(lpips_key_map(state))
    with pytest.warns(UserWarning):
        assert ours_keys == set(LPIPS("random").state_dict())
    torch.save(state, tmp_path / "lpips_package_vgg.pt")  # its lins.<k> alias lin<k>: safetensors refuses it
    ours = LPIPS(str(tmp_path / "lpips_package_vgg.pt"))
    assert torch.equal(ours.lin[2].weight, ref.lin2.model[1].weight)  # the wheel's calibrated heads, not ones
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 48, 48, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(3, 3, 48, 48, generator=g)).clamp(-1, 1)
    with torch.no_grad():
        expected = ref(x, y).mean()
        got = ours(x, y)
        assert expected > 1e-3  # the comparison below is not between two zeros
        assert abs(float(got) - float(expected)) < 1e-5
        per_sample = torch.stack([ours(x[i : i + 1], y[i : i + 1]) for i in range(3)])
        assert torch.allclose(per_sample, ref(x, y).flatten(), atol=1e-5)
        assert float(ours(x, x)) == 0.0 and float(ref(x, x).sum()) == 0.0
