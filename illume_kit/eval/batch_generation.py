"""Batch generation and editing over prompt files, written in the folder layouts benchmarks read.

``illume-kit generate CHECKPOINT --prompts FILE -o OUT/`` and ``illume-kit edit CHECKPOINT --pairs
FILE -o OUT/`` call :func:`run_batch`. Layouts (:data:`LAYOUTS`):

- ``geneval``: GenEval's ``evaluation/evaluate_images.py`` reads ``OUT/<index, 5 digits>/metadata.jsonl``
  (``json.load``: the prompt's own json line) and every ``OUT/<index>/samples/<digits>.png``; samples
  are named ``0000.png``, ``0001.png``, ... as GenEval's README shows, ``grid.png`` optional;
- ``dpg``: DPG-Bench's ``compute_dpg_bench.py`` scores every file of one folder: ``OUT/<item id>.png``,
  the key of its questions being the file name up to the first dot, and crops the image into tiles of
  ``--resolution`` pixels (``--pic-num`` of them, in the order top-left, top-right, bottom-left,
  bottom-right): so each file is a grid, two tiles a row, of the prompt's samples, with no gaps and
  no other file in the folder;
- ``flat``: ``OUT/<name>.png`` (one sample) or ``OUT/<name>_<k, 4 digits>.png``, and
  ``OUT/metadata.jsonl`` with one line per prompt: its json line plus ``outputs`` (its files).

``<name>`` is the line's id (:data:`ID_FIELDS`; a file name field counts without its extension), else
its index zero-padded to 5 digits. Sample ``k`` of prompt ``i`` is seeded by :func:`item_seed` from
(``seed``, ``i``, ``k``) alone, the structured sampler draws each row from its own stream, and each
image is decoded alone with the global generator seeded the same way, so an image does not depend on
the batch size or on which prompts a rerun still has to draw. A file only
ever appears whole (written under a ``.tmp-`` name, then renamed; in ``geneval`` a prompt's whole
folder at once); a rerun skips the prompts whose
files are all there (in ``geneval``: with the same metadata line).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LAYOUTS = ("geneval", "dpg", "flat")
# the text of a prompt line: the first of these present (GenEval: prompt; captions files: caption)
PROMPT_FIELDS = ("prompt", "text", "caption")
INSTRUCTION_FIELDS = ("instruction", "prompt", "text", "edit")
IMAGE_FIELDS = ("image", "source", "input_image")
# the name of a line's output: an id, or a file name without its extension
ID_FIELDS = ("id", "item_id", "key")
FILE_NAME_FIELDS = ("file_name", "filename")
# ILLUME+'s own test files: {"conversations": [{"value": text}, ...], "images": [source]}
CONVERSATION_FIELD = "conversations"
TMP_PREFIX = ".tmp-"
DPG_MAX_SAMPLES = 4  # DPG-Bench crops at most 4 tiles
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")


class BatchFileError(ValueError):
    """A prompt or pair file the batch cannot read; the message names ``file:line``."""


@dataclass(frozen=True)
class Item:
    """One line of a prompt (or pair) file."""

    index: int
    line: int
    text: str
    name: str
    record: dict
    image: Path | None = None  # the source image of an edit


@dataclass
class Summary:
    total: int = 0
    skipped: int = 0
    generated: int = 0
    images: int = 0
    seconds: float = 0.0
    out: Path | None = None


def item_seed(seed: int, index: int, k: int) -> int:
    """The seed of sample ``k`` of prompt ``index`` under the run's ``seed`` (63 bits, well mixed)."""
    digest = hashlib.blake2b(f"{int(seed)}:{int(index)}:{int(k)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


# ---------------------------------------------------------------- reading prompt / pair files


def _where(path: Path, line: int) -> str:
    return f"{path}:{line}"


def _first(record: dict, fields: Sequence[str]) -> tuple[str | None, Any]:
    for key in fields:
        if key in record and record[key] is not None:
            return key, record[key]
    return None, None


def _conversation_text(record: dict) -> Any:
    turns = record.get(CONVERSATION_FIELD)
    if isinstance(turns, list) and turns and isinstance(turns[0], dict):
        value = turns[0].get("value")
        return value.replace("<image>", "").strip() if isinstance(value, str) else value
    return None


def _name_of(record: dict, index: int, where: str) -> str:
    key, value = _first(record, ID_FIELDS)
    if key is None:
        key, value = _first(record, FILE_NAME_FIELDS)
        if key is not None and isinstance(value, str):
            value = Path(value).stem
    if key is None:
        return f"{index:05d}"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BatchFileError(f"{where}: {key} is {value!r:.60}; expected a string or an integer")
    name = str(value)
    if not _SAFE_NAME.fullmatch(name) or name.startswith(TMP_PREFIX):
        raise BatchFileError(
            f"{where}: {key} {name!r:.80} cannot name an output file; valid: letters, digits and _ . + -, "
            "not starting with a dot"
        )
    return name


def _lines(path: Path):
    """(line number, parsed object) of each non-blank line of a jsonl file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BatchFileError(f"{path}: not UTF-8 text ({exc.reason})") from None
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise BatchFileError(f"{_where(path, n)}: not a JSON line ({exc.msg}, column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise BatchFileError(f"{_where(path, n)}: expected a JSON object per line, got {type(obj).__name__}")
        yield n, obj


def _text(record: dict, fields: Sequence[str], where: str, what: str, max_chars: int | None) -> str:
    key, value = _first(record, fields)
    if key is None:
        value = _conversation_text(record)
        key = f"{CONVERSATION_FIELD}[0].value" if value is not None else None
    if key is None:
        present = ", ".join(sorted(record)) or "none"
        raise BatchFileError(
            f"{where}: no {what} text; valid fields: {', '.join(fields)} (or {CONVERSATION_FIELD}[0].value); "
            f"the line has {present}"
        )
    if not isinstance(value, str) or not value.strip():
        raise BatchFileError(f"{where}: {key} is {value!r:.60}; expected a non-empty string")
    if max_chars is not None and len(value) > max_chars:
        raise BatchFileError(f"{where}: {key} is {len(value):,} characters long; valid: at most {max_chars:,}")
    return value


def _check_names(path: Path, items: list[Item]) -> list[Item]:
    if not items:
        raise BatchFileError(f"{path}: no lines to generate from")
    seen: dict[str, int] = {}
    for it in items:
        if it.name in seen:
            raise BatchFileError(
                f"{_where(path, it.line)}: the output name {it.name!r} is also line {seen[it.name]}'s; "
                "ids must be unique"
            )
        seen[it.name] = it.line
    return items


def read_prompts(path: str | Path, max_chars: int | None = None) -> list[Item]:
    """The prompts of a jsonl file (:data:`PROMPT_FIELDS`, :data:`ID_FIELDS`), or of a folder of
    ``.txt`` files, one prompt each, named by the file (DPG-Bench's ``prompts/``)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        items = []
        for i, f in enumerate(files):
            text = f.read_text(encoding="utf-8").strip()
            where = _where(f, 1)
            name = _name_of({"id": f.stem}, i, where)
            record = {"id": f.stem, "prompt": text}
            items.append(Item(i, 1, _text(record, ("prompt",), where, "prompt", max_chars), name, record))
        if not items:
            raise BatchFileError(f"{path}: a folder of prompts holds .txt files, one prompt each; it has none")
        return items
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    items = []
    for i, (n, rec) in enumerate(_lines(path)):
        where = _where(path, n)
        items.append(Item(i, n, _text(rec, PROMPT_FIELDS, where, "prompt", max_chars), _name_of(rec, i, where), rec))
    return _check_names(path, items)


def read_pairs(path: str | Path, max_chars: int | None = None) -> list[Item]:
    """The (source image, instruction) pairs of a jsonl file: :data:`IMAGE_FIELDS` (or ``images[0]``)
    relative to the file's folder, :data:`INSTRUCTION_FIELDS`, :data:`ID_FIELDS`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pair file {path} does not exist")
    items = []
    for i, (n, rec) in enumerate(_lines(path)):
        where = _where(path, n)
        key, value = _first(rec, IMAGE_FIELDS)
        if key is None and isinstance(rec.get("images"), list) and rec["images"]:
            key, value = "images[0]", rec["images"][0]
        if key is None:
            present = ", ".join(sorted(rec)) or "none"
            raise BatchFileError(
                f"{where}: no source image; valid fields: {', '.join(IMAGE_FIELDS)} (or images[0]), a path "
                f"relative to {path.parent}; the line has {present}"
            )
        if not isinstance(value, str) or not value:
            raise BatchFileError(f"{where}: {key} is {value!r:.60}; expected a path")
        image = path.parent / value
        if not image.is_file():
            raise BatchFileError(f"{where}: {key} {value}: {image} does not exist")
        text = _text(rec, INSTRUCTION_FIELDS, where, "instruction", max_chars)
        items.append(Item(i, n, text, _name_of(rec, i, where), rec, image))
    return _check_names(path, items)


# ---------------------------------------------------------------- layouts


def _save_png(image, path: Path) -> None:
    """Write a PIL image to ``path`` through a ``.tmp-`` sibling, so the name only ever holds a whole file."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def tile_grid(images: Sequence, cols: int):
    """PIL images (same size) -> one image, ``cols`` a row, row-major, no gaps."""
    from PIL import Image

    w, h = images[0].size
    rows = math.ceil(len(images) / cols)
    grid = Image.new("RGB", (cols * w, rows * h))
    for j, im in enumerate(images):
        grid.paste(im, ((j % cols) * w, (j // cols) * h))
    return grid


class Layout:
    """Where a prompt's samples go, and whether they are all there."""

    name = ""
    default_samples = 1

    def __init__(self, out: Path, samples: int, grid: bool = False) -> None:
        self.out, self.samples, self.grid = Path(out), samples, grid

    def prepare(self) -> None:
        """Create the folder and drop what an interrupted run left under ``.tmp-`` names."""
        self.out.mkdir(parents=True, exist_ok=True)
        for p in self.out.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()

    def done(self, item: Item) -> bool:
        raise NotImplementedError

    def write(self, item: Item, images: list) -> list[str]:
        """Write the prompt's samples (PIL, in order); the names written, relative to ``out``."""
        raise NotImplementedError

    def finish(self, items: Sequence[Item]) -> None:
        """After the run (skipped prompts included)."""


class GenEvalLayout(Layout):
    name, default_samples = "geneval", 4

    def _folder(self, item: Item) -> Path:
        return self.out / f"{item.index:05d}"

    def _files(self, item: Item) -> list[Path]:
        folder = self._folder(item)
        files = [folder / "samples" / f"{k:04d}.png" for k in range(self.samples)]
        return files + ([folder / "grid.png"] if self.grid else [])

    @staticmethod
    def _metadata(item: Item) -> str:
        return json.dumps(item.record, ensure_ascii=False) + "\n"

    def done(self, item: Item) -> bool:
        meta = self._folder(item) / "metadata.jsonl"
        try:
            same = json.loads(meta.read_text(encoding="utf-8")) == item.record
        except (OSError, ValueError):
            return False
        return same and all(f.is_file() for f in self._files(item))

    def write(self, item: Item, images: list) -> list[str]:
        final = self._folder(item)
        tmp = self.out / f"{TMP_PREFIX}{final.name}"
        (tmp / "samples").mkdir(parents=True)
        (tmp / "metadata.jsonl").write_text(self._metadata(item), encoding="utf-8")
        for k, im in enumerate(images):
            im.save(tmp / "samples" / f"{k:04d}.png", format="PNG")
        if self.grid:
            tile_grid(images, math.ceil(math.sqrt(len(images)))).save(tmp / "grid.png", format="PNG")
        if final.exists():  # a partial or stale folder: replaced as a whole
            old = self.out / f"{TMP_PREFIX}old-{final.name}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        return [str(f.relative_to(self.out)) for f in self._files(item)]


class DpgLayout(Layout):
    name, default_samples = "dpg", 4

    def _file(self, item: Item) -> Path:
        return self.out / f"{item.name}.png"

    def done(self, item: Item) -> bool:
        return self._file(item).is_file()

    def write(self, item: Item, images: list) -> list[str]:
        _save_png(tile_grid(images, 2 if len(images) > 1 else 1), self._file(item))
        return [self._file(item).name]


class FlatLayout(Layout):
    name, default_samples = "flat", 1
    METADATA = "metadata.jsonl"

    def _files(self, item: Item) -> list[Path]:
        if self.samples == 1:
            return [self.out / f"{item.name}.png"]
        return [self.out / f"{item.name}_{k:04d}.png" for k in range(self.samples)]

    def done(self, item: Item) -> bool:
        return all(f.is_file() for f in self._files(item))

    def write(self, item: Item, images: list) -> list[str]:
        for im, f in zip(images, self._files(item)):
            _save_png(im, f)
        return [f.name for f in self._files(item)]

    def finish(self, items: Sequence[Item]) -> None:
        lines = []
        for it in items:
            row = {**it.record, "outputs": [f.name for f in self._files(it)]}
            if it.image is not None:
                row["source"] = str(it.image)
            lines.append(json.dumps(row, ensure_ascii=False) + "\n")
        tmp = self.out / f"{TMP_PREFIX}{self.METADATA}"
        tmp.write_text("".join(lines), encoding="utf-8")
        os.replace(tmp, self.out / self.METADATA)


LAYOUT_CLASSES = {cls.name: cls for cls in (GenEvalLayout, DpgLayout, FlatLayout)}


def make_layout(name: str, out: str | Path, samples: int | None, grid: bool = False) -> Layout:
    """The layout ``name`` writing ``samples`` per prompt (None: the layout's default); ValueError
    naming the valid choices otherwise."""
    if name not in LAYOUT_CLASSES:
        raise ValueError(f"--layout {name!r}: valid layouts are {', '.join(LAYOUTS)}")
    cls = LAYOUT_CLASSES[name]
    n = cls.default_samples if samples is None else int(samples)
    if n < 1:
        raise ValueError(f"--samples {n}: at least 1")
    if name == "dpg" and n > DPG_MAX_SAMPLES:
        raise ValueError(
            f"--samples {n} with --layout dpg: valid 1 to {DPG_MAX_SAMPLES} (DPG-Bench reads at most "
            f"{DPG_MAX_SAMPLES} tiles of a grid)"
        )
    if grid and name != "geneval":
        raise ValueError(f"--grid applies to --layout geneval only (got --layout {name})")
    return cls(Path(out), n, grid)


# ---------------------------------------------------------------- the run


def progress_bar(disable: bool = False):
    """A rich progress bar over samples: count, rate, elapsed and remaining time."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("samples"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=disable,
    )


@dataclass
class _Pending:
    images: dict[int, Any] = field(default_factory=dict)


def run_batch(
    model: Any,
    items: Sequence[Item],
    layout: Layout,
    size_of: Callable[[Item], tuple[int, int]],
    *,
    task: str = "generate",
    source_of: Callable[[Item], Any] | None = None,
    seed: int = 0,
    batch_size: int = 8,
    sampling: dict | None = None,
    decode: dict | None = None,
    progress=None,
) -> Summary:
    """Draw ``layout.samples`` images per item that ``layout`` does not hold yet, ``batch_size`` rows
    (prompts x samples) per sampler call, and write each item once its samples are drawn.

    ``task``: ``generate`` (the item's text is a caption, images of ``size_of(item)``) or ``edit``
    (``source_of(item)``: the source image tensor (3, H, W), the edit having its size). ``sampling``:
    the keyword options of :func:`illume_kit.model.sampler.generate_images` / ``edit_images``
    (cfg, temperature, top_k, top_p, sampling, ...); ``decode``: the detokenizer's."""
    import torch

    from illume_kit.eval.grid import to_pil
    from illume_kit.model.sampler import decode_images, edit_images, generate_images

    if task not in ("generate", "edit"):
        raise ValueError(f"task {task!r}: valid are generate, edit")
    if task == "edit" and source_of is None:
        raise ValueError("an edit batch needs source_of")
    start = time.perf_counter()
    layout.prepare()
    todo = [it for it in items if not layout.done(it)]
    summary = Summary(total=len(items), skipped=len(items) - len(todo), out=layout.out)
    units = [(it, k) for it in todo for k in range(layout.samples)]
    bar = progress.add_task(f"{task} ({layout.name})", total=len(units)) if progress is not None else None
    pending: dict[int, _Pending] = {}
    sources: dict[int, Any] = {}
    for lo in range(0, len(units), batch_size):
        chunk = units[lo : lo + batch_size]
        seeds = [item_seed(seed, it.index, k) for it, k in chunk]
        texts = [it.text for it, _ in chunk]
        if task == "generate":
            codes = generate_images(model, texts, [size_of(it) for it, _ in chunk], seed=seeds, **(sampling or {}))
        else:
            for it, _ in chunk:
                if it.index not in sources:
                    sources[it.index] = source_of(it)
            codes = edit_images(model, [sources[it.index] for it, _ in chunk], texts, seed=seeds, **(sampling or {}))
        images = []
        for c, s in zip(codes, seeds):
            # one image per decode, the global generator seeded with the sample's seed: a decoder's noise
            # and its batched arithmetic then do not depend on the batch either
            torch.manual_seed(s)
            images += decode_images(model, [c], **(decode or {}))
        for (it, k), im in zip(chunk, images):
            slot = pending.setdefault(it.index, _Pending())
            slot.images[k] = to_pil(im.detach().float().cpu())
            if len(slot.images) == layout.samples:
                layout.write(it, [slot.images[j] for j in range(layout.samples)])
                del pending[it.index]
                sources.pop(it.index, None)
                summary.generated += 1
                summary.images += layout.samples
        if progress is not None:
            progress.update(bar, advance=len(chunk))
    layout.finish(items)
    summary.seconds = time.perf_counter() - start
    return summary
