"""Flag types and output-path checks shared by the verbs (torch-free).

A flag's value is checked where argparse parses it: a bad one ends in argparse's usage message
naming the flag and what is valid (exit status 2), before any model is loaded. Output paths are
checked before the work starts, so an hour of evaluation never ends in a folder that cannot be
written.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path

DEVICES = "auto, cpu, cuda, cuda:N (N = 0, 1, ...), mps"
SEED_LIMIT = 2**63  # torch.manual_seed takes a signed 64-bit integer


def _int(text: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _ranged(parse, ok, valid: str, doc: str):
    """A flag type: ``parse`` the text, then refuse a value ``ok`` rejects, saying what is ``valid``."""

    def check(text: str):
        value = parse(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {valid}, got {text!r}")
        return value

    check.__doc__ = doc
    return check


positive_int = _ranged(
    _int,
    lambda v: v >= 1,
    "a whole number >= 1",
    "A whole number >= 1 (counts: samples, images, tokens, a batch size).",
)
nonnegative_int = _ranged(_int, lambda v: v >= 0, "a whole number >= 0", "A whole number >= 0.")
seed = _ranged(_int, lambda v: 0 <= v < SEED_LIMIT, "a whole number from 0 to 2**63 - 1", "A torch seed.")
finite_float = _ranged(_float, lambda v: True, "a finite number", "A finite number.")
nonnegative_float = _ranged(_float, lambda v: v >= 0, "a finite number >= 0", "A finite number >= 0.")
positive_float = _ranged(_float, lambda v: v > 0, "a finite number > 0", "A finite number > 0.")
probability = _ranged(_float, lambda v: 0 < v <= 1, "a number in (0, 1]", "A number in (0, 1] (top-p).")


def device(text: str) -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; whether the machine has it is checked by
    :func:`check_device_available` (that needs torch)."""
    value = str(text).strip().lower()
    if value in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", value):
        return value
    raise argparse.ArgumentTypeError(f"unknown device {text!r}: valid are {DEVICES}")


def key_value(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` -> (KEY, VALUE text); the verb checks KEY against what it accepts."""
    key, eq, value = str(text).partition("=")
    key = key.strip()
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def check_device_available(name: str) -> str:
    """The torch device ``name`` resolves to on this machine (``auto``: CUDA when there is one);
    ValueError naming --device when the machine lacks it."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {name}: CUDA is not available on this machine (no GPU visible, or torch "
                f"{torch.__version__} built without CUDA): use --device cpu or --device auto"
            )
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s): "
                f"valid are cuda:0 to cuda:{torch.cuda.device_count() - 1}"
            )
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("--device mps: Apple's MPS is not available on this machine: use --device cpu or auto")
    return name


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output_file(path: str | os.PathLike, flag: str = "-o") -> Path:
    """A file the verb will write: not an existing folder, under a folder that exists or can be made."""
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"{flag} {path}: is a folder; name a file to write, e.g. {out / 'out.png'}")
    _check_parent(out.parent, flag, path)
    return out


def check_output_dir(path: str | os.PathLike, flag: str = "-o") -> Path:
    """A folder the verb will write into: an existing folder, or a path where one can be made."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {path}: is a file; name a folder (an existing one, or one to create)")
    _check_parent(out, flag, path)
    return out


def _check_parent(folder: Path, flag: str, given) -> None:
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise ValueError(f"{flag} {given}: cannot create a folder under {base}, which is a file; pick another path")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {given}: {base} is not writable by this user; pick another path")
