"""How a record of each task kind becomes a training item, whatever stores it.

A *reader* knows one task kind: the record keys it needs (mapped by role in ``params.fields``), the
checks a record must pass, and the item it becomes. A *source* (a jsonl file and an image root, tar
shards, a Hugging Face ``datasets`` folder) knows where records and their images live. The two meet
through two functions the source passes in: ``check(ref) -> ref`` (the image is there and readable)
and ``load(ref) -> PIL image``; ``where`` is the source's name for the record (``file:line``, a
shard and key, a row), and every error names it.

- ``conversations``: LLaVA/ILLUME+-style ``{"image": ..., "conversations": [{"from": "human",
  "value": "<image>\\n..."}, {"from": "gpt", ...}, ...]}``; items carry ``image`` and ``qa`` (the
  human/gpt turn pairs, ``<image>`` removed). Records without an image (text-only) and with several
  images are :class:`Unusable` (the ``mllm`` stage trains image tasks), counted by the source.
- ``captions``: ``{"image": ..., "caption": ...}``; items carry ``image`` and ``caption``.
- ``edits``: ``{"source": ..., "target": ..., "instruction": ...}``; items carry ``image`` (the
  source) and ``edit`` (``instruction`` and the target ``image``).

Sizing (``params.sizing``, ``illume_kit.data.aspect``): ``square`` covers ``image_size`` squared and
center-crops; ``official`` sizes as ILLUME+ does: a conversation's image keeps its aspect within
``min_pixels``..``max_pixels`` (sides multiples of ``multiple_of``), a caption's image and both images
of an edit snap to the anchor nearest the (source) image's aspect at base ``image_size``, its sides
rounded to ``multiple_of`` (a no-op at the released bases, whose anchor sides are multiples of 32).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from illume_kit.data.aspect import native_size, nearest_anchor, snap
from illume_kit.data.folder import resize_crop
from illume_kit.data.shapes import to_tensor

IMAGE_TOKEN = "<image>"
HUMAN = ("human", "user")
ASSISTANT = ("gpt", "assistant")

Check = Callable[[Any], Any]
Load = Callable[[Any], Any]


class BadRecord(ValueError):
    """A record that cannot become an item: its message names where the record is."""


class Unusable(Exception):
    """A well-formed record the ``mllm`` stage has no task for (text-only, several images)."""

    def __init__(self, reason: str):
        self.reason = reason


class RecordReader:
    """One task kind's checks (``entry``) and item (``item``); subclasses fill in both.

    ``size(height, width)`` is the (H, W) an image of that size is served at (``params.sizing``), so a
    source that kept an image's header size can report the served size without decoding.
    """

    kind = "records"
    task = ""  # the mllm task its items serve

    def __init__(self, params: Any):
        self.params = params

    def key(self, role: str) -> str:
        return getattr(self.params.fields, role)

    def field(self, rec: Any, role: str, where: str, kind: type = str) -> Any:
        if not isinstance(rec, dict):
            raise BadRecord(f"{where}: expected a JSON object, found {type(rec).__name__}")
        key = self.key(role)
        if key not in rec:
            raise BadRecord(
                f"{where}: the record has no {key!r} field (fields.{role}; its keys: {', '.join(sorted(rec))})"
            )
        value = rec[key]
        if value is None or not isinstance(value, kind) or (kind is str and not value.strip()):
            raise BadRecord(
                f"{where}: field {key!r} (fields.{role}) is {value!r}, expected a non-empty {'image' if kind is object else kind.__name__}"
            )
        return value

    def image_roles(self) -> tuple[str, ...]:
        """The roles whose values are images (a source resolves them)."""
        return ("image",)

    def entry(self, rec: dict[str, Any], where: str, check: Check) -> dict[str, Any]:
        """The checked, light form of a record (image references, texts); BadRecord / Unusable."""
        raise NotImplementedError

    def item(self, entry: dict[str, Any], where: str, load: Load) -> dict[str, Any]:
        """The training item: images decoded and sized as ``size`` says (``params.sizing``)."""
        raise NotImplementedError

    def official(self) -> bool:
        return getattr(self.params, "sizing", "square") == "official"

    def size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) an image of this size is served at: image_size squared, or with ``sizing: official``
        the nearest anchor at base image_size (generation, editing; conversations override)."""
        if self.official():
            h, w = nearest_anchor(height, width, base=self.params.image_size)
            # a small base scales some anchors off the tokenizer's stride (base 64: 48x72)
            m = self.params.multiple_of
            return max(m, round(h / m) * m), max(m, round(w / m) * m)
        return (self.params.image_size, self.params.image_size)

    def fit(self, image: Any, size: tuple[int, int]):
        """A PIL image -> a (3, H, W) tensor of ``size``: cover it and center-crop."""
        if self.official():
            return to_tensor(snap(image, size, fit="crop"))
        return to_tensor(resize_crop(image, size))

    def tensor(self, ref: Any, load: Load):
        image = load(ref)
        return self.fit(image, self.size(image.height, image.width))


class ConversationsReader(RecordReader):
    """Items: ``image`` (3,H,W) in [0,1] and ``qa`` [(question, answer), ...]."""

    kind = "conversations"
    task = "und"

    def size(self, height: int, width: int) -> tuple[int, int]:
        """Official sizing keeps the image's aspect, sides multiples of ``multiple_of``, area within the
        pixel bounds (ILLUME+'s understanding input)."""
        if self.official():
            lo, hi = self.params.pixel_bounds()
            return native_size(height, width, lo, hi, self.params.multiple_of)
        return super().size(height, width)

    def fit(self, image: Any, size: tuple[int, int]):
        if self.official():
            from PIL import Image

            if (image.height, image.width) != size:
                image = image.resize((size[1], size[0]), Image.Resampling.BICUBIC)
            return to_tensor(image)
        return super().fit(image, size)

    def entry(self, rec: dict[str, Any], where: str, check: Check) -> dict[str, Any]:
        turns = self.field(rec, "conversations", where, list)
        key = self.key("image")
        image = rec.get(key)
        if isinstance(image, list):
            if len(image) > 1:
                raise Unusable("multi-image record(s)")
            image = image[0] if image else None
        if image is None:
            raise Unusable("text-only record(s)")
        if isinstance(image, str) and not image.strip():
            raise BadRecord(f"{where}: field {key!r} (fields.image) is {image!r}, expected an image")
        qa, question, marked = [], None, False
        for i, turn in enumerate(turns):
            if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
                raise BadRecord(f"{where}: turn {i} is {turn!r}, expected {{'from': ..., 'value': str}}")
            who, text = turn.get("from"), turn["value"]
            if who in HUMAN:
                marked = marked or IMAGE_TOKEN in text
                question = text.replace(IMAGE_TOKEN, "").strip()
            elif who in ASSISTANT:
                if question is None:
                    raise BadRecord(f"{where}: turn {i} answers no question (a {who!r} turn after no human turn)")
                qa.append((question, text.strip()))
                question = None
            elif who != "system":
                raise BadRecord(
                    f"{where}: turn {i} is from {who!r}; expected one of {', '.join(HUMAN + ASSISTANT)}, system"
                )
        if not marked:
            raise BadRecord(f"{where}: an image record whose conversation has no {IMAGE_TOKEN} in a human turn")
        if not qa:
            raise BadRecord(f"{where}: the conversation has no human turn followed by an answer")
        return {"image": check(image), "qa": qa}

    def item(self, entry: dict[str, Any], where: str, load: Load) -> dict[str, Any]:
        return {"image": self.tensor(entry["image"], load), "qa": list(entry["qa"])}


class CaptionsReader(RecordReader):
    """Items: ``image`` (3,H,W) in [0,1] and ``caption``."""

    kind = "captions"
    task = "t2i"

    def entry(self, rec: dict[str, Any], where: str, check: Check) -> dict[str, Any]:
        image, caption = self.field(rec, "image", where, object), self.field(rec, "caption", where)
        return {"image": check(image), "caption": caption.strip()}

    def item(self, entry: dict[str, Any], where: str, load: Load) -> dict[str, Any]:
        return {"image": self.tensor(entry["image"], load), "caption": entry["caption"]}


class EditsReader(RecordReader):
    """Items: ``image`` (the source) and ``edit`` {``instruction``, ``image`` (the target)}."""

    kind = "edits"
    task = "edit"

    def image_roles(self) -> tuple[str, ...]:
        return ("source", "target")

    def entry(self, rec: dict[str, Any], where: str, check: Check) -> dict[str, Any]:
        source, target = self.field(rec, "source", where, object), self.field(rec, "target", where, object)
        instruction = self.field(rec, "instruction", where)
        return {"source": check(source), "target": check(target), "instruction": instruction.strip()}

    def item(self, entry: dict[str, Any], where: str, load: Load) -> dict[str, Any]:
        source = load(entry["source"])
        size = self.size(source.height, source.width)  # both images at the source's size
        edit = {"instruction": entry["instruction"], "image": self.fit(load(entry["target"]), size)}
        return {"image": self.fit(source, size), "edit": edit}


READERS: dict[str, type[RecordReader]] = {r.kind: r for r in (ConversationsReader, CaptionsReader, EditsReader)}
TASK_OF_KIND: dict[str, str] = {kind: r.task for kind, r in READERS.items()}
