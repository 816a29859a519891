"""A first-order estimate of the memory a recipe needs, from its validated params (torch-free).

``compose`` builds tensors whose sizes the params name: codebooks (codes x code width), embedding
tables (vocab x width), transformer blocks (layers x width^2), convolution stacks (channels^2), and
training holds activations of images of the data's size. A recipe that validates can still ask for
terabytes; this estimate refuses it at ``validate``/``compose``/``train`` with the keys that drive
it, before anything is allocated. It counts the dominant terms only, so it is a lower bound of the
real footprint, not a prediction.

A component's ``Params`` may define ``estimate_elements(self) -> dict[str, int]`` (a key of its
params, or a few joined by `` x ``, -> parameter count) to replace the generic rules below, which
read the field names every built-in uses (``*codebook_size``, ``*code_dim``, ``vocab_size``,
``hidden_size``, ``num_layers``, ``channels``, ...). The override: ``ILLUME_KIT_ALLOW_LARGE=1`` (or
``--allow-large`` on ``compose``/``train``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ENV = "ILLUME_KIT_ALLOW_LARGE"
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
# AdamW trains with weights + gradients + two moments
TRAIN_FACTOR = 4
# activations kept per image pixel and channel of the widest convolution, over the layers of a
# tokenizer's encoder and decoder (first order)
ACTIVATION_LAYERS = 4


@dataclass
class Term:
    keys: str  # the recipe key(s) driving the term, joined by " x "
    elements: int  # parameters (or activation values)
    bytes_per: int = 4

    @property
    def nbytes(self) -> int:
        return self.elements * self.bytes_per


def allowed_large() -> bool:
    return os.environ.get(ENV, "").strip().lower() not in ("", "0", "false", "no")


def machine_memory() -> int | None:
    """Physical memory of this machine in bytes (None where the platform does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def _int(d: Mapping[str, Any], *keys: str) -> tuple[str, int] | None:
    for k in keys:
        v = d.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return k, v
    return None


def _ints(v: Any) -> list[int]:
    if isinstance(v, list):
        return [x for item in v for x in _ints(item)]
    return [v] if isinstance(v, int) and not isinstance(v, bool) else []


def generic_terms(d: Mapping[str, Any], path: str) -> list[Term]:
    """Terms of one params mapping (nested component references recursed into)."""
    out: list[Term] = []
    p = f"{path}." if path else ""
    # codebooks: <prefix>codebook_size x the matching code width
    for k, v in d.items():
        if not (k.endswith("codebook_size") and isinstance(v, int) and v > 0):
            continue
        pre = k[: -len("codebook_size")]
        width = _int(
            d, pre + "code_dim", pre + "codebook_dim", "codebook_dim", "frozen_codebook_dim", "dim", "code_dim"
        )
        levels = 1 if d.get("shared_codebook") else (_int(d, "num_quantizers") or ("", 1))[1]
        n = v * (width[1] if width else 1) * levels
        out.append(Term(f"{p}{k}" + (f" x {p}{width[0]}" if width else ""), n))
    # transformer stacks: layers x (attention + MLP) at the block width
    width = _int(d, "hidden_size", "embed_dim", "semantic_width", "width")
    if width:
        wk, w = width
        layers = _int(d, "num_layers", "depth")
        if layers is None and "width" in wk:
            pair = [k for k in (wk.replace("width", "encoder_blocks"), wk.replace("width", "decoder_blocks")) if k in d]
            count = sum(v for k in pair if isinstance(v := d.get(k), int))
            layers = (f" + {p}".join(pair), count) if pair else None
        if layers and layers[1] > 0:
            inner = (_int(d, "intermediate_size") or ("", 4 * w))[1]
            out.append(Term(f"{p}{wk} x {p}{layers[0]}", layers[1] * (4 * w * w + 3 * w * inner)))
        vocab = _int(d, "vocab_size")
        if vocab:
            tied = d.get("tie_word_embeddings", True)
            out.append(Term(f"{p}vocab_size x {p}{wk}", vocab[1] * w * (1 if tied else 2)))
        pos = _int(d, "max_position_embeddings")
        if pos:
            out.append(Term(f"{p}max_position_embeddings x {p}{wk}", pos[1] * w))
    # convolution stacks: the widest level's 3x3 convolutions
    for base, mult, blocks in (
        ("channels", "channel_mult", "num_res_blocks"),
        ("encoder_channels", "encoder_channel_mult", "encoder_res_blocks"),
        ("decoder_channels", "decoder_channel_mult", "decoder_res_blocks"),
        ("block_out_channels", None, "layers_per_block"),
    ):
        chans = _ints(d.get(base))
        if not chans:
            continue
        widest = max(chans) * max(_ints(d.get(mult)) or [1]) if mult else max(chans)
        levels = len(_ints(d.get(mult))) if mult else len(chans)
        n = 9 * widest * widest * 2 * (_int(d, blocks) or ("", 2))[1] * max(1, levels)
        out.append(Term(f"{p}{base}" + (f" x {p}{mult}" if mult and mult in d else ""), n))
    for k, v in d.items():
        if isinstance(v, Mapping) and isinstance(v.get("params"), Mapping):
            out += generic_terms(v["params"], f"{p}{k}.params")
    return out


def widest_channels(d: Mapping[str, Any]) -> int:
    """The widest convolution of a params mapping (for full-resolution activations)."""
    widths = [1]
    for base, mult in (
        ("channels", "channel_mult"),
        ("encoder_channels", None),
        ("decoder_channels", None),
        ("block_out_channels", None),
    ):
        chans = _ints(d.get(base))
        if chans:
            widths.append(max(chans) * (max(_ints(d.get(mult)) or [1]) if mult else 1))
    return max(widths)


def component_terms(section: str, params: Any) -> list[Term]:
    hook = getattr(params, "estimate_elements", None)
    if callable(hook):
        return [Term(f"{section}.params.{k}", int(n)) for k, n in hook().items()]
    d = params.model_dump(mode="json") if hasattr(params, "model_dump") else dict(params)
    nbytes = DTYPE_BYTES.get(str(d.get("dtype", "float32")), 4)
    return [Term(t.keys, t.elements, nbytes) for t in generic_terms(d, f"{section}.params")]


@dataclass
class Estimate:
    weights: list[Term]
    activations: list[Term]
    training: bool

    @property
    def total(self) -> int:
        w = sum(t.nbytes for t in self.weights)
        return w * (TRAIN_FACTOR if self.training else 1) + max((t.nbytes for t in self.activations), default=0)

    def drivers(self, n: int = 3) -> list[Term]:
        """The largest terms, weights (as trained) and activations alike."""
        f = TRAIN_FACTOR if self.training else 1
        scored = [(t.nbytes * f, t) for t in self.weights] + [(t.nbytes, t) for t in self.activations]
        return [t for _, t in sorted(scored, key=lambda s: -s[0])[:n]]


def estimate(data: Mapping[str, Any], components: Mapping[str, Any]) -> Estimate:
    """``data``: the resolved recipe mapping; ``components``: section -> validated params model."""
    weights = [t for sec, params in components.items() for t in component_terms(sec, params)]
    stages = ((data.get("train") or {}).get("stages") or []) if isinstance(data.get("train"), Mapping) else []
    image = (
        ((data.get("data") or {}).get("params") or {}).get("image_size")
        if isinstance(data.get("data"), Mapping)
        else None
    )
    chans = max(
        [widest_channels(p.model_dump(mode="json")) for p in components.values() if hasattr(p, "model_dump")] or [1]
    )
    acts: list[Term] = []
    for i, st in enumerate(s for s in stages if isinstance(s, Mapping)):
        opts = st.get("options") if isinstance(st.get("options"), Mapping) else {}
        size, key = (opts.get("image_size"), f"train.stages.{i}.options.image_size")
        if not isinstance(size, int):
            size, key = image, "data.params.image_size"
        batch = st.get("batch_size", 16)
        if isinstance(size, int) and isinstance(batch, int) and size > 0 and batch > 0:
            n = batch * size * size * max(3, chans) * ACTIVATION_LAYERS
            acts.append(Term(f"{key} x train.stages.{i}.batch_size", n))
    return Estimate(weights, acts, training=bool(stages))


def check(data: Mapping[str, Any], components: Mapping[str, Any], memory: int | None = None) -> tuple[str, str] | None:
    """(the key driving it most, a message) when the estimate exceeds this machine's memory and no
    override is set, else None."""
    if allowed_large():
        return None
    memory = machine_memory() if memory is None else memory
    if not memory:
        return None
    est = estimate(data, components)
    if est.total <= memory:
        return None
    shown = "; ".join(
        f"{t.keys} = {t.elements:,} {'values' if t in est.activations else 'parameters'}" for t in est.drivers()
    )
    what = "to train (weights, gradients, AdamW moments, activations)" if est.training else "for its weights"
    return est.drivers(1)[0].keys.split(" x ")[0], (
        f"needs at least {human(est.total)} {what}, more than this machine's {human(memory)} of memory "
        f"(largest: {shown}). Reduce those values, or pass --allow-large (or set {ENV}=1) to build it anyway"
    )


# Bytes per parameter under each parallelism.precision: (trainable weights, frozen weights,
# gradients, AdamW states). *-mixed keeps fp32 master weights beside a 16-bit compute copy and reduces
# fp32 gradients; bf16-true keeps weights, gradients and both moments in bf16. A frozen part needs only
# its compute copy. `auto` is estimated as on CUDA (bf16-mixed).
PRECISION_BYTES: dict[str, tuple[int, int, int, int]] = {
    "fp32": (4, 4, 4, 8),
    "bf16-mixed": (4 + 2, 2, 4, 2 * 4),
    "fp16-mixed": (4 + 2, 2, 4, 2 * 4),
    "bf16-true": (2, 2, 2, 2 * 2),
}
# the master copy of a trainable weight: what CPU offload moves off the GPU besides gradients and states
MASTER_BYTES = {"fp32": 4, "bf16-mixed": 4, "fp16-mixed": 4, "bf16-true": 2}


def resolve_precision(precision: str) -> str:
    """The precision an estimate for GPUs uses (``auto`` is bf16-mixed on CUDA)."""
    if precision == "auto":
        return "bf16-mixed"
    if precision not in PRECISION_BYTES:
        raise ValueError(f"unknown precision {precision!r} (valid: auto, {', '.join(PRECISION_BYTES)})")
    return precision


@dataclass(frozen=True)
class RankMemory:
    """Persistent memory of one rank during training, in bytes (activations and the transient
    gathered copy of one FSDP unit are not in it)."""

    strategy: str
    cpu_offload: bool
    params: float
    grads: float
    optimizer: float
    cpu: float = 0.0

    @property
    def gpu(self) -> float:
        return self.params + self.grads + self.optimizer

    @property
    def label(self) -> str:
        return self.strategy + (" + cpu offload" if self.cpu_offload else "")


def rank_memory(
    trainable: int,
    frozen: int,
    world: int,
    strategy: str,
    precision: str = "bf16-mixed",
    cpu_offload: bool = False,
    shard_frozen: bool = True,
) -> RankMemory:
    """Per-rank bytes of weights, gradients and AdamW states for ``trainable`` and ``frozen`` parameter
    counts over ``world`` ranks. ``ddp`` replicates all of it; ``fsdp`` divides weights, gradients and
    states by ``world`` (frozen weights only with ``shard_frozen``); ``cpu_offload`` (fsdp) keeps the
    master weights, gradients and states of the shard in CPU memory and the compute copy on the GPU.
    """
    if world < 1:
        raise ValueError(f"world size must be >= 1, got {world}")
    if strategy not in ("ddp", "fsdp"):
        raise ValueError(f"unknown strategy {strategy!r} (valid: ddp, fsdp)")
    if cpu_offload and strategy != "fsdp":
        raise ValueError("cpu_offload needs strategy fsdp")
    precision = resolve_precision(precision)
    tb, fb, gb, ob = PRECISION_BYTES[precision]
    n = world if strategy == "fsdp" else 1
    nf = n if shard_frozen else 1
    params = trainable * tb / n + frozen * fb / nf
    grads, states = trainable * gb / n, trainable * ob / n
    if not cpu_offload:
        return RankMemory(strategy, False, params, grads, states)
    master = trainable * MASTER_BYTES[precision] / n
    # what stays on the GPU: the compute copy of the trainable shard (none apart from the master when
    # compute and master share a dtype) and the frozen weights
    compute = trainable * (tb - MASTER_BYTES[precision]) / n
    gpu_params = compute + frozen * fb / nf
    return RankMemory(strategy, True, gpu_params, 0.0, 0.0, cpu=master + grads + states)


def memory_table(
    trainable: int,
    frozen: int,
    world: int,
    precision: str = "bf16-mixed",
    shard_frozen: bool = True,
) -> list[RankMemory]:
    """ddp, fsdp and fsdp with CPU offload at one world size, for comparison."""
    return [
        rank_memory(trainable, frozen, world, "ddp", precision),
        rank_memory(trainable, frozen, world, "fsdp", precision, shard_frozen=shard_frozen),
        rank_memory(trainable, frozen, world, "fsdp", precision, cpu_offload=True, shard_frozen=shard_frozen),
    ]


__all__ = [
    "ENV",
    "PRECISION_BYTES",
    "Estimate",
    "RankMemory",
    "Term",
    "allowed_large",
    "check",
    "estimate",
    "machine_memory",
    "memory_table",
    "rank_memory",
    "resolve_precision",
]
