"""Where image tokens live in the language model's vocabulary.

ILLUME+ appends to the text vocabulary, in this order: structure tokens (start/end of image, end of
line, start/end of each codebook level), resolution tags (``<height_H>`` then ``<width_W>``), then one
contiguous id range per codebook (semantic, then pixel). The codebooks come in *level order*: the
order their levels take in every image sequence, the tokenizer's (coarse first) unless the recipe's
``model.level_order`` is ``fine_first``. The reference hard-codes the resulting ids
for Qwen2.5; here they are computed once from the tokenizer's codebooks, stored in the checkpoint
manifest, and every other part (sequence assembly, sampler masks, decoding) asks this object.

Torch-free: compose prints it and the manifest stores it without building a model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

FORMAT = 1


class CodebookRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(min_length=1)
    size: int = Field(ge=1)
    start: int = Field(ge=0)


class LayoutRecord(BaseModel):
    """The stored form of a layout (``VocabLayout.to_dict``), checked against what ``build`` gives:
    ranges in order, each starting where the previous ends, and the structure tokens and
    resolution tags of its codebook count and tag step."""

    model_config = ConfigDict(extra="forbid", strict=True)
    format: int = FORMAT
    text_vocab_size: int = Field(ge=1)
    structure: list[str]
    structure_start: int = Field(ge=0)
    resolution_tags: list[str] = Field(min_length=2)
    resolution_start: int = Field(ge=0)
    resolution_step: int = Field(64, ge=1)
    codebooks: list[CodebookRecord] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> LayoutRecord:
        if self.format > FORMAT:
            raise ValueError(f"format {self.format} is newer than this illume-kit understands ({FORMAT})")
        names = [c.name for c in self.codebooks]
        if len(set(names)) != len(names):
            raise ValueError(f"codebook names repeat: {names}")
        n = len(self.resolution_tags) // 2
        expected = VocabLayout.build(
            self.text_vocab_size,
            [(c.name, c.size) for c in self.codebooks],
            self.resolution_step,
            max(n, 1) * self.resolution_step,
        ).to_dict()
        for key, want in expected.items():
            have = getattr(self, key)
            if key == "codebooks":
                have = [c.model_dump() for c in have]
                for i, (h, w) in enumerate(zip(have, want, strict=False)):
                    for k in ("start",):
                        if h[k] != w[k]:
                            raise ValueError(
                                f"codebooks.{i}.start is {h[k]}, expected {w[k]}: each codebook's ids start "
                                "where the previous range ends (no gaps, no overlaps)"
                            )
            elif have != want:
                shown = have if not isinstance(have, list) else f"a list of {len(have)}"
                raise ValueError(f"{key} is {shown}, expected {want if not isinstance(want, list) else want[:4]}")
        return self


_KINDS = {"dict_type": "a mapping", "model_type": "a mapping", "list_type": "a list", "int_type": "an integer"}


def _problem(e: dict) -> str:
    if e["type"] == "missing":
        return "is missing"
    if e["type"] in _KINDS:
        return f"must be {_KINDS[e['type']]}, got {type(e['input']).__name__}"
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if e["type"] in bounds:
        limit = next(iter((e.get("ctx") or {}).values()), "?")
        return f"must be {bounds[e['type']]} {limit}, got {e['input']!r:.40}"
    return e["msg"].removeprefix("Value error, ")


def validation_summary(exc: ValidationError, prefix: str = "") -> str:
    """The first problems of a pydantic error, each as ``key.path: what is wrong``."""
    parts = []
    for e in exc.errors()[:3]:
        loc = ".".join(str(x) for x in (*([prefix] if prefix else []), *e["loc"]))
        parts.append(f"{loc}: {_problem(e)}" if loc else _problem(e))
    more = len(exc.errors()) - 3
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


@dataclass(frozen=True)
class CodebookRange:
    name: str
    size: int
    start: int

    @property
    def stop(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class VocabLayout:
    """Computed token-id layout. Build with ``VocabLayout.build``; serialise with ``to_dict``."""

    text_vocab_size: int
    structure: tuple[str, ...]
    structure_start: int
    resolution_tags: tuple[str, ...]
    resolution_start: int
    codebooks: tuple[CodebookRange, ...]
    resolution_step: int = 64
    _index: dict = field(default_factory=dict, compare=False, repr=False)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        text_vocab_size: int,
        codebooks: Sequence[tuple[str, int]],
        resolution_step: int = 64,
        max_resolution: int = 1024,
    ) -> VocabLayout:
        if text_vocab_size < 1:
            raise ValueError("text_vocab_size must be >= 1")
        if not codebooks:
            raise ValueError("a vocab layout needs at least one codebook")
        if resolution_step < 1 or max_resolution < resolution_step:
            raise ValueError("need 1 <= resolution_step <= max_resolution")
        structure = ["<start_of_image>", "<end_of_image>", "<end_of_line>"]
        for i in range(len(codebooks)):
            structure += [f"<start_of_level{i}>", f"<end_of_level{i}>"]
        sizes = range(resolution_step, max_resolution + 1, resolution_step)
        tags = [f"<height_{s}>" for s in sizes] + [f"<width_{s}>" for s in sizes]
        s0 = text_vocab_size
        r0 = s0 + len(structure)
        start = r0 + len(tags)
        ranges = []
        for name, size in codebooks:
            ranges.append(CodebookRange(name, int(size), start))
            start += int(size)
        return cls(text_vocab_size, tuple(structure), s0, tuple(tags), r0, tuple(ranges), resolution_step)

    def __post_init__(self) -> None:
        idx = {t: self.structure_start + i for i, t in enumerate(self.structure)}
        idx.update({t: self.resolution_start + i for i, t in enumerate(self.resolution_tags)})
        self._index.update(idx)

    # ---- lookups ------------------------------------------------------------------------
    @property
    def total_size(self) -> int:
        return self.codebooks[-1].stop

    @property
    def num_added(self) -> int:
        return self.total_size - self.text_vocab_size

    @property
    def special_tokens(self) -> tuple[str, ...]:
        return self.structure + self.resolution_tags

    def token_id(self, token: str) -> int:
        try:
            return self._index[token]
        except KeyError:
            raise KeyError(f"{token!r} is not a structure token or resolution tag of this layout") from None

    @property
    def soi(self) -> int:
        return self.token_id("<start_of_image>")

    @property
    def eoi(self) -> int:
        return self.token_id("<end_of_image>")

    @property
    def eol(self) -> int:
        return self.token_id("<end_of_line>")

    def level_start(self, level: int) -> int:
        return self.token_id(f"<start_of_level{level}>")

    def level_end(self, level: int) -> int:
        return self.token_id(f"<end_of_level{level}>")

    def codebook(self, name: str) -> CodebookRange:
        for cb in self.codebooks:
            if cb.name == name:
                return cb
        raise KeyError(f"no codebook {name!r} in layout (have: {', '.join(c.name for c in self.codebooks)})")

    def resolution_ids(self, height: int, width: int) -> tuple[int, int]:
        """Ids of ``<height_H>`` and ``<width_W>``; sizes must be multiples of the tag step."""
        for side, v in (("height", height), ("width", width)):
            if f"<{side}_{v}>" not in self._index:
                valid = (
                    f"multiples of {self.resolution_step} up to {len(self.resolution_tags) // 2 * self.resolution_step}"
                )
                raise ValueError(f"no resolution tag for {side} {v}: valid sizes are {valid}")
        return self._index[f"<height_{height}>"], self._index[f"<width_{width}>"]

    def image_length(self, grids: Mapping[str, tuple[int, int]], with_tags: bool = True) -> int:
        """Tokens one image occupies: tags, SOI, per level start + rows (each closed by EOL) + end, EOI."""
        n = 2 + (2 if with_tags else 0)
        for cb in self.codebooks:
            h, w = grids[cb.name]
            n += 2 + h * (w + 1)
        return n

    # ---- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "text_vocab_size": self.text_vocab_size,
            "structure": list(self.structure),
            "structure_start": self.structure_start,
            "resolution_tags": list(self.resolution_tags),
            "resolution_start": self.resolution_start,
            "resolution_step": self.resolution_step,
            "codebooks": [{"name": c.name, "size": c.size, "start": c.start} for c in self.codebooks],
        }

    @classmethod
    def from_dict(cls, d: Any) -> VocabLayout:
        """A stored layout, validated (ValueError naming the key path otherwise)."""
        try:
            rec = LayoutRecord.model_validate(d)
        except ValidationError as exc:
            raise ValueError(f"bad vocab layout: {validation_summary(exc, 'vocab_layout')}") from None
        return cls(
            text_vocab_size=rec.text_vocab_size,
            structure=tuple(rec.structure),
            structure_start=rec.structure_start,
            resolution_tags=tuple(rec.resolution_tags),
            resolution_start=rec.resolution_start,
            codebooks=tuple(CodebookRange(c.name, c.size, c.start) for c in rec.codebooks),
            resolution_step=rec.resolution_step,
        )

    def rows(self) -> Iterable[tuple[str, int, int]]:
        """(what, first id, stop id) rows for display."""
        yield ("text", 0, self.text_vocab_size)
        yield ("structure", self.structure_start, self.structure_start + len(self.structure))
        yield ("resolution tags", self.resolution_start, self.resolution_start + len(self.resolution_tags))
        for c in self.codebooks:
            yield (f"codebook {c.name}", c.start, c.stop)
