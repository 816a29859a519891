"""How a unified model samples each image task, read from a recipe's ``eval.options``.

One place for what ``illume-kit eval`` scores with and what ``illume-kit generate`` / ``edit``
draw with. Torch-free: the CLI builds its ``--help`` from it.

``sampling: structured`` (the default) passes ``cfg`` and the per-level keys to the structured
sampler as they are, and ``decode_loop`` other than dynamic as its ``cache`` / ``compile``.
``sampling: official`` adds the mode and its own keys (``rewarp``, ``repetition_penalty``); a
per-level key the options leave out takes the official recommendation for the task
(``OFFICIAL_SAMPLING_DEFAULTS``), and a ``top_k`` given as null is off (0), as in the structured
sampler.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from illume_kit.core.options import OFFICIAL_SAMPLING_DEFAULTS, EvalOptions

# task -> (the eval.options key of its guidance scale, the scale when the recipe names none)
GUIDANCE = {
    task: (key, EvalOptions.model_fields[key].default) for task, key in (("generate", "cfg"), ("edit", "edit_cfg"))
}
# per-level sampling keys passed through to the sampler
SAMPLING_KEYS = ("temperature", "top_k", "top_p")
# keys of the official mode only
OFFICIAL_KEYS = ("rewarp", "repetition_penalty")
# eval.options.decode_loop -> the structured sampler's keyword arguments
LOOPS = {"dynamic": {}, "static": {"cache": "static"}, "compiled": {"cache": "static", "compile": True}}


def _top_k_off(value: Any) -> Any:
    """The official mode reads top-k 0 as off and None as "not given": a null top-k is off."""
    if isinstance(value, Mapping):
        return {k: 0 if v is None else v for k, v in value.items()}
    return 0 if value is None else value


def task_sampling(options: EvalOptions | Mapping[str, Any], task: str) -> dict[str, Any]:
    """``cfg`` for ``task`` (``generate`` or ``edit``) plus the sampling keys, from ``eval.options``
    (a mapping is validated as ``EvalOptions``, defaults filled in); with ``sampling: official`` also
    ``sampling`` and the official keys."""
    opts = EvalOptions.model_validate(options)
    out = {"cfg": getattr(opts, GUIDANCE[task][0]), **{k: getattr(opts, k) for k in SAMPLING_KEYS}}
    if opts.sampling == "official":
        for key, default in zip(SAMPLING_KEYS, OFFICIAL_SAMPLING_DEFAULTS[task]):
            if key not in opts.model_fields_set:
                out[key] = default
            elif key == "top_k":
                out[key] = _top_k_off(out[key])
        out.update({"sampling": "official", **{k: getattr(opts, k) for k in OFFICIAL_KEYS}})
    elif opts.decode_loop != "dynamic":
        out.update(LOOPS[opts.decode_loop])
    return out
