"""How a unified model samples each image task, read from a recipe's ``eval.options``.

One place for what ``illume-kit eval`` scores with and what ``illume-kit generate`` / ``edit``
draw with. Torch-free: the CLI builds its ``--help`` from it.
"""

from __future__ import annotations

from typing import Any, Mapping

# task -> (the eval.options key of its guidance scale, the scale when the recipe names none)
GUIDANCE = {"generate": ("cfg", 2.0), "edit": ("edit_cfg", 1.5)}
# per-level sampling keys passed through to the structured sampler when the recipe sets them
SAMPLING_KEYS = ("temperature", "top_k", "top_p")


def task_sampling(options: Mapping[str, Any], task: str) -> dict[str, Any]:
    """``cfg`` for ``task`` (``generate`` or ``edit``) plus the sampling keys ``options`` sets."""
    key, default = GUIDANCE[task]
    out = {"cfg": float(options[key]) if options.get(key) is not None else default}
    out.update({k: options[k] for k in SAMPLING_KEYS if options.get(k) is not None})
    return out
