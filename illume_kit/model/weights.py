"""Component weights as safetensors: one ``model.safetensors`` per component folder.

Strict loading: a file that misses a key of the module, or has one it lacks, is refused with the
first few names of each, so a checkpoint of other components or params never loads silently. The one
exception is a recipe's ``weights:`` file and a component's training-only parts
(``TrainingOnlyWeights``, e.g. a discriminator): released inference weights do not carry them.
"""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from illume_kit.core.manifest import CheckpointError
from illume_kit.core.protocols import SavesExtra, TrainingOnlyWeights


def save_module(module, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_model(module, str(folder / "model.safetensors"))
    if isinstance(module, SavesExtra):
        module.save_extra(folder)


def load_module(
    module, folder: Path, what: str, filename: str = "model.safetensors", optional: tuple[str, ...] = ()
) -> None:
    """Load ``folder/filename`` into ``module``, strictly except for keys under the ``optional`` prefixes."""
    path = folder / filename
    if not path.is_file():
        raise CheckpointError(f"{what}: weight file {path} is missing")
    try:
        missing, unexpected = load_model(module, str(path), strict=False)
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"{what}: weight file {path} is corrupt or does not fit: {str(exc).splitlines()[0]}"
        ) from exc
    missing = [k for k in missing if not k.startswith(optional)]
    unexpected = [k for k in unexpected if not k.startswith(optional)]
    if missing or unexpected:
        raise CheckpointError(
            f"{what}: weight file {path} does not match the component "
            f"(missing: {', '.join(sorted(missing)[:5]) or 'none'}; "
            f"unexpected: {', '.join(sorted(unexpected)[:5]) or 'none'})"
        )
    check_finite(module, what, path)


def check_finite(module, what: str, path: Path) -> None:
    """CheckpointError naming the first tensor that holds NaN or infinity (one pass over the weights).

    Parameters must be finite; buffers may hold -inf (attention masks) but never NaN. A model with
    such weights answers with nothing or fails inside sampling, far from the cause: a training run
    that diverged, or a damaged file.
    """
    import torch

    tensors = [(n, t, True) for n, t in module.named_parameters()] + [(n, t, False) for n, t in module.named_buffers()]
    for name, t, param in tensors:
        if not t.is_floating_point():
            continue
        bad = ~torch.isfinite(t) if param else torch.isnan(t)
        if bool(bad.any()):
            kind = "NaN" if bool(torch.isnan(t).any()) else "infinite values"
            raise CheckpointError(
                f"{what}: the checkpoint's weights are not finite: tensor {name!r} in {path} holds {kind}. "
                "Weights trained past a diverging loss, or a damaged file: use an earlier checkpoint of the run "
                "(stages/<stage>/checkpoints) or train again with a smaller lr"
            )


def load_component_weights(module, path: str | Path, section: str) -> None:
    """Load a component's weights from a ``.safetensors`` file, a component folder holding
    ``model.safetensors``, or a checkpoint folder holding ``<section>/model.safetensors``."""
    path = Path(path).expanduser()
    optional = tuple(module.training_only_prefixes) if isinstance(module, TrainingOnlyWeights) else ()
    if path.is_dir():
        sub = path / section if (path / section / "model.safetensors").is_file() else path
        load_module(module, sub, f"{section} weights", optional=optional)
        return
    if not path.is_file():
        raise CheckpointError(f"{section}.weights: {path} does not exist (a .safetensors file or a checkpoint folder)")
    load_module(module, path.parent, f"{section} weights", path.name, optional=optional)
