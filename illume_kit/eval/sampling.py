"""How a unified model samples each image task, read from a recipe's ``eval.options``.

One place for what ``illume-kit eval`` scores with and what ``illume-kit generate`` / ``edit``
draw with. Torch-free: the CLI builds its ``--help`` from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from illume_kit.core.options import EvalOptions

# task -> (the eval.options key of its guidance scale, the scale when the recipe names none)
GUIDANCE = {
    task: (key, EvalOptions.model_fields[key].default) for task, key in (("generate", "cfg"), ("edit", "edit_cfg"))
}
# per-level sampling keys passed through to the structured sampler
SAMPLING_KEYS = ("temperature", "top_k", "top_p")


def task_sampling(options: EvalOptions | Mapping[str, Any], task: str) -> dict[str, Any]:
    """``cfg`` for ``task`` (``generate`` or ``edit``) plus the sampling keys, from ``eval.options``
    (a mapping is validated as ``EvalOptions``, defaults filled in)."""
    opts = EvalOptions.model_validate(options)
    return {"cfg": getattr(opts, GUIDANCE[task][0]), **{k: getattr(opts, k) for k in SAMPLING_KEYS}}
