"""Sequence assembly: (text, images) -> ``inputs_embeds``, labels and attention masks.

ILLUME+ reads images *continuously* and writes them *discretely* (reference §3.2-3.3):

- an image the model reads (``InputImage``) becomes ``E(<start_of_image>)``, then per codebook level
  (in level order: the tokenizer's, coarse first, unless ``model.level_order`` is ``fine_first``)
  ``E(<start_of_level{i}>)``, rows of ``projector_i(features)`` each closed by ``E(<end_of_line>)``,
  ``E(<end_of_level{i}>)``, then ``E(<end_of_image>)``. With
  ``model.image_input == 'discrete'`` the code ids are embedded instead of projecting features;
- an image the model writes (``TargetImage``) is ordinary vocabulary ids:
  ``<height_H><width_W><start_of_image>`` then per level start, rows of (codebook offset + code)
  each closed by ``<end_of_line>``, level end, ``<end_of_image>``.

A ``Sample`` is one chat exchange, ``USER: {prompt}\\nASSISTANT: {answer}<eos>`` in the ``plain``
prompt style (``model.prompt_style``, ``illume_kit.model.prompts``: other styles wrap the turns in
their own text). Labels are -100
on the user turn, on input images and on padding, so the loss covers answer text and output image
tokens only (as the reference's ``preprocess_qwen2`` masks system/user parts). All ids are placed in
one (B, T) tensor that goes through the embedding once; projected features are then written into
their slots with one ``index_put`` per codebook, so a batch costs one projector call per codebook.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from illume_kit.core.layout import VocabLayout
from illume_kit.model.image_tokens import (  # noqa: F401  (re-exported: the sequence API in one place)
    ImageSequenceError,
    ParsedImage,
    describe_id,
    extract_images,
    image_block_ids,
    parse_image_ids,
)

USER_PREFIX = "USER: "
ASSISTANT_PREFIX = "\nASSISTANT: "
IGNORE = -100


# ---------------------------------------------------------------- parts of a sample


@dataclass(frozen=True)
class Tag:
    """The resolution tags ``<height_H><width_W>`` of a pixel size (H, W)."""

    height: int
    width: int


@dataclass(frozen=True)
class Ids:
    """Raw token ids, spliced as they are (structure tokens, forced prefixes)."""

    ids: tuple[int, ...]


@dataclass
class InputImage:
    """An image the model reads: (3, H, W) in [0, 1]. A bare tensor in a prompt means the same."""

    image: torch.Tensor


@dataclass
class TargetImage:
    """An image the model writes: tags + discrete block; every token is a label.

    Give the pixel ``image`` (encoded with the tokenizer at assembly) or its ``codes`` (codebook name ->
    LongTensor (h, w)) together with ``size`` (H, W) for the tags. With ``copy_from`` (an image of the
    same size, an edit's source), every token whose pixels are the same in both images takes the
    source's code (``copy_unchanged``).
    """

    image: torch.Tensor | None = None
    codes: Mapping[str, torch.Tensor] | None = None
    size: tuple[int, int] | None = None
    copy_from: torch.Tensor | None = None  # an edit's source: see ``copy_unchanged``

    def __post_init__(self) -> None:
        if self.image is None and self.codes is None:
            raise ValueError("TargetImage needs an image or codes")
        if self.size is None:
            if self.image is None:
                raise ValueError("TargetImage from codes needs size=(H, W) for its resolution tags")
            self.size = (int(self.image.shape[-2]), int(self.image.shape[-1]))


Part = str | Tag | Ids | InputImage | TargetImage | torch.Tensor


@dataclass
class Sample:
    """One exchange. ``prompt`` is the user turn (no loss), ``answer`` the assistant turn (loss).

    ``eos`` closes the answer with the end-of-turn token (the backbone tokenizer's eos); by default
    when there is an answer. Prompts for inference have an empty answer (or a forced prefix, eos=False).
    ``turns`` continue the conversation (LLaVA-style multi-turn): each ``(prompt, answer)`` adds
    ``USER: {prompt}\nASSISTANT: {answer}<eos>`` with loss on the answer and its eos.
    """

    prompt: list[Part]
    answer: list[Part] = field(default_factory=list)
    task: str = "und"
    eos: bool | None = None
    turns: list[tuple[list[Part], list[Part]]] = field(default_factory=list)  # follow-up (user, assistant) turns


@dataclass
class Batch:
    """Assembled batch. ``labels`` are aligned with the inputs (HF style): shift before CE."""

    input_ids: torch.Tensor  # (B, T); feature slots hold the pad id
    inputs_embeds: torch.Tensor  # (B, T, hidden)
    attention_mask: torch.Tensor  # (B, T) 1 = real token
    labels: torch.Tensor  # (B, T) -100 = no loss
    position_ids: torch.Tensor  # (B, T)
    tasks: list[str]
    lengths: list[int]
    dropped: int = 0  # samples ``max_len`` left without a labelled token, left out of the batch


# ---------------------------------------------------------------- encoding images


def _device(module: Any) -> torch.device | None:
    p = next(iter(module.parameters()), None) if hasattr(module, "parameters") else None
    return p.device if p is not None else None


class EncodeCache:
    """Frozen-tokenizer outputs by image content, so an image a training run has seen is not encoded again.

    An mllm stage never updates the tokenizer, and it meets every item of its (cached) dataset
    again each epoch; the cache saves the encoding, 7% of a tiny-recipe step at batch 16 on 2 threads
    (``bench/encode_cache.py``). Keys are
    a hash of the image's dtype, shape and bytes. An entry is only as good as the tokenizer weights
    it came from: any in-place change to a tokenizer parameter or buffer (an optimiser step, a load)
    bumps its version counter, and the cache then empties itself. ``keep_features=False`` stores codes
    only (what discrete image input and image targets need); a lookup that needs features then
    misses. ``max_bytes`` bounds the stored tensors; when full, new images are encoded but not kept.

    ``encode_images`` encodes an image the cache lacks on its own: a batch of one rounds differently
    from a batch of many, and an entry that depended on its batch-mates would make a resumed run (whose
    cache starts empty and meets the images in other batches) train other numbers than an
    uninterrupted one. The entry is then a function of the image alone.

    With ``model.input_encoder: separate`` the features are the input encoder's, so a cache that keeps
    features watches its weights too; while it trains, its features are computed every step (with
    gradients) and only the tokenizer's codes come from here (the mllm stage then keeps codes only).
    """

    def __init__(self, keep_features: bool = True, max_bytes: int = 1 << 30) -> None:
        self.keep_features, self.max_bytes = keep_features, int(max_bytes)
        self._store: dict[bytes, dict[str, dict[str, torch.Tensor]]] = {}
        self._version: int | None = None
        self.bytes = self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    @staticmethod
    def key(image: torch.Tensor) -> bytes:
        import hashlib

        x = image.detach().cpu().contiguous()
        h = hashlib.blake2b(f"{x.dtype}{tuple(x.shape)}".encode(), digest_size=16)
        h.update(x.view(torch.uint8).numpy().tobytes() if x.numel() else b"")
        return h.digest()

    def check(self, *modules: Any) -> None:
        """Empty the cache if the weights of ``modules`` (the tokenizer, an input encoder) changed since
        it was filled."""
        tensors = [t for m in modules if hasattr(m, "parameters") for t in (*m.parameters(), *m.buffers())]
        version = sum(t._version for t in tensors)
        if version != self._version:
            self._store.clear()
            self.bytes, self._version = 0, version

    def get(self, key: bytes, need_features: bool) -> dict | None:
        hit = self._store.get(key)
        if hit is None or (need_features and not hit["features"]):
            self.misses += 1
            return None
        self.hits += 1
        return hit

    def put(self, key: bytes, entry: dict[str, dict[str, torch.Tensor]]) -> None:
        """Keep ``entry``'s codes, and its features when ``keep_features`` (an entry may come without)."""
        keep = self.keep_features and bool(entry.get("features"))
        parts = ("codes", "features") if keep else ("codes",)
        size = sum(t.numel() * t.element_size() for p in parts for t in entry[p].values())
        if key in self._store or self.bytes + size > self.max_bytes:
            return
        # clones: a view would keep the whole encoded batch alive
        self._store[key] = {
            "codes": {k: v.clone() for k, v in entry["codes"].items()},
            "features": ({k: v.detach().clone() for k, v in entry["features"].items()} if keep else {}),
        }
        self.bytes += size


def input_encoder_trains(model: Any) -> bool:
    """Whether the model reads images through its own input encoder (``model.input_encoder: separate``)
    and some of its weights train (the mllm group ``input_encoder``)."""
    own = getattr(model, "input_encoder", None)
    return own is not None and any(p.requires_grad for p in own.parameters())


def encode_images(
    model: Any, images: Sequence[torch.Tensor], need_features: bool = True
) -> list[dict[str, dict[str, torch.Tensor]]]:
    """Encode (3, H, W) images with the frozen tokenizer, batched per size.

    Returns per image ``{"codes": {name: (h, w)}, "features": {name: (h, w, D)}}``. The tokenizer
    runs in eval mode (and is restored), without gradients. When ``model.encode_cache`` holds an
    ``EncodeCache`` (mllm training sets one), images it has seen come from there; with
    ``need_features=False`` a codes-only entry is enough; an image the cache lacks is encoded on its
    own. When ``model.code_store`` holds a ``CodeStore`` (the mllm option ``codes``), an image the cache
    lacks is read from there if the store has it (and kept in the cache). With ``model.input_encoder:
    separate`` the features are the input encoder's; while it trains (and gradients are on) they are
    computed for every image, in the caller's grad mode, so the loss reaches its weights; the codes may
    still be cached.
    """
    tok = model.tokenizer
    cache: EncodeCache | None = getattr(model, "encode_cache", None)
    # model.input_encoder 'separate': the LLM reads its own encoder's features, the codes stay the tokenizer's
    own = getattr(model, "input_encoder", None) if need_features else None
    fresh = own is not None and torch.is_grad_enabled() and input_encoder_trains(model)
    out: list[dict | None] = [None] * len(images)
    keys: list[bytes | None] = [None] * len(images)
    groups: dict[tuple[int, ...], list[int]] = {}
    store = getattr(model, "code_store", None)  # a CodeStore (illume_kit.model.code_store) the stage opened
    device = _device(tok) or _device(model.backbone)
    if cache is not None:
        # the input encoder's weights matter only to cached features (a training one would empty it every step)
        cache.check(tok, getattr(model, "input_encoder", None) if cache.keep_features else None)
    for i, im in enumerate(images):
        if im.dim() != 3 or im.shape[0] != 3:
            raise ValueError(f"images must be (3, H, W), got shape {tuple(im.shape)}")
        if cache is not None or store is not None:
            keys[i] = cache.key(im) if cache is not None else EncodeCache.key(im)
        if cache is not None:
            out[i] = cache.get(keys[i], need_features and not fresh)
            if out[i] is not None:
                continue
        if store is not None:
            # from disk; the cache, when on, keeps it within its budget for the next time it is met
            out[i] = store.get(keys[i], need_features and not fresh, device)
            if out[i] is not None:
                if cache is not None:
                    cache.put(keys[i], out[i])
                continue
        # alone: a kept entry must not depend on its batch-mates (EncodeCache)
        alone = (i,) if cache is not None else ()
        groups.setdefault((int(im.shape[-2]), int(im.shape[-1]), *alone), []).append(i)
    if groups:
        was_training = tok.training
        tok.eval()
        try:
            with torch.no_grad():
                for idx in groups.values():
                    batch = torch.stack([images[i] for i in idx]).to(device)
                    enc = tok.encode(batch)
                    features = {} if fresh else own(batch) if own is not None else enc.features
                    for j, i in enumerate(idx):
                        out[i] = {
                            "codes": {k: v[j] for k, v in enc.codes.items()},
                            "features": {k: v[j] for k, v in features.items()},
                        }
                        if cache is not None:
                            cache.put(keys[i], out[i])
        finally:
            tok.train(was_training)
    if fresh:
        sizes: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            sizes.setdefault((int(im.shape[-2]), int(im.shape[-1])), []).append(i)
        for idx in sizes.values():
            features = own(torch.stack([images[i] for i in idx]).to(device))
            for j, i in enumerate(idx):
                out[i] = {"codes": out[i]["codes"], "features": {k: v[j] for k, v in features.items()}}
    return out  # type: ignore[return-value]


# ---------------------------------------------------------------- assembly


class _Builder:
    """Accumulates one sample's ids, label flags and feature slots."""

    def __init__(self, text_ids, track_grid: bool = False) -> None:
        self.text_ids = text_ids
        self.ids: list[int] = []
        self.loss: list[bool] = []
        self.slots: list[tuple[int, int, int]] = []  # (position, codebook index, feature ref)
        # (position, codebook index, row, col) of image tokens; kept only for model.image_positions
        self.track_grid = track_grid
        self.grid: list[tuple[int, int, int, int]] = []

    def add_grid(self, level: int, h: int, w: int, start: int | None = None) -> None:
        """Note the (row, col) of h rows of w tokens + end-of-line at this level, beginning at position
        ``start`` (default: the next token)."""
        if self.track_grid:
            start = len(self.ids) if start is None else start
            self.grid.extend((start + r * (w + 1) + c, level, r, c) for r in range(h) for c in range(w))

    def add(self, ids: Sequence[int], loss: bool) -> None:
        self.ids.extend(ids)
        self.loss.extend([loss] * len(ids))


def _input_block(
    b: _Builder, layout: VocabLayout, enc: dict, discrete: bool, feats: list[list[torch.Tensor]], pad: int
) -> None:
    b.add([layout.soi], False)
    for i, cb in enumerate(layout.codebooks):
        b.add([layout.level_start(i)], False)
        if discrete:
            codes = enc["codes"][cb.name]
            h, w = codes.shape
            rows = torch.cat([codes.long() + cb.start, torch.full((h, 1), layout.eol, dtype=torch.long)], 1)
            b.add_grid(i, h, w)
            b.add(rows.flatten().tolist(), False)
        else:
            f = enc["features"][cb.name]
            h, w = f.shape[:2]
            first = sum(x.shape[0] for x in feats[i])
            feats[i].append(f.reshape(h * w, -1))
            b.add_grid(i, h, w)
            for r in range(h):
                for c in range(w):
                    b.slots.append((len(b.ids), i, first + r * w + c))
                    b.add([pad], False)
                b.add([layout.eol], False)
        b.add([layout.level_end(i)], False)
    b.add([layout.eoi], False)


def _add_part(
    b: _Builder, part: Part, loss: bool, model: Any, encoded: dict[int, dict], feats: list[list[torch.Tensor]], pad: int
) -> None:
    layout: VocabLayout = model.layout
    if isinstance(part, str):
        b.add(b.text_ids(part), loss)
    elif isinstance(part, Tag):
        b.add(layout.resolution_ids(part.height, part.width), loss)
    elif isinstance(part, Ids):
        b.add(part.ids, loss)
    elif isinstance(part, (InputImage, torch.Tensor)):
        img = part.image if isinstance(part, InputImage) else part
        _input_block(b, layout, encoded[id(img)], model.image_input == "discrete", feats, pad)
    elif isinstance(part, TargetImage):
        codes = part.codes if part.codes is not None else encoded[id(part.image)]["codes"]
        if part.copy_from is not None and part.image is not None and part.copy_from is not part.image:
            codes = copy_unchanged(codes, encoded[id(part.copy_from)]["codes"], part.image, part.copy_from)
        start = len(b.ids) + (2 if part.size is not None else 0) + 1  # tags, start of image
        if getattr(model, "output_positions", "slot") == "next":
            start -= 1  # each code's position rides on the token that predicts it
        b.add(image_block_ids(layout, codes, part.size), loss)
        for i, cb in enumerate(layout.codebooks):
            h, w = codes[cb.name].shape
            b.add_grid(i, h, w, start + 1)
            start += 1 + h * (w + 1) + 1  # level start, rows, level end
    else:
        raise TypeError(f"unknown sample part {type(part).__name__}: use str, Tag, Ids, InputImage, TargetImage")


def copy_unchanged(
    codes: Mapping[str, torch.Tensor],
    source_codes: Mapping[str, torch.Tensor],
    image: torch.Tensor,
    source: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """An edit target's codes with every token whose pixels did not change taken from the source.

    A tokenizer's code for a patch also depends on its surroundings (a conv encoder's receptive field,
    a ViT's global attention), so re-encoding an edited image changes codes well outside the edit:
    in the 2x2 shapes world, a third of the pixel codes of untouched empty cells. A model trained on
    such targets has no copy to learn. Here a token of level (h, w) is "unchanged" when the
    (H/h, W/w) pixel patch under it is identical in both images; those tokens copy the source's
    code, the rest keep the target's.
    """
    keep = unchanged_tokens(image, source, {name: tuple(grid.shape) for name, grid in codes.items()})
    return {
        name: torch.where(keep[name].to(grid.device), source_codes[name].to(grid.device), grid)
        for name, grid in codes.items()
    }


def unchanged_tokens(
    image: torch.Tensor, source: torch.Tensor, grids: Mapping[str, tuple[int, int]]
) -> dict[str, torch.Tensor]:
    """Level name -> (h, w) bool: the tokens of each level (grid ``grids[name]``) whose pixel patch is
    the same in both (3, H, W) images (``copy_unchanged``; a patch that does not divide evenly is
    judged on the windows ``adaptive_max_pool2d`` gives it). The images are compared once."""
    if image.shape != source.shape:
        raise ValueError(f"copy_unchanged: target {tuple(image.shape)} and source {tuple(source.shape)} differ in size")
    changed = (image.detach() != source.detach()).any(0, keepdim=True).float()[None]  # (1, 1, H, W)
    return {name: torch.nn.functional.adaptive_max_pool2d(changed, grid)[0, 0] == 0 for name, grid in grids.items()}


def _images_to_encode(samples: Sequence[Sample]) -> list[torch.Tensor]:
    out, seen = [], set()
    for s in samples:
        for part in [*s.prompt, *s.answer, *(p for turn in s.turns for side in turn for p in side)]:
            img = None
            if isinstance(part, torch.Tensor):
                img = part
            elif isinstance(part, InputImage):
                img = part.image
            elif isinstance(part, TargetImage) and part.codes is None:
                img = part.image
                if part.copy_from is not None and id(part.copy_from) not in seen:
                    seen.add(id(part.copy_from))
                    out.append(part.copy_from)
            if img is not None and id(img) not in seen:
                seen.add(id(img))
                out.append(img)
    return out


def text_ids_fn(tokenizer) -> Any:
    """A cached ``str -> list[int]`` over the backbone's text tokenizer (no special tokens added)."""
    cache: dict[str, list[int]] = {}

    def ids(text: str) -> list[int]:
        if text not in cache:
            cache[text] = tokenizer(text, add_special_tokens=False)["input_ids"]
        return cache[text]

    return ids


def sample_ids(
    model: Any, sample: Sample, encoded: dict[int, dict], feats: list[list[torch.Tensor]], text_ids=None
) -> _Builder:
    tok = model.backbone.text_tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    b = _Builder(text_ids or text_ids_fn(tok), track_grid=bool(getattr(model, "image_positions", 0)))
    first_eos = sample.eos if sample.eos is not None else bool(sample.answer)
    style = getattr(model, "prompt_style", None)  # model.prompts; None: plain
    for turn, ((prompt, answer), eos) in enumerate(
        zip([(sample.prompt, sample.answer), *sample.turns], [first_eos] + [True] * len(sample.turns))
    ):
        user = style.user_turn(prompt, turn) if style is not None else [USER_PREFIX, *prompt, ASSISTANT_PREFIX]
        for part in join_text(user) if style is not None and style.join_text else user:
            _add_part(b, part, False, model, encoded, feats, pad)
        for part in answer:
            _add_part(b, part, True, model, encoded, feats, pad)
        if eos:
            b.add(style.end_ids(tok) if style is not None else [tok.eos_token_id], True)
    return b


def join_text(parts: Sequence[Part]) -> list[Part]:
    """Adjacent strings joined into one (empty ones dropped), so they tokenize as one text."""
    out: list[Part] = []
    for p in parts:
        if isinstance(p, str) and out and isinstance(out[-1], str):
            out[-1] = out[-1] + p
        elif not (isinstance(p, str) and not p):
            out.append(p)
    return out


def truncate(b: _Builder, max_len: int) -> bool:
    """Cut a sample to its first ``max_len`` tokens, labels with them, as ILLUME+ cuts at ``model_max_length``.

    The model is causal, so every kept token's input, label and loss are what they are in the whole
    sequence; an image the cut runs through loses its later rows (an input image's feature slots past
    the cut are not filled, a target image's codes past it are not trained). False when the cut leaves
    no token to learn (the prompt alone fills ``max_len``) though the sample had some: drop the sample.
    """
    if len(b.ids) <= max_len:
        return True
    learns = any(b.loss[1:])  # position 0's label is never predicted
    del b.ids[max_len:], b.loss[max_len:]
    b.slots = [s for s in b.slots if s[0] < max_len]
    b.grid = [g for g in b.grid if g[0] < max_len]
    return any(b.loss[1:]) or not learns


def assemble(
    model: Any,
    samples: Sequence[Sample],
    padding_side: str = "right",
    encoded: Sequence[dict] | None = None,
    max_len: int | None = None,
) -> Batch:
    """Samples -> padded ``Batch`` on the model's device.

    ``padding_side='right'`` for training (positions 0..T-1), ``'left'`` for generation prompts
    (every row ends at the last column; ``position_ids`` count real tokens only). ``max_len`` cuts
    each sequence to that many tokens (``truncate``): a sample left with nothing to learn is left out
    of the batch (counted in ``Batch.dropped``); a batch that loses every sample is an error.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not samples:
        raise ValueError("assemble needs at least one sample")
    layout: VocabLayout = model.layout
    images = _images_to_encode(samples)
    enc_list = (
        list(encoded)
        if encoded is not None
        else encode_images(model, images, need_features=model.image_input != "discrete")
    )
    enc = {id(im): e for im, e in zip(images, enc_list)}
    feats: list[list[torch.Tensor]] = [[] for _ in layout.codebooks]
    tok = model.backbone.text_tokenizer
    text_ids = text_ids_fn(tok)
    builders = [sample_ids(model, s, enc, feats, text_ids) for s in samples]
    tasks = [s.task for s in samples]
    dropped = 0
    if max_len is not None:
        if max_len < 2:
            raise ValueError(f"max_seq_len must be at least 2 (a token and the next to predict), got {max_len}")
        longest = max(len(b.ids) for b in builders)
        keep = [truncate(b, max_len) for b in builders]
        if not any(keep):
            raise ValueError(
                f"mllm option max_seq_len {max_len}: every sample of the batch has a prompt of at least {max_len} "
                f"tokens (the longest sequence has {longest}), so nothing would be trained; raise max_seq_len"
            )
        dropped = keep.count(False)
        builders = [b for b, k in zip(builders, keep) if k]
        tasks = [t for t, k in zip(tasks, keep) if k]
    # a slot's feature ref is an index into its codebook's concatenation over the whole batch
    B, T = len(builders), max(len(b.ids) for b in builders)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.full((B, T), pad, dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    slot_b: list[list[int]] = [[] for _ in layout.codebooks]
    slot_t: list[list[int]] = [[] for _ in layout.codebooks]
    slot_f: list[list[int]] = [[] for _ in layout.codebooks]
    grid: list[list[tuple[int, int, int, int]]] = [[] for _ in layout.codebooks]  # (batch row, t, r, c)
    for r, b in enumerate(builders):
        off = T - len(b.ids) if padding_side == "left" else 0
        row = torch.tensor(b.ids, dtype=torch.long)
        ids[r, off : off + len(b.ids)] = row
        mask[r, off : off + len(b.ids)] = 1
        lab = torch.where(torch.tensor(b.loss, dtype=torch.bool), row, torch.full_like(row, IGNORE))
        labels[r, off : off + len(b.ids)] = lab
        for pos, c, f in b.slots:
            slot_b[c].append(r)
            slot_t[c].append(off + pos)
            slot_f[c].append(f)
        for pos, c, gr, gc in b.grid:
            grid[c].append((r, off + pos, gr, gc))
    device = _device(model.backbone)
    ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
    embeds = model.backbone.embed(ids)
    for c, cb in enumerate(layout.codebooks):
        if not slot_b[c]:
            continue
        projector = model.projectors[cb.name]
        f = torch.cat(feats[c]).to(device=device, dtype=next(projector.parameters()).dtype)
        proj = projector(f)[torch.tensor(slot_f[c], device=device)]
        embeds = embeds.index_put(
            (torch.tensor(slot_b[c], device=device), torch.tensor(slot_t[c], device=device)), proj.to(embeds.dtype)
        )
    if getattr(model, "image_positions", 0):
        for c, cb in enumerate(layout.codebooks):
            if grid[c]:
                idx = torch.tensor(grid[c], device=device).T  # 4 x N: batch row, t, r, c
                pos = model.projectors[cb.name].positions(idx[2], idx[3]).to(embeds.dtype)
                embeds = embeds.index_put((idx[0], idx[1]), pos, accumulate=True)
    position_ids = (
        (mask.cumsum(1) - 1).clamp(min=0) if padding_side == "left" else torch.arange(T, device=device).expand(B, T)
    )
    return Batch(ids, embeds, mask, labels, position_ids, tasks, [len(b.ids) for b in builders], dropped)
