"""Adversarial training pieces shared by the pixel tokenizers (DualViTok, VQGAN).

A PatchGAN discriminator (pix2pix / taming-transformers ``NLayerDiscriminator``: a stack of
stride-2 4x4 convs whose output is a map of real/fake logits, one per receptive-field patch) and
the hinge losses used by VQGAN, LlamaGen and ILLUME+ (ndf 64, 3 layers, BatchNorm, hinge, weight
0.5 after a warm-up step count). The adaptive weight of Esser et al. (VQGAN, eq. 7) balances the
GAN gradient against the reconstruction gradient at the decoder's last layer; ILLUME+ turns it off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(32, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown discriminator norm {kind!r} (valid: batch, group, none)")


class PatchGANDiscriminator(nn.Module):
    """PatchGAN: images (B, C, H, W) in any fixed range -> logits (B, 1, h, w).

    ``width`` is ndf (channels of the first conv), ``n_layers`` the number of stride-2 convs after
    the first (receptive field 70 px for 3 layers). Channel width doubles per layer, capped at 8x.
    """

    def __init__(self, in_channels: int = 3, width: int = 64, n_layers: int = 3, norm: str = "batch"):
        super().__init__()
        use_bias = norm == "none"
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(width * prev, width * mult, 4, stride, 1, bias=use_bias),
                _norm(norm, width * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(width * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.main(images)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: 0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(G(z)))])."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss: -E[D(G(z))]."""
    return -logits_fake.mean()


def gan_active(step: int, start: int) -> bool:
    """Whether the adversarial terms are on at ``step`` (they start at ``start``)."""
    return step >= start


def adaptive_weight(
    rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4
) -> torch.Tensor:
    """VQGAN's lambda = ||grad_L(rec)|| / (||grad_L(gan)|| + 1e-4) at the decoder's last layer L.

    Both losses must still be attached to the graph through ``last_layer``; the result is detached.
    Falls back to 1 when there is no graph (e.g. under ``torch.no_grad``).
    """
    if not (rec_loss.requires_grad and g_loss.requires_grad):
        return torch.ones((), device=rec_loss.device)
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (g_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()
