"""Tiny models, data and step functions shared by the trainer tests (and the DDP launch script)."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset


def regression_data(n: int = 256, dim: int = 8, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, 1, generator=g)
    return TensorDataset(x, torch.tanh(x @ w / dim**0.5))


def mlp(dim: int = 8, hidden: int = 32, dropout: float = 0.0, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, 1))


def mse_step(model, batch, step):
    x, y = batch
    loss = ((model(x) - y) ** 2).mean()
    return {"loss": loss, "mse": loss.detach()}


def noisy_step(model, batch, step):
    """Uses every RNG a real step might: torch (dropout + noise), numpy and python."""
    x, y = batch
    x = x + 0.01 * torch.randn_like(x) + 1e-3 * float(np.random.rand()) + 1e-3 * random.random()
    loss = ((model(x) - y) ** 2).mean()
    return {"loss": loss}


class TinyAutoencoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(3, 8, 3, padding=1)
        self.dec = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        return torch.sigmoid(self.dec(torch.relu(self.enc(x))))


def tiny_disc() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(8, 1, 3, padding=1))


def image_data(n: int = 32, size: int = 8, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 3, size, size, generator=g))


def gan_steps(disc: nn.Module):
    """(step_fn, disc_step_fn) for a hinge-loss autoencoder GAN, closing over the raw ``disc``."""

    def step_fn(model, batch, step):
        (x,) = batch
        recon = model(x)
        rec = (recon - x).abs().mean()
        adv = -disc(recon).mean()
        return {"loss": rec + 0.1 * adv, "rec": rec, "adv": adv, "recon": recon}

    def disc_step_fn(d, batch, step, out):
        (x,) = batch
        real, fake = d(x), d(out["recon"])
        loss = torch.relu(1 - real).mean() + torch.relu(1 + fake).mean()
        return {"loss": loss}

    return step_fn, disc_step_fn
