"""Sharding, precision and block-wise options of a training run, on PyTorch's own engine.

``strategy: fsdp`` shards with FSDP2 (``torch.distributed.fsdp.fully_shard``) over a 1-D device mesh of
all ranks: every *block* is one unit, gathered only while it runs; the rest of the model is the root
unit, gathered for the whole step. A block is a submodule whose class name an enclosing module lists
in ``_no_split_modules`` — the attribute transformers and diffusers models already carry (decoder
layers, ResNet and attention blocks) and illume-kit's own components declare the same way — so a
plugin's model is sharded per block without the trainer knowing its code.

The step function runs as the root's ``forward`` (the trainer wraps model and step function in one
module), so the root's parameters are gathered however the step reaches them (``model.loss(...)``,
``tokenizer.encode(...)``), and blocks gather on their own ``__call__``.

Precision (``parallelism.precision``): ``*-mixed`` keeps fp32 master weights and AdamW states and
computes in bf16/fp16 (FSDP: ``MixedPrecisionPolicy`` with fp32 gradient reduction; DDP and one
process: ``torch.autocast``); fp16 adds dynamic loss scaling. ``bf16-true`` casts the weights
themselves: half the memory, but an update below bf16's resolution (~0.4% of a weight) is lost.

Activation checkpointing (``torch.utils.checkpoint`` through the composable ``checkpoint`` API) and
``torch.compile`` apply to the same blocks, under every strategy.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from typing import Any

import torch
from torch import nn

from illume_kit.core.schema import Parallelism

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16-mixed on CUDA, fp32 elsewhere; anything else as given."""
    if precision == "auto":
        return "bf16-mixed" if device.type == "cuda" else "fp32"
    return precision


def compute_dtype(precision: str) -> torch.dtype | None:
    """The dtype a resolved precision computes in (None: fp32)."""
    kind = precision.split("-")[0]
    return DTYPES.get(kind)


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context of a step under mixed precision and bf16-true. Under FSDP the policy casts the
    parameters for compute, and autocast the activations a step makes itself (an image the frozen
    tokenizer reads arrives in fp32), as without FSDP."""
    if precision.endswith("-mixed") or precision == "bf16-true":
        return torch.autocast(device.type, dtype=compute_dtype(precision))
    return contextlib.nullcontext()


def grad_scaler(precision: str, device: torch.device, sharded: bool):
    """Dynamic loss scaling for fp16 compute; None otherwise."""
    if precision != "fp16-mixed":
        return None
    if sharded:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(device.type)
    return torch.amp.GradScaler(device.type)


def cast_true_precision(model: nn.Module, precision: str) -> None:
    """``bf16-true``: the weights themselves in bf16 (with a warning: small updates round away).

    In the unified model that is the backbone (the LLM, where the memory is, and whose layers keep their
    norms in fp32 themselves); tokenizers and detokenizers stay fp32 under autocast, since their norm
    layers cannot take bf16 weights with autocast's fp32 inputs on every device. A component trained on
    its own is cast whole."""
    if precision != "bf16-true":
        return
    backbone = getattr(model, "backbone", None)
    model = backbone if isinstance(backbone, nn.Module) else model
    warnings.warn(
        "parallelism.precision: bf16-true keeps bf16 weights and AdamW states: an update smaller than bf16's "
        "resolution (~0.4% of a weight) is lost. bf16-mixed keeps fp32 master weights",
        stacklevel=3,
    )
    model.to(torch.bfloat16)


def fp32_masters(model: nn.Module, precision: str) -> int:
    """Trainable 16-bit parameters (a backbone loaded in bf16) become fp32 master weights, except under
    bf16-true; frozen ones keep their dtype (autocast computes with them as they are). Returns how many."""
    if precision == "bf16-true":
        return 0
    n = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16):
            p.data = p.data.float()
            n += 1
    return n


# ---------------------------------------------------------------------------------- blocks


def blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every block: a submodule whose class an ancestor lists in ``_no_split_modules``.

    Outermost first and never nested (a block inside a block belongs to the outer one).
    """
    out: list[tuple[str, nn.Module]] = []

    def walk(module: nn.Module, prefix: str, names: frozenset[str]) -> None:
        own = getattr(module, "_no_split_modules", None) or ()
        names = names | frozenset(own)
        for child_name, child in module.named_children():
            name = f"{prefix}{child_name}"
            if type(child).__name__ in names:
                out.append((name, child))
            else:
                walk(child, name + ".", names)

    walk(model, "", frozenset())
    return out


def part_of(name: str, root_part: str | None) -> str:
    """Which recipe part a block belongs to: the stage's component, or the unified model's top-level child."""
    return root_part if root_part is not None else name.split(".", 1)[0]


def prepare_blocks(model: nn.Module, par: Parallelism, root_part: str | None) -> list[tuple[str, nn.Module]]:
    """Activation checkpointing and ``torch.compile`` on the blocks the recipe names; returns the blocks."""
    found = blocks(model)
    if par.activation_checkpointing:
        from torch.distributed._composable import checkpoint

        for name, block in found:
            if part_of(name, root_part) in par.activation_checkpointing:
                checkpoint(block)
    if par.compile:
        for _, block in found:
            block.compile()
    return found


# ---------------------------------------------------------------------------------- FSDP


def shard(
    root: nn.Module,
    model: nn.Module,
    par: Parallelism,
    precision: str,
    device: torch.device,
    world_size: int,
    root_part: str | None = None,
    keep: set[nn.Parameter] | None = None,
) -> set[nn.Parameter]:
    """Shard ``model``'s blocks, then ``root`` (which holds ``model``) as the root unit, in place.

    ``keep``: parameters left out of sharding (replicated; e.g. a discriminator trained under DDP).
    With ``shard_frozen: false`` frozen parameters are kept too, and 0-d parameters (a logit scale)
    always, as FSDP shards along a dimension. Returns every kept parameter: the trainer averages the
    gradients of the trainable ones over ranks itself (``average_replicated``).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    dtype = compute_dtype(precision) if precision.endswith("-mixed") else None
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32 if dtype is not None else None)
    offload = CPUOffloadPolicy() if par.cpu_offload else OffloadPolicy()
    ignored = set(keep or ()) | {p for p in root.parameters() if p.dim() == 0}
    if not par.shard_frozen:
        ignored |= {p for p in root.parameters() if not p.requires_grad}
    # the backbone's blocks (transformers decoder layers, whose norms compute in fp32 themselves) gather
    # and compute in the policy's dtype; everything else keeps fp32 parameters under autocast, since a
    # norm layer given bf16 weights and autocast's fp32 input fails on the CPU
    plain = MixedPrecisionPolicy()
    kw = dict(mesh=mesh, offload_policy=offload)
    for name, block in prepare_blocks(model, par, root_part):
        params = set(block.parameters())
        if not params or params <= ignored or not runs_every_step(name, root_part, params):
            continue
        policy = mp if part_of(name, root_part) == "backbone" else plain
        fully_shard(
            block,
            reshard_after_forward=par.reshard_after_forward,
            ignored_params=params & ignored,
            mp_policy=policy,
            **kw,
        )
    fully_shard(root, ignored_params=ignored or None, mp_policy=plain, **kw)
    return ignored


def average_replicated(params: list[nn.Parameter], world_size: int) -> None:
    """Average the gradients of parameters FSDP left replicated over ranks (one all-reduce each)."""
    import torch.distributed as dist

    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world_size)


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` over sharded (DTensor) and plain gradients together; returns the total norm."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g for g in grads if isinstance(g, DTensor)]
    plain = [g for g in grads if not isinstance(g, DTensor)]
    if not sharded:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    parts = []
    for group in (sharded, plain):
        if group:
            n = torch.nn.utils.get_total_norm(group)
            parts.append(n.full_tensor() if isinstance(n, DTensor) else n)
    total = torch.linalg.vector_norm(torch.stack([n.float() for n in parts]))
    # scaled shard by shard: clip_grads_with_norm_'s foreach multiply leaves DTensor gradients unscaled
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        local = local_tensor(g)
        local.mul_(coef.to(local.device, local.dtype))
    return total


def runs_every_step(name: str, root_part: str | None, params: set[nn.Parameter]) -> bool:
    """Whether a block runs the same number of times on every rank at every step, so that it can be a
    unit of its own: FSDP gathers a unit's parameters with a collective each time it runs, and every
    rank must issue the same sequence of them. A component trained on its own runs whole every step; in
    the unified model only the backbone does (an encoder runs once per image batch, and a rank's batch
    may hold cached codes, or no image). Other blocks are sharded within the root unit."""
    if root_part is not None:
        return True
    return part_of(name, None) == "backbone" and all(p.requires_grad for p in params)


def root_trainable(model: nn.Module, par: Parallelism, root_part: str | None) -> list[str]:
    """Names of the trainable parameters ``shard`` leaves to the root unit (not inside a unit block)."""
    units = {n for n, b in blocks(model) if runs_every_step(n, root_part, set(b.parameters()))}
    return [n for n, p in model.named_parameters() if p.requires_grad and not any(n.startswith(u + ".") for u in units)]


def receive_from_rank0(model: nn.Module, full: dict[str, torch.Tensor], device: torch.device) -> None:
    """After sharding, every rank's shards take rank 0's weights (``full``: rank 0's state dict taken
    before sharding; empty elsewhere, where the model was built on the meta device). Collective."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        model.to_empty(device=device)
    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
    set_model_state_dict(model, full, options=opts)
    # buffers travel too, the non-persistent ones (rotary frequencies) included: no state dict holds them
    for buf in model.buffers():
        dist.broadcast(buf, src=0)


def set_gradient_sync(root: nn.Module, enabled: bool) -> None:
    """FSDP: reduce-scatter gradients in this backward (the last micro-batch of a step) or keep them local."""
    root.set_requires_gradient_sync(enabled)


def skeleton(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters live on the meta device (no memory), buffers copied.

    Taken before sharding; after training, ``unsharded`` fills it with the gathered weights, giving back
    a plain module (no FSDP classes or hooks) for saving and for the next stage.
    """
    memo: dict[int, Any] = {
        id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
        for p in model.parameters()
    }
    return copy.deepcopy(model, memo)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every rank gets the full (gathered) state dict of a sharded ``model`` (collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))


def unsharded(sharded: nn.Module, plain: nn.Module, device: torch.device) -> nn.Module:
    """``plain`` (a ``skeleton`` of ``sharded``) holding ``sharded``'s gathered weights (collective)."""
    full = full_state_dict(sharded)
    # gathered tensors may be views into one all-gather buffer; a saved checkpoint wants each its own storage
    copies: dict[int, torch.Tensor] = {}  # tied weights (embeddings and LM head) stay one tensor
    full = {k: copies.setdefault(id(v), v.to(device).clone()) for k, v in full.items()}
    missing, unexpected = plain.load_state_dict(full, strict=False, assign=True)
    _retie(plain)
    live = dict(sharded.named_buffers())
    for name, buf in list(plain.named_buffers()):
        if buf.is_meta:  # a rank that built the model on the meta device: its copy's buffers come from the live model
            owner, _, leaf = name.rpartition(".")
            plain.get_submodule(owner)._buffers[leaf] = live[name].detach().clone()
    meta = [n for n, p in plain.named_parameters() if p.is_meta]
    if meta or unexpected:
        raise RuntimeError(f"gathering the sharded model left {meta[:5]} unfilled, {unexpected[:5]} unexpected")
    return plain


def _retie(model: nn.Module) -> None:
    """Tie weights again where the model ties them (``load_state_dict(assign=True)`` assigns each name
    its own tensor): transformers models re-tie with ``tie_weights``."""
    for module in model.modules():
        tie = getattr(module, "tie_weights", None)
        if callable(tie) and hasattr(module, "get_input_embeddings"):
            tie()


def local_rows(grad: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The local part of a (possibly row-sharded DTensor) gradient and the global index of its first row."""
    from torch.distributed.tensor import DTensor

    if not isinstance(grad, DTensor):
        return grad, 0
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _, offset = compute_local_shape_and_global_offset(grad.shape, grad.device_mesh, grad.placements)
    return grad.to_local(), int(offset[0]) if len(offset) else 0


def zero_rows_below(param: nn.Parameter, first: int) -> None:
    """Zero the gradient of rows ``< first`` (kept rows of an embedding whose new rows train)."""
    if param.grad is None:
        return
    local, start = local_rows(param.grad)
    stop = min(first - start, local.shape[0])
    if stop > 0:
        local[:stop] = 0


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a plain tensor as it is)."""
    return t.to_local() if hasattr(t, "to_local") else t
