"""DualViTok training objective (ILLUME+ ``vq_loss.py::DualViTokLoss``) and pixel-code noise.

Generator: recon_weight * MSE(x̂, x) + perceptual_weight * LPIPS + disc_weight * hinge_g (after
disc_start) + codebook_weight * pixel VQ loss + semantic_weight * (semantic VQ loss + (1 - cos) of
the decoded vs. normalised teacher features). Images are compared in [-1, 1], as the original.
Discriminator: disc_weight * hinge_d on real vs. the (detached) reconstructions of the last
generator step, so a trainer alternates ``loss`` and ``discriminator_loss`` on the same batch without
a second decoder pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.func import functional_call

from illume_kit.plugins.tokenizers.common.semantic import semantic_cosine_loss
from illume_kit.plugins.tokenizers.gan import adaptive_weight, gan_active, hinge_d_loss, hinge_g_loss

if TYPE_CHECKING:  # pragma: no cover
    from illume_kit.plugins.tokenizers.dualvitok.model import DualViTok


def code_swap_noise(q_pix: torch.Tensor, rate: float, batch_rate: float, kind: str) -> torch.Tensor:
    """ILLUME+'s ``apply_noise``: in a ``batch_rate`` fraction of samples, replace a ``rate`` fraction
    of pixel-code positions by the neighbouring sample's codes (``random``, roll by one, detached)
    or by zeros (``zero``). Teaches the decoder to survive wrong pixel tokens by leaning on semantics.
    """
    b, _, h, w = q_pix.shape
    noised = torch.rand(b, 1, 1, 1, device=q_pix.device) < batch_rate
    drop = (torch.rand(b, 1, h, w, device=q_pix.device) < rate) & noised
    other = torch.zeros_like(q_pix) if kind == "zero" else q_pix.roll(1, dims=0).detach()
    return torch.where(drop, other, q_pix)


def _no_grad_into(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run ``module`` with detached parameters: the generator loss must not train the discriminator."""
    params = {k: v.detach() for k, v in module.named_parameters()}
    return functional_call(module, params, (x,), strict=False)


def generator_loss(model: DualViTok, images: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
    p = model.params
    out = model.forward_train(images)
    x = images * 2 - 1
    rec = out["reconstruction"]
    parts = {
        "pixel_rec": F.mse_loss(rec.float(), x.float()),
        "pixel_vq": out["pixel_vq"],
        "semantic_vq": out["semantic_vq"],
        "semantic_rec": semantic_cosine_loss(out["semantic_decoded"], out["semantic_target"]),
    }
    total = (
        p.recon_weight * parts["pixel_rec"]
        + p.codebook_weight * parts["pixel_vq"]
        + p.semantic_weight
        * (p.semantic_codebook_weight * parts["semantic_vq"] + p.semantic_recon_weight * parts["semantic_rec"])
    )
    if p.perceptual_weight > 0:
        parts["perceptual"] = model.perceptual(rec, x)
        total = total + p.perceptual_weight * parts["perceptual"]
    if model.discriminator is not None and gan_active(step, p.disc_start):
        parts["gan_g"] = hinge_g_loss(_no_grad_into(model.discriminator, rec))
        weight = torch.tensor(p.disc_weight, device=rec.device)
        if p.adaptive_disc_weight:
            nll = p.recon_weight * parts["pixel_rec"] + p.perceptual_weight * parts.get("perceptual", 0.0)
            weight = weight * adaptive_weight(nll, parts["gan_g"], model.pixel_decoder.last_layer)
            parts["gan_weight"] = weight
        total = total + weight * parts["gan_g"]
    model._last_reconstruction = (images, rec.detach())
    return {"loss": total, **{k: v.detach() for k, v in parts.items()}}


def discriminator_loss(model: DualViTok, images: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
    disc = model.discriminator
    if disc is None:
        raise RuntimeError("this DualViTok has no discriminator (disc_weight is 0)")
    if not gan_active(step, model.params.disc_start):
        zero = sum(q.sum() * 0.0 for q in disc.parameters())  # keeps backward() valid, changes nothing
        return {"loss": zero}
    cached = model._last_reconstruction
    if cached is not None and cached[0] is images:
        fake = cached[1]
    else:
        with torch.no_grad():
            fake = model.forward_train(images)["reconstruction"]
    real_logits, fake_logits = disc(images * 2 - 1), disc(fake.detach())
    d_loss = hinge_d_loss(real_logits, fake_logits)
    return {
        "loss": model.params.disc_weight * d_loss,
        "d_loss": d_loss.detach(),
        "logits_real": real_logits.detach().mean(),
        "logits_fake": fake_logits.detach().mean(),
    }
