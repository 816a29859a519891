"""What a metric name means for a results table: which way is better, how to print it (torch-free).

Sweeps aggregate runs into a table with better/worse arrows against a baseline; they need each
metric's goal (``max`` or ``min``) and format without importing torch or the code that computes it.
Names are ``family/quantity[/codebook]``: ``code/usage/pixel`` inherits the spec of ``code/usage``,
and any name ending in ``loss`` (``train/loss``, ``disc/loss``) is minimised.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class MetricSpec:
    name: str
    goal: Literal["max", "min"]
    fmt: str = ".4f"
    description: str = ""
    unit: str = ""

    def __post_init__(self) -> None:
        if self.goal not in ("max", "min"):
            raise ValueError(f"metric {self.name!r}: goal must be 'max' or 'min', got {self.goal!r}")

    def format(self, value: float) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        return format(value, self.fmt) + (f" {self.unit}" if self.unit else "")

    def compare(self, value: float, baseline: float, tol: float = 0.0) -> int:
        """+1 if ``value`` is better than ``baseline`` by more than ``tol``, -1 if worse, else 0."""
        diff = value - baseline if self.goal == "max" else baseline - value
        return 0 if abs(diff) <= tol or math.isnan(diff) else (1 if diff > 0 else -1)

    def arrow(self, value: float, baseline: float, tol: float = 0.0) -> str:
        """▲ better, ▼ worse, = same (relative to the goal, not to the sign of the change)."""
        return {1: "▲", -1: "▼", 0: "="}[self.compare(value, baseline, tol)]

    def best(self, values):
        return max(values) if self.goal == "max" else min(values)


def _specs(*specs: MetricSpec) -> dict[str, MetricSpec]:
    return {s.name: s for s in specs}


BUILTIN_METRICS: dict[str, MetricSpec] = _specs(
    MetricSpec("rec/psnr", "max", ".2f", "PSNR of reconstructions, data_range 1.0, per image then averaged", "dB"),
    MetricSpec("rec/ssim", "max", ".4f", "SSIM, gaussian window 11/1.5, data_range 1.0"),
    MetricSpec("rec/ssim2", "max", ".4f", "SSIM with data_range 2.0 (the LlamaGen / ILLUME+ variant)"),
    MetricSpec("rec/mae", "min", ".4f", "mean absolute error of reconstructions in [0, 1]"),
    MetricSpec("rec/mse", "min", ".5f", "mean squared error of reconstructions in [0, 1]"),
    MetricSpec("code/usage", "max", ".3f", "unique codes used over the eval set / codebook size"),
    MetricSpec("code/perplexity", "max", ".1f", "exp(entropy) of the code histogram over the eval set"),
    MetricSpec("code/entropy", "max", ".3f", "entropy of the code histogram (nats)"),
    MetricSpec("sem/cosine", "max", ".4f", "mean cosine between reconstructed and teacher semantic features"),
    MetricSpec("und/accuracy", "max", ".3f", "understanding accuracy on the shapes world"),
    MetricSpec("gen/accuracy", "max", ".3f", "generation accuracy on the shapes world"),
    MetricSpec("edit/accuracy", "max", ".3f", "editing accuracy on the shapes world"),
    MetricSpec("gen/accuracy_nocfg", "max", ".3f", "generation scene accuracy without guidance (cfg 1)"),
    MetricSpec(
        "gen/attributes",
        "max",
        ".3f",
        "generation attribute accuracy: mean of the shape, colour, position and count accuracies",
    ),
    MetricSpec("gen/attributes_nocfg", "max", ".3f", "generation attribute accuracy without guidance (cfg 1)"),
    MetricSpec("gen/shape", "max", ".3f", "generated objects the probe reads with the captioned shape"),
    MetricSpec("gen/colour", "max", ".3f", "generated objects the probe reads with the captioned colour"),
    MetricSpec("gen/size", "max", ".3f", "generated objects the probe reads with the captioned size"),
    MetricSpec("gen/position", "max", ".3f", "captioned objects the probe finds in their cell"),
    MetricSpec("gen/count", "max", ".3f", "generated scenes with the captioned number of objects"),
    MetricSpec("probe/accuracy", "max", ".3f", "attribute probe's scene accuracy on the ground-truth images"),
    MetricSpec(
        "probe/reconstruction",
        "max",
        ".3f",
        "probe's scene accuracy on the images decoded from the ground-truth codes: the ceiling of "
        "gen/accuracy and edit/accuracy that the tokenizer + detokenizer set",
    ),
    MetricSpec(
        "probe/reconstruction_attributes",
        "max",
        ".3f",
        "probe's attribute accuracy on the images decoded from the ground-truth codes (ceiling of gen/attributes)",
    ),
    MetricSpec("ar/bits_per_token", "min", ".3f", "held-out bits per image token of a small AR prior"),
    MetricSpec("train/loss", "min", ".4f", "final training loss"),
    MetricSpec("perf/steps_per_s", "max", ".2f", "training throughput", "step/s"),
    MetricSpec("perf/decode_s_per_image", "min", ".4f", "detokenizer decode time per image", "s"),
    MetricSpec(
        "rec1x/psnr", "max", ".2f", "PSNR of a x2 detokenizer's output downsampled to the token resolution", "dB"
    ),
    MetricSpec("rec1x/ssim", "max", ".4f", "SSIM of a x2 detokenizer's output downsampled to the token resolution"),
    MetricSpec("rec1x/ssim2", "max", ".4f", "SSIM (data_range 2.0) at the token resolution"),
    MetricSpec("rec1x/mae", "min", ".4f", "MAE at the token resolution"),
    MetricSpec("rec1x/mse", "min", ".5f", "MSE at the token resolution"),
    MetricSpec(
        "rfid",
        "min",
        ".3f",
        "Fréchet Inception distance of the reconstructions to the eval images (torch-fidelity's FID Inception-v3)",
    ),
    MetricSpec("fid", "min", ".3f", "Fréchet Inception distance of images generated from the eval captions"),
    MetricSpec("lpips", "min", ".4f", "mean LPIPS distance of the reconstructions to the eval images"),
    MetricSpec(
        "clip-score", "max", ".2f", "mean 100 * max(cos, 0) of CLIP embeddings of generated images and captions"
    ),
)

# short names `illume-kit eval --metrics` accepts for a full metric name
ALIASES: dict[str, str] = {"psnr": "rec/psnr", "ssim": "rec/ssim"}


def select_metrics(names: list[str] | tuple[str, ...], families: list[str] | tuple[str, ...]) -> list[str]:
    """``--metrics`` entries with aliases resolved; each must be an alias, or a name whose family
    (the part before the first ``/``) is one of ``families``. ValueError listing the known names."""
    out: list[str] = []
    unknown: list[str] = []
    for raw in names:
        name = ALIASES.get(raw.strip(), raw.strip())
        if name.split("/", 1)[0] in families:
            out.append(name)
        else:
            unknown.append(raw)
    if unknown:
        known = sorted({*ALIASES, *families, *(n for n in BUILTIN_METRICS if n.split("/", 1)[0] in families)})
        raise ValueError(f"--metrics: unknown metric {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    return list(dict.fromkeys(out))


def selected(name: str, chosen: list[str] | tuple[str, ...]) -> bool:
    """Whether metric ``name`` is one of ``chosen`` or under one of them (``code`` chooses ``code/usage/pixel``)."""
    return any(name == c or name.startswith(c + "/") for c in chosen)


def metric_spec(name: str, extra: Mapping[str, MetricSpec] | None = None) -> MetricSpec:
    """The spec for ``name`` (exact, then its ``/``-prefixes, then the ``*loss`` rule)."""
    table = dict(BUILTIN_METRICS) | dict(extra or {})
    parts = name.split("/")
    for i in range(len(parts), 0, -1):
        spec = table.get("/".join(parts[:i]))
        if spec is not None:
            return spec if spec.name == name else MetricSpec(name, spec.goal, spec.fmt, spec.description, spec.unit)
    if name.endswith("loss"):
        return MetricSpec(name, "min", ".4f", "a loss")
    close = difflib.get_close_matches(name, list(table), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise KeyError(f"unknown metric {name!r}.{hint} (known: {', '.join(sorted(table))})")
