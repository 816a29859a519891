"""A diffusers pipeline folder read completely: ``unet/``, ``vae/``, ``scheduler/``, ``model_index.json``.

What the diffusion detokenizer takes from such a folder (ILLUME+'s released SDXL decoder is one):
- ``unet/``: config and weights (``diffusion_pytorch_model.safetensors``, or its sharded index);
- ``vae/``: config and weights, when the detokenizer denoises in a VAE latent;
- ``scheduler/scheduler_config.json``: the sampling scheduler. Its class comes from
  ``model_index.json`` when there is one (that is the class diffusers' ``from_pretrained`` builds;
  the file's own ``_class_name`` is informational there), else from the file's ``_class_name``. The
  class is looked up by name in ``SCHEDULER_CLASSES`` (a name, never an import of what a file names);
  the betas, prediction type and training steps become the detokenizer's params, everything else
  (timestep spacing, steps offset, ...) its ``scheduler_config``.

Every file is checked before any model is built: a missing or unreadable file is one
``DiffusersFolderError`` (a ``ValueError``) naming it. Weights are read as safetensors only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# diffusers scheduler class -> the detokenizer's ``scheduler`` name (same training process and target)
SCHEDULER_CLASSES = {
    "DDPMScheduler": "ddpm",
    "DDIMScheduler": "ddim",
    "EulerDiscreteScheduler": "euler",
    "DPMSolverMultistepScheduler": "dpm-solver++",
    "UniPCMultistepScheduler": "unipc",
    "FlowMatchEulerDiscreteScheduler": "flow-match-euler",
}
CLASS_OF_SCHEDULER = {v: k for k, v in SCHEDULER_CLASSES.items()}
# scheduler config keys that are detokenizer params (the training process reads them too)
_SCHEDULER_FIELDS = {
    "num_train_timesteps": "num_train_timesteps",
    "beta_schedule": "beta_schedule",
    "beta_start": "beta_start",
    "beta_end": "beta_end",
    "prediction_type": "prediction_type",
    "shift": "flow_shift",
}
WEIGHTS = "diffusion_pytorch_model.safetensors"


class DiffusersFolderError(ValueError):
    """A diffusers folder lacks a file, or a file in it is not what it should be."""


@dataclass
class PipelineFolder:
    """What a pipeline folder holds, checked file by file (see ``read_pipeline_folder``)."""

    path: Path
    unet_config: dict[str, Any]
    vae_config: dict[str, Any] | None
    scheduler_class: str | None
    scheduler_config: dict[str, Any] = field(default_factory=dict)

    def scheduler_params(self) -> dict[str, Any]:
        """The scheduler as ``DiffusionDetokenizerParams`` fields ({} when the folder has none)."""
        if self.scheduler_class is None:
            return {}
        out: dict[str, Any] = {"scheduler": SCHEDULER_CLASSES[self.scheduler_class]}
        rest: dict[str, Any] = {}
        for key, value in self.scheduler_config.items():
            if key.startswith("_"):
                continue
            if key in _SCHEDULER_FIELDS and value is not None:
                out[_SCHEDULER_FIELDS[key]] = value
            else:
                rest[key] = value
        out["scheduler_config"] = rest
        return out


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise DiffusersFolderError(f"{path}: missing ({what})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DiffusersFolderError(f"{path}: not valid JSON ({exc}); expected {what}") from None
    if not isinstance(data, dict):
        raise DiffusersFolderError(f"{path}: expected a JSON object ({what}), got {type(data).__name__}")
    return data


def _check_safetensors(path: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as exc:  # safetensors raises its own error type for a damaged header or size
        raise DiffusersFolderError(f"{path}: not a readable .safetensors file ({exc})") from None


def check_weights(model_dir: Path) -> None:
    """The model folder's safetensors weights exist and their headers read (shards too)."""
    single, index = model_dir / WEIGHTS, model_dir / (WEIGHTS + ".index.json")
    if single.is_file():
        _check_safetensors(single)
        return
    if index.is_file():
        shards = read_json(index, "the index of a sharded safetensors checkpoint").get("weight_map")
        if not isinstance(shards, dict):
            raise DiffusersFolderError(f"{index}: no 'weight_map' object (the index of a sharded checkpoint)")
        for shard in sorted(set(shards.values())):
            if not (model_dir / shard).is_file():
                raise DiffusersFolderError(f"{model_dir / shard}: missing (a shard named by {index.name})")
            _check_safetensors(model_dir / shard)
        return
    others = sorted(p.name for p in model_dir.glob("diffusion_pytorch_model*"))
    hint = f" (found {', '.join(others)}: only safetensors weights are read)" if others else ""
    raise DiffusersFolderError(f"{single}: missing, the model's weights{hint}")


def _scheduler(folder: Path) -> tuple[str | None, dict[str, Any]]:
    sdir = folder / "scheduler"
    index_path = folder / "model_index.json"
    index = read_json(index_path, "the pipeline's component list") if index_path.exists() else {}
    if not sdir.exists():
        if "scheduler" in index:
            raise DiffusersFolderError(
                f"{sdir / 'scheduler_config.json'}: missing (model_index.json lists a scheduler)"
            )
        return None, {}
    config = read_json(sdir / "scheduler_config.json", "the scheduler's diffusers config")
    entry = index.get("scheduler")
    if entry is not None:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str)):
            raise DiffusersFolderError(f"{index_path}: 'scheduler' should be [library, class name], got {entry!r}")
        name, where = entry[1], index_path
    else:
        name, where = config.get("_class_name"), sdir / "scheduler_config.json"
    if name not in SCHEDULER_CLASSES:
        raise DiffusersFolderError(
            f"{where}: scheduler class {name!r} is not supported (supported: {', '.join(SCHEDULER_CLASSES)})"
        )
    return name, config


def read_pipeline_folder(folder: str | Path, need_weights: bool = True) -> PipelineFolder:
    """Check and read a diffusers pipeline folder (``unet/`` required; ``vae/``, ``scheduler/`` and
    ``model_index.json`` when present). ``need_weights=False`` reads the configs only (meta builds)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DiffusersFolderError(f"{folder}: not a folder (expected a diffusers pipeline folder with unet/)")
    unet_config = read_json(folder / "unet" / "config.json", "the UNet's diffusers config")
    if need_weights:
        check_weights(folder / "unet")
    vae_config = None
    if (folder / "vae").exists():
        vae_config = read_json(folder / "vae" / "config.json", "the VAE's diffusers config")
        if need_weights:
            check_weights(folder / "vae")
    name, sched = _scheduler(folder)
    return PipelineFolder(folder, unet_config, vae_config, name, sched)


def init_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """A diffusers config without its private ``_*`` keys."""
    return {k: v for k, v in config.items() if not k.startswith("_")}
