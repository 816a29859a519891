"""Training checkpoints: atomic folders, safetensors weights, pickle-free training state.

A checkpoint is ``<root>/step_00000100/`` holding ``model.safetensors`` (plus one file per extra
module, e.g. ``disc.safetensors``) and ``training_state.pt`` (optimizer and scheduler states, step,
RNG states, data position). ``<root>/latest`` is a one-line text file naming the newest folder.

Why atomic: a run killed mid-write must never leave a folder that looks complete. Each checkpoint is
written into a hidden temporary folder beside its final place, every file fsynced, then renamed
into place with ``os.replace``; ``latest`` is rewritten the same way (temp file + rename).

Why pickle-free: ``training_state.pt`` is read back with ``torch.load(weights_only=True)`` only,
so it holds nothing but tensors, numbers, strings, lists and dicts. RNG states (python's tuple,
numpy's legacy state) are converted to tensors on the way in and back on the way out.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model

LATEST = "latest"
STATE_FILE = "training_state.pt"


def step_dirname(step: int) -> str:
    return f"step_{step:08d}"


# atomic writes live in the core (checkpoint folders use them too)
from illume_kit.core.atomic import atomic_dir, atomic_write_text  # noqa: E402,F401

# --------------------------------------------------------------------------- RNG states


def capture_rng() -> dict[str, Any]:
    """All RNG states this process uses, as tensors and numbers only."""
    py = random.getstate()  # (version, tuple of 625 ints, gauss_next)
    np_state = np.random.get_state(legacy=True)  # ('MT19937', keys, pos, has_gauss, cached)
    state = {
        "torch": torch.get_rng_state(),
        "python": torch.tensor(py[1], dtype=torch.int64),
        "python_version": int(py[0]),
        "python_gauss": py[2],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_cached": float(np_state[4]),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(int(x) for x in state["python"].tolist()), state["python_gauss"]))
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_cached"],
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- save / load


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    modules: Mapping[str, torch.nn.Module],
    state: Mapping[str, Any],
    keep_last: int = 1,
    extra_writer=None,
) -> Path:
    """Write ``root/step_XXXXXXXX`` atomically, point ``root/latest`` at it, prune older ones.

    ``modules`` maps a file stem to a module (``{"model": m, "disc": d}``); ``state`` must be
    weights_only-loadable. ``extra_writer(tmp_folder)`` may add files before the rename.
    """
    root = Path(root)
    final = root / step_dirname(step)
    with atomic_dir(final) as tmp:
        for name, module in modules.items():
            save_model(module, str(tmp / f"{name}.safetensors"))
        torch.save(dict(state), tmp / STATE_FILE)
        if extra_writer is not None:
            extra_writer(tmp)
    atomic_write_text(root / LATEST, final.name + "\n")
    _prune(root, keep_last)
    return final


def _prune(root: Path, keep_last: int) -> None:
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in steps[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The folder ``root/latest`` names, or None when there is no complete checkpoint."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    folder = Path(root) / pointer.read_text().strip()
    return folder if (folder / STATE_FILE).is_file() else None


def load_checkpoint(
    folder: str | os.PathLike, modules: Mapping[str, torch.nn.Module], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load weights into ``modules`` (strict) and return the training state dict."""
    folder = Path(folder)
    for name, module in modules.items():
        missing, unexpected = load_model(
            module, str(folder / f"{name}.safetensors"), strict=False, device=str(map_location)
        )
        if missing or unexpected:
            raise RuntimeError(
                f"{folder / name}.safetensors does not match the module: "
                f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
    # always to CPU: RNG states must be CPU tensors; optimizers move their state to the params
    return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- sharded (DCP) checkpoints

SHARDED = "dcp"  # the torch.distributed.checkpoint folder inside a step folder


class ShardedCheckpointError(ValueError):
    """A sharded checkpoint cannot be loaded into this run (names the keys and what to change)."""


# what a DCP ``.metadata`` pickle may name: the checkpoint metadata's own dataclasses and torch's
# plain value types; anything else (a function, a class with side effects) refuses the file
_METADATA_MODULES = ("torch.distributed.checkpoint.",)
_METADATA_NAMES = {
    ("collections", "OrderedDict"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
}


def _safe_unpickler():
    import pickle

    class _Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if module.startswith(_METADATA_MODULES) or (module, name) in _METADATA_NAMES:
                return super().find_class(module, name)
            if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
                return getattr(torch, name)
            raise pickle.UnpicklingError(f"names {module}.{name}, which a checkpoint's metadata never holds")

    return _Unpickler


def sharded_reader(folder: Path):
    """A DCP reader of ``folder`` whose ``.metadata`` (a pickle) may only name checkpoint metadata types."""
    import pickle

    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class _Reader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            path = Path(self.path) / ".metadata"
            try:
                with open(path, "rb") as f:
                    metadata = _safe_unpickler()(f).load()
            except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
                raise ShardedCheckpointError(
                    f"{path}: not a checkpoint's metadata ({exc}); refusing to load it"
                ) from None
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return _Reader(str(folder))


def is_sharded(folder: str | os.PathLike) -> bool:
    return (Path(folder) / SHARDED / ".metadata").is_file()


def _parts_state(parts: Mapping[str, tuple[torch.nn.Module, torch.optim.Optimizer]]) -> dict[str, Any]:
    """Model (trainable parameters and buffers only: frozen parts never change) and optimizer states,
    keyed by parameter names, for every part; DTensor shards under FSDP, plain tensors otherwise."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(ignore_frozen_params=True)
    out: dict[str, Any] = {}
    for name, (module, opt) in parts.items():
        msd, osd = get_state_dict(module, [opt], options=opts)
        # buffers of a part with no trainable parameter (a frozen tokenizer's codebooks) never change either
        training = {n.split(".", 1)[0] for n, p in module.named_parameters() if p.requires_grad}
        msd = {k: v for k, v in msd.items() if k.split(".", 1)[0] in training}
        out[name] = {"model": msd, "optim": osd}
    return out


def save_sharded_checkpoint(
    root: str | os.PathLike,
    step: int,
    parts: Mapping[str, tuple[torch.nn.Module, torch.optim.Optimizer]],
    state: Mapping[str, Any],
    dist_info: Any,
    keep_last: int = 1,
    extra_writer=None,
) -> Path | None:
    """Write ``root/step_XXXXXXXX`` with a DCP folder every rank writes its shards into (collective).

    Rank 0 owns the temporary folder and renames it into place once every rank has written, so the
    checkpoint is atomic as the unsharded one is. ``state`` (step, RNG states, ...) is written by rank 0.
    """
    import contextlib

    import torch.distributed.checkpoint as dcp

    from illume_kit.train import distributed as D

    root = Path(root)
    final = root / step_dirname(step)
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_dir(final)) if dist_info.is_main else None
        tmp = Path(D.broadcast_object(str(tmp) if tmp is not None else None, dist_info))
        dcp.save(
            _parts_state(parts), storage_writer=dcp.FileSystemWriter(str(tmp / SHARDED)), no_dist=not dist_info.enabled
        )
        D.barrier(dist_info)
        if dist_info.is_main:
            torch.save(dict(state), tmp / STATE_FILE)
            if extra_writer is not None:
                extra_writer(tmp)
    if dist_info.is_main:
        atomic_write_text(root / LATEST, final.name + "\n")
        _prune(root, keep_last)
    D.barrier(dist_info)
    return final if dist_info.is_main else None


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def load_sharded_checkpoint(
    folder: str | os.PathLike, parts: Mapping[str, tuple[torch.nn.Module, torch.optim.Optimizer]]
) -> dict[str, Any]:
    """Load a sharded checkpoint into ``parts`` at this run's sharding (any world size; collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    folder = Path(folder)
    target = _parts_state(parts)
    try:
        dcp.load(target, storage_reader=sharded_reader(folder / SHARDED), no_dist=not _distributed())
    except dcp.CheckpointException as exc:
        text = str(exc)
        refused = re.search(r"(\S+\.metadata: not a checkpoint's metadata \(.*?\)); refusing", text)
        if refused:
            raise ShardedCheckpointError(f"{refused.group(1)}: refusing to load it") from None
        missing = sorted(set(re.findall(r"Missing key in checkpoint state_dict: ([^\s'\"]+)", text)))
        if not missing:
            raise ShardedCheckpointError(f"{folder}: cannot be read ({text.strip().splitlines()[-1]})") from None
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ShardedCheckpointError(
            f"{folder}: the checkpoint does not hold what this run trains ({shown}): the recipe changed "
            "which parameters train since it was written. Restore the recipe, or start the stage over "
            "(train without --resume)"
        ) from None
    opts = StateDictOptions(ignore_frozen_params=True, strict=False)
    for name, (module, opt) in parts.items():
        set_state_dict(
            module, [opt], model_state_dict=target[name]["model"], optim_state_dict=target[name]["optim"], options=opts
        )
    return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
