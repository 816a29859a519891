"""AdamW groups and the learning-rate schedule shared by every trainer run.

Weight decay applies to matrices and kernels only (ndim >= 2); biases, norms and embeddings' 1-D
scales are left undecayed, as in nanoGPT. The schedule is linear warmup then constant or cosine
decay to ``min_lr_ratio * lr``; it is a ``LambdaLR`` over a ``functools.partial`` so its state dict
holds numbers only (weights_only-loadable).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

# which parameters train: None (all that require grad), name prefixes, or a predicate on (name, param)
Trainable = Callable[[str, nn.Parameter], bool] | Sequence[str] | None


def select_trainable(
    module: nn.Module, trainable: Trainable, exclude: set[int] = frozenset()
) -> list[tuple[str, nn.Parameter]]:
    """Freeze everything ``trainable`` does not select; return the selected (name, param) pairs.

    Parameters already frozen (``requires_grad=False``, e.g. a teacher ViT) stay frozen. Parameters
    whose ``id`` is in ``exclude`` (a discriminator living inside the model) are left untouched.
    """
    if trainable is None or (not callable(trainable) and len(trainable) == 0):
        pick = lambda name, p: True  # noqa: E731
    elif callable(trainable):
        pick = trainable
    else:
        prefixes = tuple(trainable)
        names = [n for n, _ in module.named_parameters()]
        for pre in prefixes:
            if not any(n == pre or n.startswith(pre if pre.endswith(".") else pre + ".") for n in names):
                raise ValueError(
                    f"trainable prefix {pre!r} matches no parameter "
                    f"(top-level names: {sorted({n.split('.')[0] for n in names})})"
                )
        pick = lambda name, p: any(  # noqa: E731
            name == pre or name.startswith(pre if pre.endswith(".") else pre + ".") for pre in prefixes
        )
    selected = []
    for name, p in module.named_parameters():
        if id(p) in exclude:
            continue
        if p.requires_grad and pick(name, p):
            selected.append((name, p))
        else:
            p.requires_grad_(False)
    return selected


def adamw(
    named_params: Iterable[tuple[str, nn.Parameter]],
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    named_params = list(named_params)
    if not named_params:
        raise ValueError("no trainable parameters")
    decay = [p for _, p in named_params if p.ndim >= 2]
    no_decay = [p for _, p in named_params if p.ndim < 2]
    groups = [
        g
        for g in ({"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0})
        if g["params"]
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)


def lr_factor(step: int, *, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the peak lr at ``step`` (0-based: the factor used by step ``step``)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def scheduler(
    optimizer: torch.optim.Optimizer, *, total: int, warmup: int, schedule: str, min_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    fn = functools.partial(lr_factor, total=total, warmup=warmup, schedule=schedule, min_ratio=min_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
