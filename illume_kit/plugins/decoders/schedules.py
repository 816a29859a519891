"""Noise schedules for the diffusion detokenizer: diffusers schedulers plus their training targets.

Sampling uses diffusers' schedulers as they are. Training needs the forward process and the target
that matches what the sampler expects the UNet to predict:
- ``ddpm`` / ``ddim`` / ``euler`` / ``dpm-solver++`` / ``unipc`` share one variance-preserving
  process (the same betas), so a UNet trained once samples with any of them. Noising and the v target
  come from diffusers' ``DDPMScheduler.add_noise`` / ``get_velocity``; Euler's ``scale_model_input``
  maps its sigma-space sample back to exactly that x_t, so the UNet sees the same inputs.
  DPM-Solver++ (``DPMSolverMultistepScheduler``, ``algorithm_type="dpmsolver++"``) and UniPC
  (``UniPCMultistepScheduler``) are multistep solvers of the same ODE DDIM follows: they reuse the
  last predictions, so 10-20 steps come close to what DDIM needs 50 for.
- ``flow-match-euler`` is rectified flow (SD3): x_t = (1 - s) x0 + s noise, target noise - x0, UNet
  timestep s * num_train_timesteps, s drawn uniformly then shifted like the sampler's sigmas.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor


def make_scheduler(p: Any, pixel_space: bool, name: str | None = None) -> Any:
    """A fresh sampling scheduler (they are stateful) for ``DiffusionDetokenizerParams`` ``p``.

    ``name`` samples with another scheduler than ``p.scheduler`` (one of the same training family,
    ``params.sampling_schedulers``), built from the same fields and ``scheduler_config``: the noise
    schedule the UNet was trained on. ``p.scheduler_config`` goes over the kwargs built from the
    fields; keys the scheduler class does not take are dropped, as diffusers' ``from_config`` drops
    them (a pipeline folder's config carries keys of other scheduler classes).

    In pixel space the predicted clean sample is clipped to [-1, 1] at every step: ``clip_sample``
    for ddpm/ddim, dynamic thresholding capped at 1 (which is that clip) for the multistep solvers.
    """
    import inspect

    from diffusers import (
        DDIMScheduler,
        DDPMScheduler,
        DPMSolverMultistepScheduler,
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
        UniPCMultistepScheduler,
    )

    from illume_kit.plugins.decoders.params import check_sampling_scheduler

    name = p.scheduler if name is None else check_sampling_scheduler(p.scheduler, name)
    classes = {
        "ddpm": DDPMScheduler,
        "ddim": DDIMScheduler,
        "euler": EulerDiscreteScheduler,
        "dpm-solver++": DPMSolverMultistepScheduler,
        "unipc": UniPCMultistepScheduler,
        "flow-match-euler": FlowMatchEulerDiscreteScheduler,
    }
    if name == "flow-match-euler":
        kwargs: dict[str, Any] = dict(num_train_timesteps=p.num_train_timesteps, shift=p.flow_shift)
    else:
        kwargs = dict(
            num_train_timesteps=p.num_train_timesteps,
            beta_schedule=p.beta_schedule,
            beta_start=p.beta_start,
            beta_end=p.beta_end,
            prediction_type=p.prediction_type,
            timestep_spacing="trailing",  # few-step sampling starts from pure noise
        )
        if name in ("ddpm", "ddim"):
            kwargs["clip_sample"] = pixel_space
        elif name in ("dpm-solver++", "unipc"):
            clip = bool(p.scheduler_config.get("clip_sample", pixel_space))
            kwargs |= dict(thresholding=clip, sample_max_value=1.0)
            if name == "dpm-solver++":
                kwargs["algorithm_type"] = "dpmsolver++"
    kwargs |= dict(p.scheduler_config)
    cls = classes[name]
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in kwargs.items() if k in accepted})


class TrainingProcess:
    """Draws (x_t, timestep, target) for one batch of clean samples ``x0``."""

    def __init__(self, p: Any) -> None:
        from diffusers import DDPMScheduler

        self.flow = p.scheduler == "flow-match-euler"
        self.T = p.num_train_timesteps
        self.shift = p.flow_shift
        self.ddpm = None
        if not self.flow:
            self.ddpm = DDPMScheduler(
                num_train_timesteps=p.num_train_timesteps,
                beta_schedule=p.beta_schedule,
                beta_start=p.beta_start,
                beta_end=p.beta_end,
                prediction_type=p.prediction_type,
            )

    def __call__(
        self, x0: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, dev = x0.shape[0], x0.device
        noise = randn_tensor(x0.shape, generator=generator, device=dev, dtype=x0.dtype)
        if self.flow:
            u = torch.rand(b, generator=generator).to(dev)
            s = self.shift * u / (1 + (self.shift - 1) * u)
            s_ = s.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
            return (1 - s_) * x0 + s_ * noise, s * self.T, noise - x0
        t = torch.randint(0, self.T, (b,), generator=generator).to(dev)
        xt = self.ddpm.add_noise(x0, noise, t)
        kind = self.ddpm.config.prediction_type
        target = {"epsilon": noise, "sample": x0}.get(kind)
        if target is None:
            target = self.ddpm.get_velocity(x0, noise, t)
        return xt, t, target
