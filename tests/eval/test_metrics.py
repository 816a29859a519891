import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from illume_kit.eval.metrics import (
    CodebookStats,
    code_perplexity,
    codebook_usage,
    psnr,
    quantize_uint8,
    reconstruction_metrics,
    semantic_cosine,
    ssim,
)
from illume_kit.eval.specs import BUILTIN_METRICS, MetricSpec, metric_spec


def pair(b=3, c=3, h=32, w=40, noise=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, h, w, generator=g)
    y = (x + noise * torch.randn(b, c, h, w, generator=g)).clamp(0, 1)
    return x, y


def sk(t):  # (C, H, W) -> (H, W, C) float64 numpy
    return t.permute(1, 2, 0).double().numpy()


@pytest.mark.parametrize("noise", [0.02, 0.1, 0.3])
def test_psnr_matches_skimage(noise):
    x, y = pair(noise=noise)
    got = psnr(x, y)
    want = [peak_signal_noise_ratio(sk(a), sk(b), data_range=1.0) for a, b in zip(x, y)]
    assert got.shape == (3,)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-3)
    assert math.isinf(float(psnr(x, x)[0]))


@pytest.mark.parametrize("noise,c,data_range", [(0.02, 3, 1.0), (0.1, 3, 1.0), (0.3, 1, 1.0), (0.1, 3, 2.0)])
def test_ssim_matches_skimage_gaussian(noise, c, data_range):
    x, y = pair(c=c, noise=noise, seed=1)
    got = ssim(x, y, data_range=data_range)
    want = [
        structural_similarity(
            sk(a),
            sk(b),
            data_range=data_range,
            channel_axis=-1,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        for a, b in zip(x, y)
    ]
    np.testing.assert_allclose(got.numpy(), want, atol=1e-3)
    assert torch.allclose(ssim(x, x), torch.ones(3), atol=1e-5)


def test_ssim_on_a_smooth_real_image():
    from skimage import data

    img = torch.from_numpy(data.astronaut()[::8, ::8].copy()).permute(2, 0, 1)[None].float() / 255
    blurred = torch.nn.functional.avg_pool2d(img, 3, stride=1, padding=1, count_include_pad=False)
    want = structural_similarity(
        sk(img[0]),
        sk(blurred[0]),
        data_range=1.0,
        channel_axis=-1,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert float(ssim(img, blurred)[0]) == pytest.approx(want, abs=1e-3)
    assert want < 0.95  # the blur is visible, so the comparison is not trivially 1 == 1


def test_shape_errors():
    x, y = pair()
    with pytest.raises(ValueError, match="differ"):
        psnr(x, y[:, :, :-1])
    with pytest.raises(ValueError, match="smaller than"):
        ssim(x[..., :8, :8], y[..., :8, :8])


def test_reconstruction_metrics_quantize_like_the_published_protocol():
    x, y = pair(noise=0.05)
    x = quantize_uint8(x)
    m = reconstruction_metrics(x, y, quantize=True)
    assert set(m) == {"rec/psnr", "rec/mae", "rec/mse", "rec/ssim", "rec/ssim2"}
    assert torch.allclose(m["rec/psnr"], psnr(x, quantize_uint8(y)))
    assert not torch.allclose(m["rec/psnr"], psnr(x, y))
    assert (m["rec/ssim2"] > m["rec/ssim"]).all()  # larger data_range -> larger constants -> higher SSIM
    assert "rec/ssim" not in reconstruction_metrics(x[..., :8, :8], y[..., :8, :8])


def test_codebook_usage_and_perplexity():
    assert codebook_usage(torch.tensor([0, 1, 1, 3]), 8) == 0.375
    assert code_perplexity(torch.arange(16).repeat(5), 16) == pytest.approx(16.0)
    assert code_perplexity(torch.zeros(50, dtype=torch.long), 16) == pytest.approx(1.0)
    # two codes with p = 3/4, 1/4
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert code_perplexity(torch.tensor([2, 2, 2, 5]), 8) == pytest.approx(math.exp(h))
    stats = CodebookStats(10, name="pixel")
    stats.update(torch.tensor([[0, 1], [1, 2]])).update(torch.tensor([9]))
    assert stats.total == 5 and stats.usage == 0.4
    assert stats.as_metrics()["code/usage/pixel"] == 0.4
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        stats.update(torch.tensor([10]))


def test_semantic_cosine():
    a = torch.randn(2, 5, 7)
    assert float(semantic_cosine(a, a)) == pytest.approx(1.0, abs=1e-6)
    assert float(semantic_cosine(a, -a)) == pytest.approx(-1.0, abs=1e-6)
    assert float(semantic_cosine(a, 3 * a)) == pytest.approx(1.0, abs=1e-6)
    b = torch.zeros_like(a)
    b[..., 0], a2 = 1.0, torch.zeros_like(a)
    a2[..., 1] = 1.0
    assert float(semantic_cosine(a2, b)) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        semantic_cosine(a, a[..., :3])


def test_metric_specs_goals_arrows_and_lookup():
    assert metric_spec("rec/psnr").goal == "max" and metric_spec("rec/mae").goal == "min"
    assert metric_spec("rec/psnr").arrow(25.0, 24.0) == "▲"
    assert metric_spec("rec/mae").arrow(0.05, 0.04) == "▼"
    assert metric_spec("rec/mae").compare(0.0400001, 0.04, tol=1e-3) == 0
    per_codebook = metric_spec("code/usage/semantic")
    assert per_codebook.name == "code/usage/semantic" and per_codebook.goal == "max"
    assert metric_spec("disc/loss").goal == "min"
    assert metric_spec("rec/psnr").format(23.456) == "23.46 dB"
    with pytest.raises(KeyError, match="rec/psnr"):
        metric_spec("rec/psrn")
    custom = MetricSpec("mine/score", "min")
    assert metric_spec("mine/score", extra={"mine/score": custom}) is custom
    with pytest.raises(ValueError):
        MetricSpec("x", "up")
    assert all(name == spec.name for name, spec in BUILTIN_METRICS.items())
    wanted = {"rec/psnr", "rec/ssim", "code/usage", "code/perplexity", "sem/cosine", "und/accuracy"}
    assert wanted <= set(BUILTIN_METRICS)


def test_specs_module_is_torch_free():
    import subprocess
    import sys

    code = "import sys, illume_kit.eval.specs; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
