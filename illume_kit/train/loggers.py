"""Experiment loggers: where a run's logged rows (and eval images) go, besides the progress display.

``run.loggers`` names them (``illume_kit.core.schema.LOGGERS``):

- ``jsonl``: ``metrics.jsonl`` in the output folder, one JSON row per logged step. The trainer always
  writes it (a resume truncates it, sweeps read their progress from it), so the name is accepted and
  adds nothing;
- ``tensorboard``: TensorBoard event files in ``<output folder>/tb`` (``tensorboard --logdir runs/NAME``
  shows every stage); a resumed run drops the events its checkpoint is older than;
- ``wandb``: a Weights & Biases run in ``<output folder>/wandb``, offline unless ``WANDB_MODE`` says
  otherwise (``wandb sync`` uploads an offline run later).

The last two come with ``pip install 'illume-kit[loggers]'``. Only rank 0 logs: the trainer opens
loggers on its main process alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from illume_kit.core.extras import require

TB_DIR = "tb"
WANDB_DIR = "wandb"


class Logger(Protocol):
    """Receives logged rows (scalars by tag) and images (HxWx3 uint8 arrays) at optimizer steps."""

    def scalars(self, step: int, values: Mapping[str, float]) -> None: ...

    def image(self, tag: str, step: int, image: np.ndarray) -> None: ...

    def close(self) -> None: ...


def ensure_available(names: list[str]) -> None:
    """Import what the named loggers need, or raise ``MissingExtra`` naming the extra (before a run starts)."""
    for name in names:
        if name == "tensorboard":
            _tensorboard()
        elif name == "wandb":
            require("wandb", "loggers", "run.loggers: wandb")


def _tensorboard():
    # torch's writer imports the tensorboard package; ask for that one by name so the message names it
    require("tensorboard", "loggers", "run.loggers: tensorboard")
    return require("torch.utils.tensorboard", "loggers", "run.loggers: tensorboard")


class TensorBoardLogger:
    def __init__(self, folder: Path, resumed_at: int | None = None):
        tb = _tensorboard()
        # purge_step: TensorBoard hides events at or after it from earlier files (the resumed run logs them again)
        purge = resumed_at + 1 if resumed_at is not None else None
        self.writer = tb.SummaryWriter(log_dir=str(folder), purge_step=purge)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        for tag, v in values.items():
            self.writer.add_scalar(tag, float(v), global_step=step)
        self.writer.flush()

    def image(self, tag: str, step: int, image: np.ndarray) -> None:
        self.writer.add_image(tag, image, global_step=step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    def __init__(self, folder: Path, name: str, config: Mapping[str, Any] | None = None):
        self.wandb = require("wandb", "loggers", "run.loggers: wandb")
        folder.mkdir(parents=True, exist_ok=True)
        self.run = self.wandb.init(
            dir=str(folder),
            name=name,
            project=os.environ.get("WANDB_PROJECT", "illume-kit"),
            mode=os.environ.get("WANDB_MODE", "offline"),  # nothing leaves the machine unless asked for
            config=dict(config or {}),
            reinit="create_new",  # one run per stage in one process
        )

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log({k: float(v) for k, v in values.items()}, step=step)

    def image(self, tag: str, step: int, image: np.ndarray) -> None:
        self.run.log({tag: self.wandb.Image(image)}, step=step)

    def close(self) -> None:
        self.run.finish()


def open_loggers(
    names: list[str],
    folder: Path,
    name: str,
    resumed_at: int | None = None,
    config: Mapping[str, Any] | None = None,
) -> list[Logger]:
    """The loggers ``names`` asks for besides metrics.jsonl, writing under ``folder``.

    ``resumed_at``: the step a resumed run continues from (TensorBoard drops later events); ``name``
    names the wandb run; ``config`` is recorded with it."""
    out: list[Logger] = []
    for n in names:
        if n == "tensorboard":
            out.append(TensorBoardLogger(folder / TB_DIR, resumed_at))
        elif n == "wandb":
            out.append(WandbLogger(folder / WANDB_DIR, name, config))
    return out


def as_image(value: Any) -> np.ndarray | None:
    """An HxWx3 (or HxW) uint8 array from an image-like value (a PIL image, an array, a PNG path), else None."""
    if isinstance(value, (str, os.PathLike)) and str(value).lower().endswith(".png"):
        from PIL import Image

        with Image.open(value) as im:
            return np.asarray(im.convert("RGB"))
    if hasattr(value, "convert") and hasattr(value, "size"):  # a PIL image
        return np.asarray(value.convert("RGB"))
    if isinstance(value, np.ndarray) and value.ndim in (2, 3):
        arr = value if value.ndim == 3 else np.repeat(value[..., None], 3, axis=2)
        if arr.dtype != np.uint8:
            arr = (np.clip(arr, 0.0, 1.0) * 255).round().astype(np.uint8)
        return arr
    return None


def log_evaluation(
    names: list[str],
    folder: str | os.PathLike,
    metrics: Mapping[str, Any],
    images: list[str | os.PathLike],
    step: int = 0,
) -> list[str]:
    """Send an evaluation's numeric metrics and its PNG grids (tagged ``eval/<name>``) to the loggers
    ``names`` asks for, writing under ``folder`` (``illume-kit eval --loggers``). Returns the folders written."""
    folder = Path(folder)
    opened = open_loggers(names, folder, name="eval")
    scalars = {f"eval/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    try:
        for logger in opened:
            if scalars:
                logger.scalars(step, scalars)
            for path in images:
                img = as_image(path)
                if img is not None:
                    logger.image(f"eval/{Path(path).stem}", step, img)
    finally:
        for logger in opened:
            logger.close()
    return [str(folder / d) for n, d in (("tensorboard", TB_DIR), ("wandb", WANDB_DIR)) if n in names]
