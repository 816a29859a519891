"""The diffusion detokenizer on a fake tokenizer: shapes, guidance, seeding, schedulers, learning, folders."""

import json

import pytest
import torch

from illume_kit.plugins.decoders.diffusion import DiffusionDetokenizer
from illume_kit.plugins.decoders.params import DIFFUSION_PRESETS
from illume_kit.testing.fakes import FakeTokenizer


@pytest.fixture(scope="module")
def tok():
    return FakeTokenizer()


@pytest.fixture(scope="module")
def codes(tok):
    torch.manual_seed(0)
    return tok.encode(torch.rand(2, 3, 32, 32)).codes  # semantic 2x2 (stride 16), pixel 4x4 (stride 8)


def make(tok, **params):
    torch.manual_seed(0)
    det = DiffusionDetokenizer(DiffusionDetokenizer.Params(**params))
    det.attach(tok)
    return det


def fit(det, images, codes, steps: int, lr: float = 3e-3) -> None:
    """AdamW on the detokenizer's own loss (leaves it in train mode)."""
    opt = torch.optim.AdamW(det.parameters(), lr=lr)
    det.train()
    for _ in range(steps):
        loss = det.loss(images, codes)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("scale", [1, 2])
def test_output_is_scale_times_the_codes_pixel_size(tok, codes, scale):
    det = make(tok, output_scale=scale)
    out = det.decode(codes, steps=2, seed=0)
    assert out.shape == (2, 3, 32 * scale, 32 * scale)
    assert out.min() >= 0 and out.max() <= 1
    assert det.output_scale == scale and det.consumes == ("semantic", "pixel")


def test_unet_input_is_sized_from_the_codebooks_and_tokenizer_is_not_owned(tok):
    det = make(tok)
    assert det.denoiser.config.in_channels == 3 * 4 * 4 + 4 + 6  # unshuffled pixels + both code dims
    assert not any(k.startswith(("_tokenizer", "table_", "out.")) for k in det.state_dict())
    only_sem = make(tok, consumes=["semantic"])
    assert only_sem.denoiser.config.in_channels == 48 + 4


def test_guidance_one_is_exactly_no_guidance(tok, codes):
    det = make(tok)
    batches = []
    det.denoiser.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    plain = det.decode(codes, steps=3, guidance=1.0, seed=0)
    assert batches == [2, 2, 2]  # conditional rows only: no unconditional branch mixed in
    batches.clear()
    guided = det.decode(codes, steps=3, guidance=3.0, seed=0)
    assert batches == [4, 4, 4]  # conditional + all-zero-map rows in one forward
    assert not torch.allclose(plain, guided)
    rescaled = det.decode(codes, steps=3, guidance=3.0, guidance_rescale=0.7, seed=0)
    assert not torch.allclose(rescaled, guided)


def test_fixed_seed_reproduces_exactly(tok, codes):
    det = make(tok, scheduler="ddpm")  # ddpm also draws noise inside every step
    a = det.decode(codes, steps=3, seed=7)
    b = det.decode(codes, steps=3, generator=torch.Generator().manual_seed(7))
    c = det.decode(codes, steps=3, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("scheduler", ["ddpm", "ddim", "euler", "dpm-solver++", "unipc", "flow-match-euler"])
def test_each_scheduler_samples_and_trains(tok, codes, scheduler):
    det = make(tok, scheduler=scheduler, num_inference_steps=2)
    out = det.decode(codes, seed=0)
    assert out.shape == (2, 3, 64, 64) and torch.isfinite(out).all()
    loss = det.loss(torch.rand(2, 3, 64, 64), codes)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and det.denoiser.conv_in.weight.grad is not None


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("scheduler", ["dpm-solver++", "unipc"])
def test_multistep_solvers_decode_every_prediction_type(tok, codes, scheduler, prediction_type):
    det = make(tok, scheduler=scheduler, prediction_type=prediction_type)
    for name in (None, "ddim"):  # its own, and DDIM from the same params at decode time
        out = det.decode(codes, steps=4, seed=0, scheduler=name)
        assert out.shape == (2, 3, 64, 64) and torch.isfinite(out).all()
    assert not torch.equal(det.decode(codes, steps=4, seed=0), out)  # the solver differs from DDIM


def test_v_prediction_target(tok, codes):
    det = make(tok, prediction_type="v_prediction", scheduler="euler")
    assert torch.isfinite(det.loss(torch.rand(2, 3, 64, 64), codes)["loss"])


def test_training_overfits_a_few_images(tok):
    torch.manual_seed(0)
    images = torch.rand(4, 3, 8, 8).repeat_interleave(4, -1).repeat_interleave(4, -2)  # 4 blocky 32x32
    images = images.repeat(4, 1, 1, 1)  # 4 noise draws per image and step: a steadier descent
    codes = tok.encode(images).codes
    det = make(tok, output_scale=1, cond_drop_prob=0.0)

    def held_out_loss():
        det.eval()
        with torch.no_grad():
            return (
                sum(det.loss(images, codes, generator=torch.Generator().manual_seed(s))["loss"] for s in range(4)) / 4
            )

    before = held_out_loss()
    fit(det, images, codes, steps=30)
    after = held_out_loss()
    assert after < 0.85 * before, (before, after)


def test_condition_dropout_zeroes_maps_only_in_training(tok, codes):
    det = make(tok, cond_drop_prob=0.5)
    seen = []
    det.denoiser.register_forward_pre_hook(lambda m, args: seen.append(args[0][:, 48:].abs().flatten(1).sum(1)))
    images = torch.rand(2, 3, 64, 64)
    det.train()
    for s in range(6):
        det.loss(images, codes, generator=torch.Generator().manual_seed(s))
    assert any((m == 0).any() for m in seen)
    seen.clear()
    det.eval()
    det.loss(images, codes, generator=torch.Generator().manual_seed(0))
    assert (seen[0] > 0).all()


def test_diffusers_folder_round_trip(tok, codes, tmp_path):
    from diffusers import UNet2DModel

    det = make(tok)
    with torch.no_grad():
        for p in det.denoiser.parameters():
            p.add_(0.01 * torch.randn_like(p))  # differ from any fresh init
    det.save_pretrained(tmp_path)
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert json.loads((tmp_path / "unet" / "config.json").read_text())["_class_name"] == "UNet2DModel"
    UNet2DModel.from_pretrained(tmp_path / "unet")  # a native diffusers folder
    again = make(tok, pretrained=str(tmp_path))  # loaded at attach
    assert torch.equal(det.decode(codes, steps=3, seed=1), again.decode(codes, steps=3, seed=1))
    other = make(tok, consumes=["semantic"])
    with pytest.raises(ValueError, match="in/out channels"):
        other.load_pretrained(tmp_path)


def test_semantic_only_tokenizer_decodes_from_its_own_stride(codes):
    sem = FakeTokenizer(semantic_only=True)
    det = make(sem)
    out = det.decode({"semantic": codes["semantic"]}, steps=2, seed=0)
    assert out.shape == (2, 3, 64, 64)  # 2x2 codes at stride 16 = 32 px, x2


def test_latent_space_preset(tok, codes):
    det = make(tok, **DIFFUSION_PRESETS["tiny-latent"], output_scale=1)
    assert det.space.stride == 2 and det.denoiser.config.in_channels == 4 + 10
    assert det.decode(codes, steps=2, seed=0).shape == (2, 3, 32, 32)
    assert torch.isfinite(det.loss(torch.rand(2, 3, 32, 32), codes)["loss"])
    assert not any(p.requires_grad for p in det.space.parameters())  # the VAE is frozen


def test_clear_errors(tok, codes):
    with pytest.raises(ValueError, match="codebooks of this tokenizer"):
        make(tok, consumes=["smantic"])
    with pytest.raises(ValueError, match="not one the diffusion detokenizer knows"):
        make(tok, output_sizes=[[128, 128]]).decode(codes, steps=1)
    with pytest.raises(ValueError, match="output resolution"):
        make(tok).loss(torch.rand(2, 3, 32, 32), codes)
    with pytest.raises(RuntimeError, match="attach"):
        DiffusionDetokenizer().decode(codes)
    with pytest.raises(TypeError):
        make(tok).decode(codes, temperature=1.0)


@pytest.mark.slow
def test_sdxl_like_is_illume_plus_size_class():
    tok = FakeTokenizer(semantic=(16, 32, 32), pixel=(32, 32, 16))  # 64 code channels, as DualViTok
    with torch.device("meta"):
        det = DiffusionDetokenizer(DiffusionDetokenizer.Params(**DIFFUSION_PRESETS["sdxl-like"]))
        det.attach(tok)
    assert det.denoiser.config.in_channels == 68  # 4 latent + 64 code channels (ILLUME+ §4)
    assert 2.4e9 < sum(p.numel() for p in det.denoiser.parameters()) < 2.8e9


def test_sampling_reconstructs_after_training_on_clean_sample_target(tok):
    """The sampler, not only the loss: after a short fit, decoded images get closer to the originals.

    (An epsilon-predicting tiny UNet that cannot carry the noise channels through its first block
    trains to a flat loss and samples noise; `prediction_type: sample` is what the tiny recipes use.)
    """
    from illume_kit.eval.metrics import psnr

    torch.manual_seed(0)
    # flat 8x8 patches: the pixel codes (stride 8) carry what each patch looks like
    images = torch.rand(4, 3, 4, 4).repeat_interleave(8, -1).repeat_interleave(8, -2)
    codes = tok.encode(images).codes
    det = make(
        tok, output_scale=1, cond_drop_prob=0.0, prediction_type="sample", scheduler="ddim", block_out_channels=[64, 64]
    )
    det.eval()
    before = float(psnr(images, det.decode(codes, steps=10, guidance=1.0, seed=0)).mean())
    fit(det, images, codes, steps=80)
    det.eval()
    after = float(psnr(images, det.decode(codes, steps=10, guidance=1.0, seed=0)).mean())
    assert after > before + 3.0, (before, after)
    # the same trained UNet through the multistep solvers at 10 steps: as good as 50 DDIM steps, and
    # close to their very samples (solvers built from another beta schedule land ~31 dB from them)
    ref = det.decode(codes, steps=50, guidance=1.0, seed=0)
    ref_psnr = float(psnr(images, ref).mean())
    for scheduler in ("dpm-solver++", "unipc"):
        out = det.decode(codes, steps=10, guidance=1.0, seed=0, scheduler=scheduler)
        assert float(psnr(images, out).mean()) > ref_psnr - 0.5, scheduler
        assert float(psnr(ref, out).mean()) > 34.0, scheduler
