"""Linear layers on prepacked oneDNN weights for small-batch decoding on the CPU.

A decode step multiplies a few rows (the batch, both guidance branches) by every weight matrix of
the backbone. At that size the CPU's GEMM spends most of a call packing the weight into its blocked
layout; oneDNN keeps a packed copy instead (``torch.ops.mkldnn._reorder_linear_weight``, what
inductor's ``freezing`` inserts for constant weights) and multiplies by it directly: 1.4-1.7x
faster from 2 to 32 rows for the shapes of a small decoder, slower for a single row
(``bench/packed_linear.py``).

:func:`packed_linears` routes every float32 CPU ``F.linear`` inside its block through
``illume_kit::packed_linear``, a custom op that ``torch.compile`` keeps as one call (a graph stays
one graph, the weight stays the model's own tensor). The packed copies live in a store opened by
:func:`packing_store` around one decode loop and dropped after it: packing costs one pass over the
weights per loop, and a weight updated in place (training, ``load_state_dict``) is packed again
(its version counter is part of the key), so a packed copy is never stale.
Results equal ``F.linear``'s up to float rounding (another summation order).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_local = threading.local()


def available() -> bool:
    """Whether this torch build has oneDNN on the CPU."""
    return torch.backends.mkldnn.is_available()


def _packed(w: torch.Tensor, rows: int) -> torch.Tensor:
    store = getattr(_local, "store", None)
    # an inference tensor keeps no version counter (and a store lasts one loop anyway)
    key = (w.data_ptr(), -1 if w.is_inference() else w._version, w.shape, rows)
    if store is None:  # outside a store: correct, only slower (packs every call)
        return torch.ops.mkldnn._reorder_linear_weight(w, rows)
    if key not in store:
        store[key] = torch.ops.mkldnn._reorder_linear_weight(w, rows)
    return store[key]


# defined with torch.library directly rather than ``custom_op``: a step calls it once per linear
# layer, and the direct registration dispatches a few microseconds faster
_LIB = torch.library.Library("illume_kit", "DEF")
_LIB.define("packed_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor")


def _packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, _packed(weight, x.shape[0]), bias, "none", [], "")


_LIB.impl("packed_linear", _packed_linear, "CPU")


@torch.library.register_fake("illume_kit::packed_linear", lib=_LIB)
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((x.shape[0], weight.shape[0]))


def packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for a 2D CPU ``x``, through the packed copy of ``weight``."""
    return torch.ops.illume_kit.packed_linear(x, weight, bias)


class _Route(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and x.dim() >= 2:
                out = packed_linear(x.reshape(-1, x.shape[-1]), weight, bias)
                return out.reshape(*x.shape[:-1], weight.shape[0])
        return func(*args, **kwargs)


@contextmanager
def packed_linears(enabled: bool = True) -> Iterator[None]:
    """Route float32 CPU ``F.linear`` calls in this block through packed weights (traceable by
    ``torch.compile``)."""
    if not enabled:
        yield
        return
    with _Route():
        yield


@contextmanager
def packing_store() -> Iterator[None]:
    """Keep the packed weights of this thread's decode loop for its length (nested: the outer one)."""
    if getattr(_local, "store", None) is not None:
        yield
        return
    _local.store = {}
    try:
        yield
    finally:
        _local.store = None
