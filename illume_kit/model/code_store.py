"""Pre-computed tokenizer outputs on disk: what ``illume-kit encode`` writes and an mllm stage reads.

A store is a folder of safetensors shards (``codes-00000.safetensors``, ...) and ``manifest.json``.
Each image's entry is keyed, as ``EncodeCache`` keys it, by a hash of the exact (3, H, W) tensor the
stage meets: its tensors are ``<key hex>/codes/<level>`` (the code grid, (h, w)) and, when the store
keeps features, ``<key hex>/features/<level>`` ((h, w, D), in the manifest's ``features`` dtype).

The manifest records the sha256 of the tokenizer's weights (``weights_sha256``: its state dict in
name order, every tensor's dtype, shape and bytes), and of the input encoder's when the features are
its own (``model.input_encoder: separate``); a stage whose model hashes otherwise refuses the store,
since its codes belong to other weights. Shards are written whole under a temporary name and renamed
into place, and the manifest after them, so a killed writer leaves only complete shards.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

MANIFEST = "manifest.json"
FORMAT = "illume-kit-codes"
VERSION = 1
SHARD = re.compile(r"^codes-(\d{5,})\.safetensors$")
FEATURE_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
OPEN_SHARDS = 8  # shard handles kept open at once (each maps its file; nothing is read until asked)


class CodeStoreError(ValueError):
    """A store that cannot serve this model: unreadable, of another format, or of other weights."""


def shard_name(index: int) -> str:
    return f"codes-{index:05d}.safetensors"


def tensor_name(key: bytes, part: str, level: str) -> str:
    return f"{key.hex()}/{part}/{level}"


def weights_sha256(module: Any) -> str | None:
    """sha256 over ``module``'s state dict in name order (each tensor's name, dtype, shape, bytes); None
    for no module, or one whose tensors are not materialised (built on the meta device)."""
    if module is None:
        return None
    state = module.state_dict()
    if any(t.is_meta for t in state.values() if isinstance(t, torch.Tensor)):
        return None
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):
            continue
        x = t.detach().cpu().contiguous()
        h.update(f"{name}|{x.dtype}|{tuple(x.shape)}|".encode())
        if x.numel():
            h.update(x.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def feature_source(model: Any) -> Any:
    """The module whose weights the features come from besides the tokenizer: the model's own input
    encoder (``model.input_encoder: separate``), else None."""
    return getattr(model, "input_encoder", None)


def read_store_manifest(folder: str | Path) -> dict:
    """The manifest of the store in ``folder``; ``CodeStoreError`` naming the file when it is missing or
    not a store's."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise CodeStoreError(
            f"{folder}: no {MANIFEST}: not a folder of pre-computed codes (write one with `illume-kit encode`)"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CodeStoreError(f"{path}: cannot be read as JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CodeStoreError(f"{path}: not a codes manifest (format {FORMAT!r} expected)")
    if manifest.get("version") != VERSION:
        raise CodeStoreError(
            f"{path}: codes format version {manifest.get('version')!r}; this illume-kit reads version {VERSION}"
        )
    return manifest


class CodeStore:
    """Reads a store lazily: an index of image key -> shard from the shards' headers, tensors on demand.

    ``get`` returns an image's entry as ``encode_images`` gives it (codes as stored, features as
    float32), or None when the store lacks the image (or its features, when they are needed);
    ``hits`` and ``misses`` count the answers.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.manifest = read_store_manifest(self.folder)
        self.levels: list[str] = list(self.manifest.get("levels") or [])
        self.features: str | None = self.manifest.get("features")
        self.index: dict[bytes, int] = {}
        self.shards: list[Path] = []
        for rec in self.manifest.get("shards", []):
            path = self.folder / rec["file"]
            if not path.is_file():
                raise CodeStoreError(f"{self.folder}: shard {rec['file']} the manifest lists is missing")
            self.shards.append(path)
            for key in _keys_of(path):
                self.index.setdefault(key, len(self.shards) - 1)
        self._open: OrderedDict[int, Any] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key: bytes) -> bool:
        return key in self.index

    @property
    def tokenizer_sha256(self) -> str:
        return str((self.manifest.get("tokenizer") or {}).get("sha256"))

    def check(self, model: Any, features: bool = True) -> None:
        """``CodeStoreError`` unless ``model``'s tokenizer has the weights the store was encoded with, and,
        when the stage reads stored ``features``, they come from the module ``model`` reads them from (its
        input encoder, with the same weights, or the tokenizer). A model not yet materialised (meta) is
        not checked."""
        tok = weights_sha256(model.tokenizer)
        if tok is not None and tok != self.tokenizer_sha256:
            name = (self.manifest.get("tokenizer") or {}).get("name", "?")
            raise CodeStoreError(
                f"codes {self.folder}: encoded by tokenizer {name!r} with weights sha256 {self.tokenizer_sha256}, "
                f"but this model's tokenizer has weights sha256 {tok}: its codes belong to another tokenizer. "
                "Encode the data again with this model's checkpoint or recipe (illume-kit encode), or drop the "
                "stage option `codes`"
            )
        if not (features and self.features):
            return
        stored = (self.manifest.get("input_encoder") or {}).get("sha256")
        source = feature_source(model)
        if (stored is None) != (source is None):
            raise CodeStoreError(
                f"codes {self.folder}: features of the {'tokenizer' if stored is None else 'input encoder'}, but "
                f"this model reads the {'input encoder' if stored is None else 'tokenizer'}'s "
                "(model.input_encoder): encode the data again with this model"
            )
        own = weights_sha256(source)
        if own is not None and stored is not None and own != stored:
            raise CodeStoreError(
                f"codes {self.folder}: features of an input encoder with weights sha256 {stored}, but this "
                f"model's input encoder has weights sha256 {own}: encode the data again with this model"
            )

    def _handle(self, shard: int) -> Any:
        from safetensors import safe_open

        h = self._open.get(shard)
        if h is None:
            h = safe_open(str(self.shards[shard]), framework="pt", device="cpu")
            self._open[shard] = h
            while len(self._open) > OPEN_SHARDS:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(shard)
        return h

    def get(self, key: bytes, need_features: bool, device: torch.device | None = None) -> dict | None:
        shard = self.index.get(key)
        if shard is None or (need_features and not self.features):
            self.misses += 1
            return None
        h = self._handle(shard)
        codes = {lv: h.get_tensor(tensor_name(key, "codes", lv)) for lv in self.levels}
        feats = (
            {lv: h.get_tensor(tensor_name(key, "features", lv)).float() for lv in self.levels} if need_features else {}
        )
        if device is not None:
            codes = {k: v.to(device) for k, v in codes.items()}
            feats = {k: v.to(device) for k, v in feats.items()}
        self.hits += 1
        return {"codes": codes, "features": feats}


def _keys_of(path: Path) -> set[bytes]:
    """The image keys a shard holds, read from its header alone."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            names = list(f.keys())
    except Exception as exc:  # a file safetensors cannot parse: name it, whatever the library raised
        raise CodeStoreError(f"{path}: not a readable safetensors shard: {exc}") from None
    return {bytes.fromhex(n.split("/", 1)[0]) for n in names}
