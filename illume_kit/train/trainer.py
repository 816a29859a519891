"""The one training loop every illume-kit component trains through.

A component supplies what differs — a ``step_fn(model, batch, step) -> {"loss": scalar, ...}`` and
its data — and gets the rest from here: AdamW with decay on matrices only, warmup + cosine/constant
lr, grad clipping, progress reports (``train.progress``), ``metrics.jsonl``, atomic checkpoints and
exact resume, and under ``torchrun`` DistributedDataParallel or FSDP2 sharding, with the precision,
activation checkpointing and compilation of ``config.parallelism`` (``train.parallel``).

Adversarial training (VQGAN / DualViTok pixel branch with a PatchGAN) adds a second group: a
``disc`` module and ``disc_step_fn(disc, batch, step, out)``. Each step first updates the model
with the discriminator frozen (``step_fn`` may call ``disc`` for its adversarial term), then,
from ``disc_start`` on, updates the discriminator on the model's outputs ``out`` (detached).

Gradient accumulation (``grad_accum_steps``): each optimizer step runs that many micro-batches of
``batch_size``, each loss weighted by its ``loss_weight`` output (what it averages over; 1 when
absent), then divides the summed gradients by the total weight and steps once. ``step_fn`` receives
the optimizer step as a ``StepIndex`` whose ``micro`` says which micro-batch it runs. Under DDP the
gradients are all-reduced on the last micro-batch only.

Exact resume: the data order is a function of (seed, step) (``train.data``), or for a streamed
(iterable) dataset the state of every rank's ``StatefulDataLoader``, and checkpoints hold weights,
optimizer and scheduler states, the step, every rank's RNG states (and loader states) and the last
logged row.
Stopping at step k and resuming to N gives bitwise the weights of an uninterrupted N-step run (on
CPU; on CUDA only with ``torch.use_deterministic_algorithms(True)``, since some kernels are not
deterministic). A resumed run first drops the ``metrics.jsonl`` rows logged after its checkpoint
(all of them when it has none), so every step is logged once.

EMA (``config.ema``): after each optimizer step an exponential moving average of the trained
parameters follows them (``_Ema``). Checkpoints save the average as the model's weights, ``eval_fn``
sees it, and a finished ``fit`` leaves it in the model; the trained weights themselves go into the
training state (``EMA_RAW``), so a resume continues them exactly. Under FSDP it is refused (the
config says so): the average needs the full weights on every rank.

Reproducible runs: on CPU the loop runs with ``torch.use_deterministic_algorithms(True)``
(``deterministic_kernels``), so two runs of the same command at the same torch thread count give
bitwise the same weights. Without it, the backward of an indexed read with repeated indices
(``weight[rows]``, e.g. the image row/column embeddings) accumulates with atomic float adds across
threads once it is large enough, in an order that changes from run to run. The thread count still
changes float sums (a run with 1 thread and one with 2 differ in the last bits, then further), so
checkpoints record it (``torch_threads`` in the training state).

Under DDP and FSDP the model is wrapped together with ``step_fn`` (``_StepModule``), so gradients
are synchronised, and FSDP's root parameters gathered, whatever method ``step_fn`` calls
(``model.loss(...)``, not only ``forward``). Several processes train one global batch: each rank's
loss weights are summed over ranks, so 2 ranks of batch 4 step as 1 process of batch 8 does
(``_global_weight``). Under FSDP checkpoints are sharded DCP folders (``train.state``), and a finished
``fit`` leaves ``model`` a plain module holding the gathered weights (``release``).
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from illume_kit.core.atomic import atomic_write_text, remove_stale_temps
from illume_kit.core.footprint import human
from illume_kit.train import distributed as D
from illume_kit.train import optim as O
from illume_kit.train import parallel as P
from illume_kit.train.config import TrainerConfig
from illume_kit.train.data import (
    batches_of,
    is_map_dataset,
    is_stream,
    make_loader,
    make_stream_loader,
    sample_ids,
)
from illume_kit.train.loggers import Logger, as_image, open_loggers
from illume_kit.train.progress import PlainReporter, TrainCallback
from illume_kit.train.state import (
    STATE_FILE,
    ShardedCheckpointError,
    capture_rng,
    is_sharded,
    latest_checkpoint,
    load_checkpoint,
    load_sharded_checkpoint,
    restore_rng,
    save_checkpoint,
    save_sharded_checkpoint,
    seed_everything,
)

StepFn = Callable[[nn.Module, Any, int], Mapping[str, torch.Tensor]]
DiscStepFn = Callable[[nn.Module, Any, int, Mapping[str, Any]], Mapping[str, torch.Tensor]]
EvalFn = Callable[[nn.Module, int], Mapping[str, float]]

# the training state's trained weights when the checkpoint's model file holds their moving average
EMA_RAW = "ema/raw"
# set to 1: each rank writes the ids of every step's samples to OUTPUT/samples/rankR.jsonl
RECORD_SAMPLES = "ILLUME_KIT_RECORD_SAMPLES"
# config fields that may change between a run and its resumption without changing the trajectory
_RESUME_SAFE = {
    "steps",
    "loggers",
    "checkpoint_every",
    "keep_last",
    "log_every",
    "eval_every",
    "num_workers",
    "prefetch_factor",
    "parallelism",
}


@contextlib.contextmanager
def deterministic_kernels(device: torch.device) -> Iterator[None]:
    """Deterministic CPU kernels inside the block; the process's previous settings after it.

    CPU only: on CUDA the flag also needs ``CUBLAS_WORKSPACE_CONFIG`` and refuses kernels that have
    no deterministic version, which is the caller's choice to make. Uninitialised memory is not
    filled with NaN here (that is a debugging aid, and it costs a pass over every new tensor).
    """
    if device.type != "cpu":
        yield
        return
    was, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = fill


class _StepModule(nn.Module):
    """Runs ``fn(inner, *args)`` as ``forward`` so DDP and FSDP see one forward per step.

    ``touch``: names of trainable parameters (of ``inner``) that a step may leave unused — a projector
    when a rank's batch drew no input image. Each gets a zero gradient, so every rank reduces the same
    gradients (FSDP reduce-scatters the gradients that exist; DDP waits for every one).
    """

    def __init__(self, inner: nn.Module, fn: Callable, touch: list[str] | None = None):
        super().__init__()
        self.inner, self.fn = inner, fn
        self.touch = list(touch or ())

    def forward(self, *args):
        out = self.fn(self.inner, *args)
        if self.touch and isinstance(out, Mapping) and isinstance(out.get("loss"), torch.Tensor):
            # inside the root's forward these are the gathered parameters, whatever the strategy
            zero = sum(self.inner.get_parameter(n).reshape(-1)[:1].sum() for n in self.touch) * 0.0
            out = {**out, "loss": out["loss"] + zero}
        return out


def _on_meta(model: nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and not hasattr(batch, "_fields"):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _scalars(out: Mapping[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().float() for k, v in out.items() if isinstance(v, torch.Tensor) and v.numel() == 1}


class NonFiniteLoss(FloatingPointError):
    """A step's loss is NaN or infinite: the training diverged (or its inputs hold NaN).

    Names the step and every scalar term the step reported; ``where`` (set by the caller that knows
    it, e.g. the recipe stage) says which settings to change.
    """

    def __init__(self, who: str, step: int, terms: Mapping[str, float], where: str = "") -> None:
        self.who, self.step, self.terms, self.where = who, step, dict(terms), where
        super().__init__(str(self))

    def __str__(self) -> str:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in self.terms.items())
        return (
            f"{self.where or self.who}: the loss is not finite at step {self.step} ({shown}): the training "
            "diverged. A finite loss needs a smaller learning rate (lr), a finite weight_decay, grad_clip set "
            "(a positive number), or warmup_steps; check the data for NaN too"
        )


class StepIndex(int):
    """The optimizer step a step function runs, with ``micro``: which of its micro-batches (0: the first),
    and ``offset``: where the micro-batch's first sample sits among all the samples of the step, over
    micro-batches and ranks (``(micro * world_size + rank) * batch_size``, the order the data is read in).
    A step function that draws per-sample randomness keyed by ``offset + i`` draws the same for a sample
    at any world size and accumulation split of the same global batch."""

    micro: int
    offset: int

    def __new__(cls, step: int, micro: int = 0, offset: int = 0) -> StepIndex:
        obj = super().__new__(cls, step)
        obj.micro, obj.offset = micro, offset
        return obj


def _loss_weight(out: Mapping[str, Any], weighted: bool) -> float | torch.Tensor:
    """How much a micro-batch's loss counts in its step: its ``loss_weight`` output, or 1.

    Not ``weighted`` (one micro-batch in one process): its own average, whatever it is averaged over."""
    if not weighted:
        return 1.0
    w = out.get("loss_weight")
    if w is None:
        return 1.0
    w = w.detach().float() if isinstance(w, torch.Tensor) else float(w)
    if not float(w) > 0:
        raise ValueError(f"step_fn: 'loss_weight' must be > 0, got {float(w)}")
    return w


def _total(weights: list[float | torch.Tensor]) -> float | torch.Tensor:
    return weights[0] if len(weights) == 1 else sum(weights[1:], weights[0])


def _weighted_scalars(
    outs: list[Mapping[str, Any]], weights: list[float | torch.Tensor], share: float = 1.0
) -> dict[str, torch.Tensor]:
    """The step's logged scalars: each micro-batch's, averaged with the loss weights (one micro-batch: its
    own); the loss times ``share`` (this rank's part of the mean over ranks, ``Trainer._global_weight``),
    so the logged loss is the one the gradient follows. Other terms are means of the ranks' means."""
    if len(outs) == 1:
        out = {k: v for k, v in _scalars(outs[0]).items() if k != "loss_weight"}
        return out | ({"loss": out["loss"] * share} if share != 1.0 else {})
    sums: dict[str, torch.Tensor] = {}
    norms: dict[str, float | torch.Tensor] = {}
    for out, w in zip(outs, weights):
        for k, v in _scalars(out).items():
            if k != "loss_weight":
                sums[k] = sums.get(k, 0.0) + v * w
                norms[k] = norms.get(k, 0.0) + w
    out = {k: sums[k] / norms[k] for k in sums}
    return out | ({"loss": out["loss"] * share} if share != 1.0 else {})


def _check_loss(out: Mapping[str, Any], step: int, who: str) -> torch.Tensor:
    if not isinstance(out, Mapping) or "loss" not in out:
        raise KeyError(
            f"{who} must return a dict with a scalar 'loss' (got {type(out).__name__}"
            f"{' with keys ' + str(sorted(out)) if isinstance(out, Mapping) else ''})"
        )
    loss = out["loss"]
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError(f"{who}: 'loss' must be a scalar tensor, got {getattr(loss, 'shape', type(loss))}")
    if not torch.isfinite(loss.detach()):
        raise NonFiniteLoss(who, step, {k: float(v) for k, v in _scalars(out).items()})
    return loss


class _Group:
    """One optimisation group: module, its step wrapper (plain, DDP or an FSDP root), AdamW, schedule."""

    def __init__(
        self,
        module: nn.Module,
        call: Callable,
        kind: str,
        params: list[tuple[str, nn.Parameter]],
        cfg: TrainerConfig,
        lr: float,
        betas,
        param_groups: list[dict[str, Any]] | None = None,
        all_names: list[str] | None = None,
        scaler: Any = None,
        row_masks: Mapping[str, int] | None = None,
        replicated: set[nn.Parameter] | None = None,
        world_size: int = 1,
    ):
        self.module, self.call, self.kind, self.scaler = module, call, kind, scaler
        self.world_size = world_size
        self.replicated = [p for _, p in params if p in (replicated or set())]
        self.params = [p for _, p in params]
        named = dict(params)
        self.row_masks = [(named[n], first) for n, first in (row_masks or {}).items() if n in named]
        self.opt = O.adamw(
            params,
            lr=lr,
            weight_decay=cfg.weight_decay,
            betas=betas,
            eps=cfg.eps,
            param_groups=param_groups or (),
            all_names=all_names if all_names is not None else [n for n, _ in module.named_parameters()],
        )
        self.sched = O.scheduler(
            self.opt, total=cfg.steps, warmup=cfg.warmup_steps, schedule=cfg.schedule, min_ratio=cfg.min_lr_ratio
        )

    def fn(self, *args):
        return self.call(*args)

    @contextlib.contextmanager
    def no_sync(self, last: bool) -> Iterator[None]:
        """Gradients are reduced over ranks on the last micro-batch of a step only."""
        if last or self.kind == "plain":
            yield
        elif self.kind == "ddp":
            with self.call.no_sync():
                yield
        else:
            P.set_gradient_sync(self.call, False)
            try:
                yield
            finally:
                P.set_gradient_sync(self.call, True)

    def backward(self, loss: torch.Tensor, weight: float | torch.Tensor) -> None:
        loss = loss if isinstance(weight, float) and weight == 1.0 else loss * weight
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def update(self, clip: float | None, total_weight: float | torch.Tensor = 1.0) -> torch.Tensor | None:
        """One optimizer step on the gradients the micro-batches accumulated, divided by their total weight."""
        if self.replicated:
            P.average_replicated(self.replicated, self.world_size)
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        if not (isinstance(total_weight, float) and total_weight == 1.0):
            for p in self.params:
                if p.grad is not None:
                    p.grad.div_(total_weight)
        for p, first in self.row_masks:  # FSDP's sharded parameters carry no tensor hooks
            P.zero_rows_below(p, first)
        norm = P.clip_grad_norm(self.params, clip) if clip is not None else None
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return norm

    def set_trainable(self, flag: bool) -> None:
        for p in self.params:
            p.requires_grad_(flag)


class _Ema:
    """An exponential moving average of the trained parameters (``config.ema``).

    Up to optimizer step ``start_step`` the average is a copy of the parameters; each later step moves it
    ``1 - decay`` of the way to them. Low-precision (bf16/fp16) parameters are averaged in fp32, where
    steps of ``1 - decay`` do not round away.
    """

    def __init__(self, named: list[tuple[str, nn.Parameter]], decay: float, start_step: int):
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.decay, self.start_step = decay, start_step
        with torch.no_grad():
            self.shadow = [
                p.detach().to(torch.float32 if p.element_size() < 4 else p.dtype).clone() for p in self.params
            ]
        self._fused = all(s.dtype == p.dtype for s, p in zip(self.shadow, self.params))

    @torch.no_grad()
    def update(self, steps_done: int) -> None:
        if not self.params:
            return
        if steps_done <= self.start_step:
            torch._foreach_copy_(self.shadow, [p.detach() for p in self.params])
        elif self._fused:
            torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - self.decay)
        else:
            for s, p in zip(self.shadow, self.params):
                s.lerp_(p.detach().to(s.dtype), 1.0 - self.decay)

    @torch.no_grad()
    def apply(self) -> None:
        """Copy the average into the parameters (the end of training)."""
        for s, p in zip(self.shadow, self.params):
            p.copy_(s)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[dict[str, torch.Tensor]]:
        """The average in the parameters inside the block; yields the trained weights it stands in for."""
        with torch.no_grad():
            raw = {n: p.detach().clone() for n, p in zip(self.names, self.params)}
            self.apply()
        try:
            yield raw
        finally:
            with torch.no_grad():
                for n, p in zip(self.names, self.params):
                    p.copy_(raw[n])

    @torch.no_grad()
    def restore(self, raw: Mapping[str, torch.Tensor]) -> None:
        """After loading a checkpoint whose model weights are the average: those become the average again
        and ``raw`` (the trained weights, from the training state) goes back into the parameters."""
        missing = sorted(set(self.names) - set(raw))
        if missing:
            raise ValueError(f"the checkpoint's trained weights lack {missing[:5]}: it was written for another model")
        for s, n, p in zip(self.shadow, self.names, self.params):
            s.copy_(p.detach())
            p.copy_(raw[n])


class Trainer:
    """Train ``model`` with ``step_fn`` on ``data``.

    data: a map-style dataset (``__len__``/``__getitem__``; batched by ``make_loader`` in an order
        fixed by (seed, step), sharded by rank), an ``IterableDataset`` (batched by a torchdata
        ``StatefulDataLoader`` whose state, each rank's, goes into every checkpoint and is loaded back
        on resume; the dataset shards itself over ranks and workers) or a factory ``(start_step,
        rank, world_size) -> iterable of batches`` (then resume exactness is the factory's
        responsibility). All three count
        micro-batches: optimizer step ``s`` reads micro-batches ``s * grad_accum_steps`` onwards, so
        its micro-batches hold the samples one step of ``batch_size * grad_accum_steps`` would.
    trainable: overrides ``config.trainable``; a list of name prefixes or a ``(name, param) -> bool``.
    eval_fn: ``(model, step) -> {metric: float | image}``, run on rank 0 in eval mode, no grad, with RNG
        states saved and restored around it so evaluating never changes the training trajectory
        (with ``config.ema``: on the averaged weights). Image values (an HxWx3 array, a PIL image, a
        PNG path: e.g. a grid of samples) go to the image-capable loggers of ``config.loggers``.
    on_checkpoint: ``(folder, step)`` called on rank 0 to add files to each checkpoint before it
        is renamed into place (e.g. an illume-kit component checkpoint).
    callback: where progress goes (``illume_kit.train.progress.TrainCallback``); by default plain
        lines on stderr, none when ``quiet``.
    """

    def __init__(
        self,
        model: nn.Module,
        step_fn: StepFn,
        data: Any,
        config: TrainerConfig | None = None,
        output_dir: str | os.PathLike | None = None,
        *,
        disc: nn.Module | None = None,
        disc_step_fn: DiscStepFn | None = None,
        trainable: O.Trainable = None,
        eval_fn: EvalFn | None = None,
        collate_fn: Callable | None = None,
        on_checkpoint: Callable[[Path, int], None] | None = None,
        device: str | torch.device | None = None,
        quiet: bool = False,
        description: str = "train",
        callback: TrainCallback | None = None,
        root_part: str | None = None,
    ):
        if (disc is None) != (disc_step_fn is None):
            raise ValueError("disc and disc_step_fn go together: pass both or neither")
        self.cfg = config or TrainerConfig()
        self.dist = D.setup(device)
        self.device = self.dist.device
        # a model built on the meta device (parallelism.meta_init, ranks but 0) gets its memory once sharded
        self.model = model if _on_meta(model) else model.to(self.device)
        self.disc = disc.to(self.device) if disc is not None else None
        self.step_fn, self.disc_step_fn, self.data, self.collate_fn = step_fn, disc_step_fn, data, collate_fn
        self.eval_fn, self.on_checkpoint = eval_fn, on_checkpoint
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.quiet, self.description = quiet, description
        self.callback = callback
        self._trainable = trainable if trainable is not None else (self.cfg.trainable or None)
        self.root_part = root_part
        self.step = 0
        self.history: list[dict[str, float]] = []
        self._resumed_row: dict[str, float] = {}
        self._groups_built = False
        self._loader: Any = None  # the StatefulDataLoader of a streamed dataset
        self._loader_state: dict[str, Any] | None = None  # its state, from the checkpoint resumed
        self.sharded = False
        self.precision = "fp32"
        self._plain: nn.Module | None = None
        self.rank_memory: list[list[int]] = []
        self._ema: _Ema | None = None
        self._loggers: list[Logger] = []

    # ------------------------------------------------------------------ paths
    @staticmethod
    def checkpoint_root(output_dir: str | os.PathLike) -> Path:
        """Where a trainer with this ``output_dir`` keeps its checkpoints (``latest`` names the newest)."""
        return Path(output_dir) / "checkpoints"

    @property
    def checkpoint_dir(self) -> Path | None:
        return self.checkpoint_root(self.output_dir) if self.output_dir is not None else None

    # ------------------------------------------------------------------ main loop
    def fit(self, resume: bool = False, until: int | None = None) -> dict[str, float]:
        """Train to ``config.steps`` (or stop early at ``until``, checkpointing there).

        ``resume=True`` continues from ``output_dir/checkpoints/latest`` when it exists.
        Returns the last logged row.
        """
        with deterministic_kernels(self.device):
            return self._fit(resume, until)

    def _fit(self, resume: bool, until: int | None) -> dict[str, float]:
        cfg, dist = self.cfg, self.dist
        stop = cfg.steps if until is None else min(until, cfg.steps)
        seed_everything(cfg.seed + dist.rank)
        gen, disc = self._setup_groups()
        self._groups = {"model": gen, "disc": disc}
        self.step = 0
        self._resumed_row: dict[str, float] = {}
        self._loader, self._loader_state = None, None
        if dist.is_main and self.output_dir is not None:
            remove_stale_temps(self.output_dir, depth=2)  # what a writer killed mid-checkpoint left
        if resume:
            self._resume()
        self.model.train()
        if self.disc is not None:
            self.disc.train()

        main = dist.is_main
        if main and self.output_dir is not None:  # rank 0 alone logs
            self._loggers = open_loggers(
                cfg.loggers,
                self.output_dir,
                self.description,
                resumed_at=self.step if resume else None,
                config=cfg.model_dump(mode="json"),
            )
        progress = self._callback(main)
        memory = self.memory_line()  # collective
        if dist.enabled:
            progress.message(memory)
        progress.start(cfg.steps, self.step, self.description)
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}  # a key may be logged at some steps only (a task no batch drew)
        batches = self._batches(self.step * cfg.grad_accum_steps, cfg.steps * cfg.grad_accum_steps)
        autocast = P.autocast(self.precision, self.device)
        try:
            while self.step < stop:
                s = self.step
                micro = []
                for _ in range(cfg.grad_accum_steps):
                    batch = next(batches, None)
                    if batch is None:
                        raise RuntimeError(f"data ran out at step {s} of {cfg.steps}")
                    micro.append(to_device(batch, self.device))
                self._record_samples(s, micro)
                row = {"lr": gen.sched.get_last_lr()[0]}
                logged = self._train_step(micro, s, autocast)
                for k, v in logged.items():
                    sums[k] = sums.get(k, 0.0) + v
                    counts[k] = counts.get(k, 0) + 1
                self.step = s + 1
                if self.step % cfg.log_every == 0 or self.step == stop:
                    means = {k: float(v) / counts[k] for k, v in sums.items()}
                    means = D.mean_across_ranks(means, dist)
                    self._log({"step": self.step, **row, **means}, progress)
                    sums, counts = {}, {}
                else:
                    progress.update(self.step)
                if self.eval_fn is not None and (
                    (cfg.eval_every and self.step % cfg.eval_every == 0) or self.step == cfg.steps
                ):
                    self._evaluate(progress)
                if self.output_dir is not None and (
                    (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or self.step == stop
                ):
                    self.save()
            if self.step >= cfg.steps:
                if self._ema is not None:  # what the stage saves and the next stage builds on
                    self._ema.apply()
                self.release()  # collective: before the process group ends
        finally:
            progress.close()
            for logger in self._loggers:
                logger.close()
            self._loggers = []
            if self.step >= cfg.steps:  # finished: end the process group if we started it
                D.teardown(self.dist)
        return self.last_row()

    def _setup_groups(self) -> tuple[_Group, _Group | None]:
        """Freeze what does not train, apply the parallelism section, build the optimisation groups.

        Under FSDP the model is sharded in place; ``release`` gives back a plain module at the end.
        """
        cfg, dist, par = self.cfg, self.dist, self.cfg.parallelism
        if self._groups_built:
            raise RuntimeError("Trainer.fit runs once per Trainer (the model is prepared for its strategy in place)")
        self._groups_built = True
        self.precision = P.resolve_precision(par.precision, self.device)
        disc_params = set(self.disc.parameters()) if self.disc is not None else set()
        disc_ids = {id(p) for p in disc_params}
        chosen = O.select_trainable(self.model, self._trainable, exclude=disc_ids)
        # groups a recipe freezes are frozen before sharding: FSDP and DDP decide by requires_grad
        O.freeze_groups(
            chosen, cfg.param_groups, [n for n, p in self.model.named_parameters() if id(p) not in disc_ids]
        )
        # an embedding whose new rows train marks its kept rows (illume_kit.model.objective); FSDP drops tensor hooks
        row_masks = {
            n: int(p._illume_frozen_rows) for n, p in self.model.named_parameters() if hasattr(p, "_illume_frozen_rows")
        }
        P.cast_true_precision(self.model, self.precision)
        P.fp32_masters(self.model, self.precision)
        if self.disc is not None and self.precision == "bf16-true":
            self.disc.to(torch.bfloat16)
        self.sharded = par.strategy == "fsdp" and dist.enabled
        if self.sharded:
            if self.eval_fn is not None:
                raise ValueError(
                    "eval_fn with parallelism.strategy fsdp: evaluation runs on rank 0 alone, which cannot gather "
                    "sharded weights; evaluate the stage's saved checkpoint instead"
                )
            receive = par.meta_init
            full = self.model.state_dict() if receive and dist.is_main else {}  # the full weights, kept by reference
            self._plain = P.skeleton(self.model)
            root = _StepModule(self.model, self.step_fn, P.root_trainable(self.model, par, self.root_part))
            replicated = P.shard(
                root, self.model, par, self.precision, self.device, dist.world_size, self.root_part, disc_params
            )
            call, kind = root, "fsdp"
            if receive:
                P.receive_from_rank0(self.model, full, self.device)
                del full
            elif _on_meta(self.model):
                raise ValueError("a model on the meta device trains only with parallelism.meta_init under fsdp")
        else:
            P.prepare_blocks(self.model, par, self.root_part)
            call, kind = self._replicated(self.model, self.step_fn)
            replicated = set()
        params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad and id(p) not in disc_ids]
        names = [n for n, p in self.model.named_parameters() if id(p) not in disc_ids]
        gen = _Group(
            self.model,
            call,
            kind,
            params,
            cfg,
            cfg.lr,
            cfg.betas,
            cfg.param_groups,
            names,
            scaler=P.grad_scaler(self.precision, self.device, self.sharded),
            row_masks=row_masks,
            replicated=replicated - disc_params,
            world_size=dist.world_size,
        )
        if cfg.ema is not None:
            self._ema = _Ema(params, cfg.ema.decay, cfg.ema.start_step)
        disc = None
        if self.disc is not None:
            # the discriminator stays replicated (DDP) under every strategy: it is small, and called on its own
            dcall, dkind = self._replicated(self.disc, self.disc_step_fn)
            disc = _Group(
                self.disc,
                dcall,
                dkind,
                O.select_trainable(self.disc, None),
                cfg,
                cfg.disc_lr or cfg.lr,
                cfg.disc_betas or cfg.betas,
                scaler=P.grad_scaler(self.precision, self.device, False),
            )
        return gen, disc

    def memory_line(self) -> str:
        """Each rank's parameters, and their gradients and AdamW states, in bytes (collective)."""
        held = trained = full = 0
        for module in (self.model, self.disc):
            for p in module.parameters() if module is not None else ():
                local = P.local_tensor(p)
                held += local.numel() * local.element_size()
                full += p.numel() * p.element_size()
                if p.requires_grad:  # a gradient and two fp32 moments
                    trained += local.numel() * (local.element_size() + 8)
        ranks = D.gather_objects((held, trained), self.dist)
        self.rank_memory = [list(r) for r in ranks]
        shown = ", ".join(f"{human(h)} + {human(t)}" for h, t in ranks)
        return (
            f"per-rank memory (parameters + gradients and AdamW states), rank 0..{len(ranks) - 1}: {shown}; "
            f"the full model is {human(full)}"
        )

    def _replicated(self, module: nn.Module, fn: Callable) -> tuple[Callable, str]:
        """``fn`` bound to ``module``, DDP-wrapped when several processes train it."""
        touch = [n for n, p in module.named_parameters() if p.requires_grad] if self.dist.enabled else []
        wrapped = D.wrap_ddp(_StepModule(module, fn, touch), self.dist, self.cfg.find_unused_parameters)
        if isinstance(wrapped, _StepModule):
            return (lambda *a: fn(module, *a)), "plain"
        return wrapped, "ddp"

    def release(self) -> nn.Module:
        """The trained model as a plain module: under FSDP the gathered weights in an unsharded copy
        (collective: every rank calls it), else the model itself. Call after ``fit``."""
        if self.sharded and self._plain is not None:
            self.model = P.unsharded(self.model, self._plain, self.device)
            self._plain = None
        return self.model

    def last_row(self) -> dict[str, float]:
        """The row logged last, also when it was logged before the checkpoint this run resumed from
        (a run resumed at its final step trains no step, and still reports its final metrics)."""
        return dict(self.history[-1]) if self.history else dict(self._resumed_row)

    # ------------------------------------------------------------------ pieces
    def _callback(self, main: bool) -> TrainCallback:
        """Rank 0 reports (to ``callback``, or plain lines); the other ranks and ``quiet`` runs stay silent."""
        if self.quiet or not main:
            return PlainReporter(quiet=True)
        return self.callback if self.callback is not None else PlainReporter()

    def _train_step(self, micro: list[Any], s: int, autocast) -> dict[str, torch.Tensor]:
        """Update the model (discriminator frozen), then the discriminator; return scalars to log.

        Each group accumulates the gradients of every micro-batch of the step, each micro-batch's loss
        weighted by its ``loss_weight`` (a step_fn output; 1 when absent), then divides by the total
        weight and steps once: a loss that is a mean over a micro-batch's tokens, returned with their
        count as ``loss_weight``, gives the gradient of the mean over the whole step's tokens.
        """
        gen, disc, clip = self._groups["model"], self._groups["disc"], self.cfg.grad_clip
        weighted = len(micro) > 1 or self.dist.enabled
        if disc is not None:
            disc.set_trainable(False)
        outs, weights = [], []
        for i, batch in enumerate(micro):
            with gen.no_sync(i == len(micro) - 1), autocast:
                out = gen.fn(batch, self._index(s, i))
                loss = _check_loss(out, s, "step_fn")
            weight = _loss_weight(out, weighted)
            gen.backward(loss, weight)
            outs.append(out)
            weights.append(weight)
        total, share = self._global_weight(weights)
        norm = gen.update(clip, total)
        if self._ema is not None:
            self._ema.update(s + 1)
        logged = _weighted_scalars(outs, weights, share)
        if norm is not None:
            logged["grad_norm"] = norm.detach().float()
        if disc is None:
            return logged
        disc.set_trainable(True)
        if s < self.cfg.disc_start:  # keep the disc schedule on the global step (no update yet)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "scheduler.step() before optimizer.step()"
                disc.sched.step()
            return logged
        douts, dweights = [], []
        for i, (batch, out) in enumerate(zip(micro, outs)):
            detached = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}
            with disc.no_sync(i == len(micro) - 1), autocast:
                dout = disc.fn(batch, self._index(s, i), detached)
                dloss = _check_loss(dout, s, "disc_step_fn")
            weight = _loss_weight(dout, weighted)
            disc.backward(dloss, weight)
            douts.append(dout)
            dweights.append(weight)
        dtotal, dshare = self._global_weight(dweights)
        dnorm = disc.update(clip, dtotal)
        logged.update({"disc/" + k: v for k, v in _weighted_scalars(douts, dweights, dshare).items()})
        if dnorm is not None:
            logged["disc/grad_norm"] = dnorm.detach().float()
        return logged

    def _global_weight(self, weights: list[float | torch.Tensor]) -> tuple[float | torch.Tensor, float]:
        """What a group's summed gradients are divided by, and this rank's share of the logged means.

        The ranks' gradients are averaged (DDP and FSDP divide their sum by the world size), so dividing
        by the global weight / world size gives the gradient of the loss averaged over every rank's
        tokens, as one process with the whole batch computes it; logged values scaled by
        ``local weight x world / global weight`` average over ranks to the same global mean.
        """
        local = _total(weights)
        if not self.dist.enabled:
            return local, 1.0
        glob = D.sum_across_ranks(float(local), self.dist)
        return glob / self.dist.world_size, float(local) * self.dist.world_size / glob

    def _index(self, step: int, micro: int) -> StepIndex:
        offset = (micro * self.dist.world_size + self.dist.rank) * self.cfg.batch_size
        return StepIndex(step, micro, offset)

    def _batches(self, start: int, steps: int) -> Iterator[Any]:
        dist = self.dist
        if is_stream(self.data):
            # the stream's position is the loader's state (checkpointed), not the step
            if hasattr(self.data, "shard_over"):
                self.data.shard_over(dist.rank, dist.world_size)
            loader = make_stream_loader(
                self.data,
                batch_size=self.cfg.batch_size,
                seed=self.cfg.seed,
                num_workers=self.cfg.num_workers,
                prefetch_factor=self.cfg.prefetch_factor,
                collate_fn=self.collate_fn,
                pin_memory=self.device.type == "cuda",
            )
            if self._loader_state is not None:
                loader.load_state_dict(self._loader_state)
            self._loader = loader
            return batches_of(loader)
        if is_map_dataset(self.data):
            loader: Iterable = make_loader(
                self.data,
                batch_size=self.cfg.batch_size,
                seed=self.cfg.seed,
                start_step=start,
                steps=steps,
                rank=dist.rank,
                world_size=dist.world_size,
                num_workers=self.cfg.num_workers,
                prefetch_factor=self.cfg.prefetch_factor,
                collate_fn=self.collate_fn,
                pin_memory=self.device.type == "cuda",
            )
        elif callable(self.data):
            loader = self.data(start, dist.rank, dist.world_size)
        else:
            raise TypeError(
                "data must be a map-style dataset, an iterable dataset or a factory (start_step, rank, world_size) -> "
                f"iterable, got {type(self.data).__name__}"
            )
        return iter(loader)

    def _samples_file(self) -> Path | None:
        """``samples/rank{R}.jsonl`` under the output folder when ``ILLUME_KIT_RECORD_SAMPLES`` is set (a debug
        record of the ids each step trained on, e.g. to compare a resumed run's order with an uninterrupted one)."""
        if self.output_dir is None or os.environ.get(RECORD_SAMPLES, "").strip() in ("", "0"):
            return None
        return self.output_dir / "samples" / f"rank{self.dist.rank}.jsonl"

    def _record_samples(self, step: int, micro: list[Any]) -> None:
        path = self._samples_file()
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            for i, batch in enumerate(micro):
                f.write(json.dumps({"step": step + 1, "micro": i, "ids": sample_ids(batch)}) + "\n")

    def _log(self, row: dict[str, float], progress: TrainCallback) -> None:
        self.history.append(row)
        if self.dist.is_main:
            progress.log(row["step"], {k: v for k, v in row.items() if k != "step"})
            if self.output_dir is not None:
                self.output_dir.mkdir(parents=True, exist_ok=True)
                with open(self.output_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
            for logger in self._loggers:
                logger.scalars(int(row["step"]), {k: v for k, v in row.items() if k != "step"})

    def _evaluate(self, progress: TrainCallback) -> None:
        if not self.dist.is_main:
            return
        rng = capture_rng()
        self.model.eval()
        try:
            with torch.no_grad(), self._ema.swapped() if self._ema is not None else contextlib.nullcontext():
                out = dict(self.eval_fn(self.model, self.step))
        finally:
            self.model.train()
            restore_rng(rng)
        # an image value (a grid: array, PIL image or PNG path) goes to the loggers, numbers to the row
        images = {
            k: img for k, v in out.items() if not isinstance(v, (int, float)) and (img := as_image(v)) is not None
        }
        self._log({"step": self.step, **{k: float(v) for k, v in out.items() if k not in images}}, progress)
        for tag, img in images.items():
            for logger in self._loggers:
                logger.image(tag, self.step, img)

    def state_dict(self) -> dict[str, Any]:
        """The training state (weights_only-loadable); RNG states are gathered from every rank."""
        state: dict[str, Any] = {
            "step": self.step,
            "world_size": self.dist.world_size,
            "torch_threads": torch.get_num_threads(),
            "data_position": self.step * self.cfg.batch_size * self.cfg.grad_accum_steps * self.dist.world_size,
            "config": self.cfg.model_dump(mode="json"),
            "rng": D.gather_objects(capture_rng(), self.dist),
            # the last logged row, so a run resumed at its final step still reports its final metrics
            "last_row": self.last_row(),
        }
        for name, g in self._groups.items():
            if g is not None:
                if not self.writes_sharded:  # sharded checkpoints hold optimizer states in their DCP folder
                    state[f"{name}/optimizer"] = g.opt.state_dict()
                state[f"{name}/scheduler"] = g.sched.state_dict()
        state["strategy"] = self.cfg.parallelism.strategy
        state["rank_memory"] = self.rank_memory  # [parameter bytes, gradient + AdamW bytes] of each rank
        state["precision"] = self.precision
        if self._loader is not None:
            # every rank's loader state (each worker's stream position): plain ints and strings
            state["loader"] = D.gather_objects(self._loader.state_dict(), self.dist)
            state["loader_slots"] = [self.dist.world_size, self.cfg.num_workers]
        return state

    @property
    def writes_sharded(self) -> bool:
        """Checkpoints are DCP folders under ``strategy: fsdp`` (at any world size, so they resume at any)."""
        return self.cfg.parallelism.strategy == "fsdp"

    def _parts(self) -> dict[str, tuple[nn.Module, torch.optim.Optimizer]]:
        modules = {"model": self.model, "disc": self.disc}
        return {name: (modules[name], g.opt) for name, g in self._groups.items() if g is not None}

    def save(self) -> Path | None:
        """Checkpoint now (collective under DDP and FSDP: every rank must call it). Rank 0 writes; under
        FSDP every rank writes its shards."""
        state = self.state_dict()
        folder = None
        if self.writes_sharded and self.checkpoint_dir is not None:
            extra = (lambda tmp: self.on_checkpoint(tmp, self.step)) if self.on_checkpoint else None
            return save_sharded_checkpoint(
                self.checkpoint_dir, self.step, self._parts(), state, self.dist, self.cfg.keep_last, extra
            )
        if self.dist.is_main and self.checkpoint_dir is not None:
            modules = {"model": self.model} | ({"disc": self.disc} if self.disc is not None else {})
            extra = (lambda tmp: self.on_checkpoint(tmp, self.step)) if self.on_checkpoint else None
            # with EMA the model file holds the average (what eval and later stages load); the trained
            # weights, which a resume continues from, go into the training state
            with self._ema.swapped() if self._ema is not None else contextlib.nullcontext() as raw:
                if raw is not None:
                    state[EMA_RAW] = raw
                folder = save_checkpoint(
                    self.checkpoint_dir, self.step, modules, state, keep_last=self.cfg.keep_last, extra_writer=extra
                )
        D.barrier(self.dist)
        return folder

    def _resume(self) -> None:
        folder = latest_checkpoint(self.checkpoint_dir) if self.checkpoint_dir is not None else None
        if folder is None:
            # killed before its first checkpoint: the run starts over, so do the rows it logged
            if self.dist.is_main and self.output_dir is not None:
                truncate_metrics(self.output_dir / "metrics.jsonl", 0)
            return
        if is_sharded(folder):
            state = load_sharded_checkpoint(folder, self._parts())
        elif self.sharded:
            raise ShardedCheckpointError(
                f"{folder} was written unsharded (parallelism.strategy: {_strategy_written(folder)}) and this run "
                "shards the model (strategy: fsdp): its optimizer states cannot be resharded. Resume with the "
                "strategy it was written with, or start the stage over (train without --resume)"
            )
        else:
            modules = {"model": self.model} | ({"disc": self.disc} if self.disc is not None else {})
            state = load_checkpoint(folder, modules, map_location=self.device)
        written = state.get("precision")
        if written is not None and ("true" in written) != ("true" in self.precision):
            raise ShardedCheckpointError(
                f"{folder} was trained with parallelism.precision {written}, this run uses {self.precision}: "
                "bf16 weights and fp32 master weights are different training states. Resume with precision "
                f"{written}, or start the stage over (train without --resume)"
            )
        now = self.cfg.model_dump(mode="json")
        changed = {k for k, v in state["config"].items() if k not in _RESUME_SAFE and v != now.get(k)}
        # the per-process split of the batch may follow the world size; the global batch may not change
        old_global = state["config"].get("batch_size", 0) * state["config"].get("grad_accum_steps", 1)
        changed -= {"batch_size", "grad_accum_steps"}
        if old_global * state["world_size"] != self.cfg.batch_size * self.cfg.grad_accum_steps * self.dist.world_size:
            changed.add("global batch")
        if changed:
            warnings.warn(
                f"resuming {folder} with changed settings {sorted(changed)}: "
                "the run will not match an uninterrupted one",
                stacklevel=3,
            )
        if EMA_RAW in state:  # the model file held the average
            if self._ema is not None:
                self._ema.restore(state[EMA_RAW])
            else:
                with torch.no_grad():
                    named = dict(self.model.named_parameters())
                    for n, v in state[EMA_RAW].items():
                        named[n].copy_(v)
        elif self._ema is not None:  # EMA turned on at a resume: the average starts at the loaded weights
            self._ema.update(0)
        for name, g in self._groups.items():
            if g is not None:
                if f"{name}/optimizer" in state:
                    g.opt.load_state_dict(state[f"{name}/optimizer"])
                g.sched.load_state_dict(state[f"{name}/scheduler"])
        self._resume_stream(folder, state)
        self.step = int(state["step"])
        self._resumed_row = dict(state.get("last_row") or {})  # checkpoints of earlier versions lack it
        threads = state.get("torch_threads")  # checkpoints of earlier versions lack it
        if threads is not None and threads != torch.get_num_threads():
            warnings.warn(
                f"{folder} was trained with {threads} torch threads, now {torch.get_num_threads()}: "
                "float sums change, so the run will not match an uninterrupted one",
                stacklevel=3,
            )
        if state["world_size"] == self.dist.world_size:
            restore_rng(state["rng"][self.dist.rank])
        else:
            warnings.warn(
                f"checkpoint was written by {state['world_size']} processes, now "
                f"{self.dist.world_size}: RNG streams are reseeded",
                stacklevel=3,
            )
            seed_everything(self.cfg.seed + self.dist.rank + 7919 * self.step)
        if self.dist.is_main and self.output_dir is not None:
            truncate_metrics(self.output_dir / "metrics.jsonl", self.step)
        samples = self._samples_file()
        if samples is not None:
            truncate_metrics(samples, self.step)

    def _resume_stream(self, folder: Path, state: dict[str, Any]) -> None:
        """Continue a streamed dataset where the checkpoint's loaders stopped; refuse another split of it."""
        if not is_stream(self.data):
            return
        if "loader" not in state:
            warnings.warn(
                f"{folder} holds no data loader state: the stream starts over from its beginning",
                stacklevel=4,
            )
            return
        world, workers = (int(v) for v in state["loader_slots"])
        if (world, workers) != (self.dist.world_size, self.cfg.num_workers):
            raise ValueError(
                f"{folder}: the streamed dataset was checkpointed at world size {world} with num_workers {workers}, "
                f"this run has world size {self.dist.world_size} and num_workers {self.cfg.num_workers}: its records "
                "are split over ranks x workers, so resume with the same world size and num_workers, or start the "
                "stage over (train without --resume)"
            )
        self._loader_state = state["loader"][self.dist.rank]


def _strategy_written(folder: Path) -> str:
    state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    return str(state.get("strategy", "ddp"))


def truncate_metrics(path: Path, step: int) -> int:
    """Drop the rows an interrupted run logged after ``step`` (the resumed run logs them again), and
    a row torn by a kill mid-write; the file is replaced atomically. Returns how many were dropped."""
    if not path.is_file():
        return 0
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    keep = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step", 0), (int, float)) and row.get("step", 0) <= step:
            keep.append(line)
    if len(keep) != len(lines) or path.read_bytes()[-1:] not in (b"\n", b""):
        atomic_write_text(path, "".join(line + "\n" for line in keep))
    return len(lines) - len(keep)
