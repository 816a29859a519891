"""AdamW groups and the learning-rate schedule shared by every trainer run.

Weight decay applies to matrices and kernels only (ndim >= 2); biases, norms and embeddings' 1-D
scales are left undecayed, as in nanoGPT. ``param_groups`` (a stage option) give named parameters
their own peak lr and weight decay: each entry's ``match`` is a dotted prefix of parameter names or a
glob over those prefixes, ``from_layer`` keeps only the blocks numbered that or higher right after
the match, and the first entry that matches a parameter wins; the rest keep the stage's lr and decay.
An entry with ``freeze: true`` keeps what it selects frozen in the stage (``requires_grad`` off, no
optimizer state), so ``[{match: enc.blocks, from_layer: 16, lr: 2e-6}, {match: enc, freeze: true}]``
trains an encoder's blocks from 16 on and nothing else of it.
Every group follows the same schedule, so its lr stays at (group lr / stage lr) of the stage's.
The schedule is linear warmup then constant or cosine decay to ``min_lr_ratio * lr``; it is a
``LambdaLR`` over a ``functools.partial`` so its state dict holds numbers only (weights_only-loadable).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

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


def _group_match(name: str, match: str, from_layer: int | None) -> tuple[bool, bool]:
    """(whether ``match`` matches a prefix of ``name``, whether ``name`` falls in the group)."""
    parts = name.split(".")
    for k in range(1, len(parts) + 1):
        if fnmatchcase(".".join(parts[:k]), match):
            if from_layer is None:
                return True, True
            return True, k < len(parts) and parts[k].isdigit() and int(parts[k]) >= from_layer
    return False, False


def assign_groups(
    names: Sequence[str], param_groups: Sequence[Mapping[str, Any]], all_names: Sequence[str] | None = None
) -> list[int]:
    """Index of the first group of ``param_groups`` each name falls in (-1: none, the stage's lr and decay).

    Every group must select some parameter of ``all_names`` (default ``names``), frozen ones included, so
    a misspelt name is an error rather than a group that silently trains at the stage's lr.
    """
    all_names = list(all_names if all_names is not None else names)
    tops = sorted({n.split(".")[0] for n in all_names})
    for i, g in enumerate(param_groups):
        hits = [_group_match(n, g["match"], g.get("from_layer")) for n in all_names]
        if not any(under for under, _ in hits):
            raise ValueError(f"param_groups[{i}].match {g['match']!r} matches no parameter (top-level names: {tops})")
        if not any(picked for _, picked in hits):
            raise ValueError(
                f"param_groups[{i}].from_layer: no parameter under {g['match']!r} has a block number "
                f">= {g['from_layer']} right after it (from_layer needs a match that ends right before the block "
                "numbers, e.g. input_encoder.semantic.blocks)"
            )
    return [
        next((i for i, g in enumerate(param_groups) if _group_match(n, g["match"], g.get("from_layer"))[1]), -1)
        for n in names
    ]


def freeze_groups(
    named_params: Iterable[tuple[str, nn.Parameter]],
    param_groups: Sequence[Mapping[str, Any]],
    all_names: Sequence[str] | None = None,
) -> list[tuple[str, nn.Parameter]]:
    """Turn ``requires_grad`` off for the parameters whose first matching entry has ``freeze``; return the rest."""
    named_params = list(named_params)
    if not any(g.get("freeze") for g in param_groups):
        return named_params
    which = assign_groups([n for n, _ in named_params], param_groups, all_names)
    kept = []
    for (name, p), w in zip(named_params, which):
        if w >= 0 and param_groups[w].get("freeze"):
            p.requires_grad_(False)
        else:
            kept.append((name, p))
    return kept


def adamw(
    named_params: Iterable[tuple[str, nn.Parameter]],
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float = 1e-8,
    param_groups: Sequence[Mapping[str, Any]] = (),
    all_names: Sequence[str] | None = None,
) -> torch.optim.AdamW:
    """AdamW over ``named_params``: the stage's groups first (so ``param_groups[0]['lr']`` is the stage lr
    whenever some parameter keeps it), then one per entry of ``param_groups`` that selects trainable
    parameters; each split into decayed (>= 2-D) and undecayed parameters. Parameters of a ``freeze``
    entry are frozen here and left out (``freeze_groups``)."""
    named_params = list(named_params)
    if not named_params:
        raise ValueError("no trainable parameters")
    named_params = freeze_groups(named_params, param_groups, all_names)
    if not named_params:
        raise ValueError("no trainable parameters: param_groups with freeze: true select every one the stage trains")
    which = assign_groups([n for n, _ in named_params], param_groups, all_names)
    settings = [(lr, weight_decay)] + [
        (
            g["lr"] if g.get("lr") is not None else lr,
            g["weight_decay"] if g.get("weight_decay") is not None else weight_decay,
        )
        for g in param_groups
    ]
    groups = []
    for gi, (glr, gwd) in enumerate(settings):
        mine = [p for (_, p), w in zip(named_params, which) if w == gi - 1]
        for params, wd in (([p for p in mine if p.ndim >= 2], gwd), ([p for p in mine if p.ndim < 2], 0.0)):
            if params:
                groups.append({"params": params, "lr": glr, "weight_decay": wd})
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
