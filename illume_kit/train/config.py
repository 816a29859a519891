"""Trainer settings (pydantic, torch-free).

One config shape for every component that trains (tokenizer, semantic teacher, MLLM stages,
diffusion decoder). Field names match the recipe's ``train.stages[*]`` entries
(``illume_kit.core.schema.Stage``), so a stage converts with ``TrainerConfig.from_stage(stage)``.
Torch-free because recipe validation and sweep expansion must not import torch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from illume_kit.core.schema import DEFAULT_LOGGERS, Ema, Parallelism, check_loggers


class TrainerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    steps: int = Field(100, ge=0, description="total optimisation steps (a resumed run continues up to this)")
    batch_size: int = Field(16, ge=1, description="batch size per process (global = batch_size * world size)")
    grad_accum_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(3e-4, gt=0, description="peak learning rate of the main group")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decay, applied to >=2-D weights only (not biases/norms)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    grad_clip: float | None = Field(1.0, description="max global grad norm per group (null: off)")
    warmup_steps: int = Field(0, ge=0, description="linear warmup from 0 to lr over this many steps")
    schedule: Literal["constant", "cosine"] = Field("cosine", description="lr after warmup: constant or cosine decay")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine floor as a fraction of lr")
    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints (0: only at the end)")
    keep_last: int = Field(1, ge=1, description="step checkpoints kept on disk (the newest is also `latest`)")
    log_every: int = Field(10, ge=1, description="steps between logged rows (metrics.jsonl, progress bar)")
    eval_every: int = Field(0, ge=0, description="steps between eval_fn calls (0: only at the end, if given)")
    seed: int = Field(0, description="seeds RNGs and the data order; the order is a function of (seed, step)")
    trainable: list[str] = Field(
        default_factory=list, description="parameter-name prefixes to train (empty: every parameter that requires grad)"
    )
    param_groups: list[dict[str, Any]] = Field(
        default_factory=list,
        description="[{match, from_layer, lr, weight_decay}]: per-group lr and decay, first match wins "
        "(``illume_kit.core.schema.ParamGroup``)",
    )
    parallelism: Parallelism = Field(
        default_factory=Parallelism,
        description="strategy (ddp | fsdp), precision, offload, activation checkpointing, compile "
        "(``illume_kit.core.schema.Parallelism``)",
    )
    ema: Ema | None = Field(
        None,
        description="{decay, start_step}: exponential moving average of the trained parameters, saved as the "
        "model's weights in checkpoints and used by eval_fn (``illume_kit.core.schema.Ema``); null: off",
    )
    loggers: list[str] = Field(
        default_factory=lambda: list(DEFAULT_LOGGERS),
        description="experiment loggers of the logged rows (``illume_kit.train.loggers``): jsonl (metrics.jsonl, "
        "always written when there is an output_dir), tensorboard, wandb",
    )
    num_workers: int = Field(0, ge=0, description="DataLoader workers (map-style datasets and streams)")
    prefetch_factor: int | None = Field(
        None, ge=1, description="batches each DataLoader worker loads ahead (null: torch's default; workers only)"
    )
    find_unused_parameters: bool = Field(False, description="DDP option, for models with branches unused per step")
    # second optimisation group (adversarial training: a PatchGAN discriminator)
    disc_lr: float | None = Field(None, description="discriminator lr (default: lr)")
    disc_betas: tuple[float, float] | None = Field(None, description="discriminator betas (default: betas)")
    disc_start: int = Field(0, ge=0, description="first step at which the discriminator is updated")

    @model_validator(mode="after")
    def _check(self) -> TrainerConfig:
        for b in (self.betas, self.disc_betas or self.betas):
            if not all(0.0 <= x < 1.0 for x in b):
                raise ValueError(f"betas must lie in [0, 1), got {b}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError("grad_clip must be > 0 or null")
        check_loggers(self.loggers)
        if self.ema is not None and self.parallelism.strategy == "fsdp":
            raise ValueError(
                "ema needs every rank to hold the full weights, and parallelism.strategy: fsdp shards them: "
                "use strategy ddp, or ema: null"
            )
        return self

    @classmethod
    def from_stage(cls, stage: Any, **overrides: Any) -> TrainerConfig:
        """Build from a recipe stage (any pydantic model or mapping); unknown keys are dropped."""
        data = stage.model_dump() if hasattr(stage, "model_dump") else dict(stage)
        data = {k: v for k, v in data.items() if k in cls.model_fields}
        return cls(**(data | overrides))
