"""DistributedDataParallel plumbing for runs launched with ``torchrun``.

torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (and the rendezvous address); a plain
``python`` launch sets none and everything here degrades to one process. The backend follows the
device: NCCL on CUDA, gloo on CPU (which is how the tests run two ranks on a laptop).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # True when setup() created the process group (so teardown ends it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """``None``/``"auto"``: the local rank's GPU when CUDA is available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def world_size() -> int:
    """Processes of this launch (``torchrun`` sets WORLD_SIZE), before any process group exists."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def setup(device: str | torch.device | None = None) -> DistInfo:
    """Read the torchrun environment; init the process group when WORLD_SIZE > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistInfo(device=dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        owns = True
    return DistInfo(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=dev, owns_group=owns
    )


def teardown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        if info.device.type == "cuda":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def mean_across_ranks(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Average logged scalars over the ranks that logged them (a task's loss is absent where a rank's
    batches drew no sample of that task): the key sets are gathered first, so every rank all-reduces
    the same vector."""
    if not info.enabled:
        return values
    keys = sorted(set().union(*gather_objects(sorted(values), info)))
    if not keys:
        return values
    t = torch.tensor(
        [[float(values.get(k, 0.0)), float(k in values)] for k in keys], dtype=torch.float64, device=info.device
    )
    dist.all_reduce(t)
    return {k: s / n for k, (s, n) in zip(keys, t.tolist())}


def sum_across_ranks(value: float, info: DistInfo) -> float:
    """The sum of one number over ranks (the number itself in a single process)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return float(t.item())


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` (in rank order) on every rank; ``[obj]`` in a single process."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def wrap_ddp(module: torch.nn.Module, info: DistInfo, find_unused_parameters: bool = False):
    """DDP-wrap ``module`` (which must already be on ``info.device``) when running multi-process."""
    if not info.enabled or not any(p.requires_grad for p in module.parameters()):
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused_parameters)
