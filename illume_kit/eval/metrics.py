"""Offline metrics: the numbers an ablation can report without downloading Inception or VGG.

PSNR and SSIM follow the conventions fixed in ``reference/metrics_and_anchors.md`` §4: images in
[0, 1], ``data_range=1.0``, computed per image and then averaged; SSIM uses the Wang et al. (2004)
gaussian window (11 taps, sigma 1.5, population covariances) and matches
``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1.0, channel_axis=-1)``. LlamaGen and ILLUME+ publish SSIM
with ``data_range=2.0``; pass that to compare with their tables. The published PSNR protocol
quantises reconstructions to uint8 first (``quantize=True`` in ``reconstruction_metrics``).

Codebook usage and perplexity are counted over a whole eval set (``CodebookStats``): per-batch
perplexity depends on batch size and says little about collapse.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from illume_kit.eval.specs import BUILTIN_METRICS, MetricSpec, metric_spec  # noqa: F401  (re-exported)


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"image shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.ndim != 4:
        raise ValueError(f"expected (B, C, H, W) images, got shape {tuple(x.shape)}")


def quantize_uint8(x: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] images to the 256 levels a PNG would store (values stay in [0, 1])."""
    return (x.clamp(0, 1) * 255).round() / 255


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB, shape (B,); ``inf`` where the images are identical."""
    _check_pair(x, y)
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(data_range**2 / mse)).to(torch.float32)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1-D gaussian taps (what scipy's ``gaussian_filter`` uses with radius size//2)."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-0.5 * (r / sigma) ** 2)
    return w / w.sum()


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Per-image mean SSIM, shape (B,), averaged over channels and the valid (uncropped) region."""
    _check_pair(x, y)
    if win_size % 2 == 0:
        raise ValueError("win_size must be odd")
    if min(x.shape[-2:]) < win_size:
        raise ValueError(f"images of {tuple(x.shape[-2:])} are smaller than the {win_size}-pixel SSIM window")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x, y = x.to(dtype), y.to(dtype)
    c = x.shape[1]
    g = gaussian_window(win_size, sigma).to(dtype=dtype, device=x.device)
    wh = g.view(1, 1, 1, -1).expand(c, 1, 1, win_size)
    wv = g.view(1, 1, -1, 1).expand(c, 1, win_size, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable gaussian, 'valid' region, per channel
        return F.conv2d(F.conv2d(t, wh, groups=c), wv, groups=c)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1).to(torch.float32)


def reconstruction_metrics(
    originals: torch.Tensor, recons: torch.Tensor, quantize: bool = True
) -> dict[str, torch.Tensor]:
    """Per-image ``rec/*`` values for a batch (average over the eval set afterwards).

    ``quantize`` rounds reconstructions to uint8 levels first (the LlamaGen / ILLUME+ protocol).
    """
    r = quantize_uint8(recons) if quantize else recons.clamp(0, 1)
    o = originals.clamp(0, 1)
    out = {
        "rec/psnr": psnr(o, r),
        "rec/mae": (o - r).abs().flatten(1).mean(1),
        "rec/mse": (o - r).pow(2).flatten(1).mean(1),
    }
    if min(o.shape[-2:]) >= 11:
        out["rec/ssim"] = ssim(o, r)
        out["rec/ssim2"] = ssim(o, r, data_range=2.0)
    return out


def semantic_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity between two feature tensors along the last dim (a scalar)."""
    if a.shape != b.shape:
        raise ValueError(f"feature shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return F.cosine_similarity(a.float(), b.float(), dim=-1).mean()


class CodebookStats:
    """A running histogram of one codebook's codes over an eval set.

    ``update`` per batch, then read ``usage`` (fraction of codes used at least once),
    ``perplexity`` (exp of the histogram's entropy; the codebook size when usage is uniform) and
    ``entropy`` (nats). ``all_reduce`` sums histograms across DDP ranks.
    """

    def __init__(self, size: int, name: str = ""):
        if size < 1:
            raise ValueError("codebook size must be >= 1")
        self.size, self.name = size, name
        self.counts = torch.zeros(size, dtype=torch.long)

    def update(self, codes: torch.Tensor) -> CodebookStats:
        codes = codes.detach().reshape(-1).long().cpu()
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.size):
            raise ValueError(
                f"codebook {self.name or ''} codes must lie in [0, {self.size}), "
                f"got [{int(codes.min())}, {int(codes.max())}]"
            )
        self.counts += torch.bincount(codes, minlength=self.size)
        return self

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def usage(self) -> float:
        return float((self.counts > 0).sum()) / self.size

    @property
    def entropy(self) -> float:
        if self.total == 0:
            return 0.0
        p = self.counts[self.counts > 0].double() / self.total
        return float(-(p * p.log()).sum())

    @property
    def perplexity(self) -> float:
        return math.exp(self.entropy)

    def all_reduce(self) -> CodebookStats:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            t = self.counts.cuda() if dist.get_backend() == "nccl" else self.counts
            dist.all_reduce(t)
            self.counts = t.cpu()
        return self

    def as_metrics(self) -> dict[str, float]:
        suffix = f"/{self.name}" if self.name else ""
        return {f"code/usage{suffix}": self.usage, f"code/perplexity{suffix}": self.perplexity}


def codebook_usage(codes: torch.Tensor, size: int) -> float:
    """Unique codes in ``codes`` / ``size``."""
    return CodebookStats(size).update(codes).usage


def code_perplexity(codes: torch.Tensor, size: int) -> float:
    """exp(entropy) of the histogram of ``codes`` (1 for one code, ``size`` when uniform)."""
    return CodebookStats(size).update(codes).perplexity
