"""A small real-image corpus built from the sample images scikit-image ships (no download).

``write_corpus(folder)`` writes a few dozen crops of ``skimage.data`` photographs as PNG files, and
three JSON-lines files over them in the forms the ``conversations``, ``captions`` and ``edits``
datasets read: captions naming what each crop shows, question-answer conversations about it
(subject, colour or grayscale, which part of the photograph), and edit pairs whose targets are
made from the sources by a flip, a rotation, a crop or a colour change, with a matching instruction.
``write_corpus_forms(folder)`` writes the same records in every storage form the task datasets
read (``FORMS``): the jsonl files, webdataset tar shards, a ``datasets`` folder and parquet files.
Everything is deterministic: the same records come out on every machine with the same scikit-image.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# skimage.data name -> what the photograph shows (only images that ship inside the wheel)
SUBJECTS = {
    "astronaut": "an astronaut",
    "camera": "a cameraman",
    "chelsea": "a cat",
    "coffee": "a cup of coffee",
    "rocket": "a rocket",
    "coins": "coins",
    "moon": "the surface of the moon",
    "page": "a page of text",
    "clock": "a clock",
    "brick": "a brick wall",
    "grass": "grass",
    "colorwheel": "a colour wheel",
    "immunohistochemistry": "stained tissue",
    "hubble_deep_field": "galaxies in deep space",
}
# crops of each photograph: (name, left, top, right, bottom) as fractions of its width and height
CROPS = (("whole", 0.0, 0.0, 1.0, 1.0), ("left", 0.0, 0.0, 0.6, 1.0), ("right", 0.4, 0.0, 1.0, 1.0))
PART = {"whole": "the whole picture", "left": "the left part", "right": "the right part"}
SIDE = 96  # pixels on each side of a written image: small files, larger than the served 64


def _source(name: str) -> Image.Image:
    import skimage.data

    arr = np.asarray(getattr(skimage.data, name)())
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    img = Image.fromarray(arr)
    return img.convert("RGB") if img.mode in ("RGBA", "P") else img


def _crop(img: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
    w, h = img.size
    left, top, right, bottom = box
    img = img.crop((round(left * w), round(top * h), round(right * w), round(bottom * h)))
    return ImageOps.fit(img, (SIDE, SIDE), Image.Resampling.BICUBIC)


# edits: (instruction, function of the source image), cycled over the crops
EDITS = (
    ("flip the image horizontally", ImageOps.mirror),
    ("flip the image upside down", ImageOps.flip),
    ("rotate the image a quarter turn to the left", lambda im: im.transpose(Image.Transpose.ROTATE_90)),
    ("zoom in on the centre", lambda im: ImageOps.fit(im.crop((24, 24, 72, 72)), (SIDE, SIDE))),
    ("make the image black and white", lambda im: ImageOps.grayscale(im).convert("RGB")),
    ("invert the colours", lambda im: ImageOps.invert(im.convert("RGB"))),
    ("swap the red and blue channels", lambda im: Image.merge("RGB", im.convert("RGB").split()[::-1])),
    ("make the image darker", lambda im: im.point(lambda v: v // 2)),
)


def write_corpus(folder: str | Path) -> dict[str, Path]:
    """Write the corpus under ``folder``; returns the paths of ``conversations``, ``captions`` and
    ``edits`` (the jsonl files) and ``root`` (the folder their image paths are relative to)."""
    root = Path(folder)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "edited").mkdir(exist_ok=True)
    conversations, captions, edits = [], [], []
    k = 0
    for name, subject in SUBJECTS.items():
        src = _source(name)
        colour = "grayscale" if src.mode == "L" else "colour"
        for crop, *box in CROPS:
            img = _crop(src, tuple(box)).convert("RGB")
            rel = f"images/{name}_{crop}.png"
            img.save(root / rel)
            part = PART[crop]
            captions.append({"image": rel, "caption": f"{part} of a {colour} photograph of {subject}"})
            conversations.append(
                {
                    "id": f"{name}_{crop}",
                    "image": rel,
                    "conversations": [
                        {"from": "human", "value": "<image>\nWhat does the picture show?"},
                        {"from": "gpt", "value": subject},
                        {"from": "human", "value": "Is it in colour or grayscale?"},
                        {"from": "gpt", "value": colour},
                        {"from": "human", "value": "Which part of the photograph is this?"},
                        {"from": "gpt", "value": part},
                    ],
                }
            )
            instruction, fn = EDITS[k % len(EDITS)]
            k += 1
            target = f"edited/{name}_{crop}.png"
            fn(img).convert("RGB").save(root / target)
            edits.append({"source": rel, "target": target, "instruction": instruction})
    out = {"root": root}
    for kind, records in (("conversations", conversations), ("captions", captions), ("edits", edits)):
        out[kind] = root / f"{kind}.jsonl"
        out[kind].write_text("".join(json.dumps(r) + "\n" for r in records))
    return out


KINDS = ("conversations", "captions", "edits")
FORMS = ("jsonl", "webdataset", "hf", "parquet")
# record keys holding image paths (relative to the corpus root), per kind
IMAGE_KEYS = {"conversations": ("image",), "captions": ("image",), "edits": ("source", "target")}
SHARDS = 3  # tar shards per kind
PARQUET_FILES = 2  # parquet files per kind


def write_corpus_forms(folder: str | Path, forms: Iterable[str] = FORMS) -> dict[str, dict[str, Path]]:
    """Write the corpus (``write_corpus``) and its records in each of ``forms``; returns
    ``{form: {kind: path}}``, the path to give a task dataset as ``params.path`` (with
    ``params.format``: ``jsonl``, ``webdataset``, or ``hf`` for both the ``hf`` and ``parquet`` forms):

    - ``jsonl``: ``KIND.jsonl`` (image paths relative to the corpus folder);
    - ``webdataset``: ``shards/KIND/KIND-000.tar`` ... (``SHARDS`` of them): per sample ``KEY.json``
      (the record, its image keys naming members, e.g. ``"source": "source.png"``) and the images as
      ``KEY.image.png`` or ``KEY.source.png`` and ``KEY.target.png``; the path is the folder;
    - ``hf``: ``hf/KIND``, a ``datasets`` folder (``save_to_disk``) whose image columns are
      ``datasets.Image()`` with the PNG bytes inside;
    - ``parquet``: ``parquet/KIND/KIND-0.parquet`` ... (``PARQUET_FILES`` of them), the same rows;
      the path is the folder.
    """
    forms = tuple(forms)
    unknown = sorted(set(forms) - set(FORMS))
    if unknown:
        raise ValueError(f"write_corpus_forms: unknown form(s) {', '.join(unknown)}; valid: {', '.join(FORMS)}")
    from illume_kit.data.hf import quiet_datasets

    paths = write_corpus(folder)
    root = paths["root"]
    out: dict[str, dict[str, Path]] = {form: {} for form in forms}
    for kind in KINDS:
        records = [json.loads(line) for line in paths[kind].read_text().splitlines()]
        if "jsonl" in forms:
            out["jsonl"][kind] = paths[kind]
        if "webdataset" in forms:
            out["webdataset"][kind] = _write_shards(root, kind, records)
        if "hf" in forms or "parquet" in forms:
            with quiet_datasets() as datasets:
                ds = _dataset(datasets, root, kind, records)
                if "hf" in forms:
                    out["hf"][kind] = root / "hf" / kind
                    ds.save_to_disk(str(out["hf"][kind]))
                if "parquet" in forms:
                    out["parquet"][kind] = parquet = root / "parquet" / kind
                    parquet.mkdir(parents=True, exist_ok=True)
                    for i in range(PARQUET_FILES):
                        part = ds.shard(PARQUET_FILES, i, contiguous=True)
                        part.to_parquet(str(parquet / f"{kind}-{i}.parquet"))
    return out


def _key(kind: str, record: dict) -> str:
    return Path(record[IMAGE_KEYS[kind][0]]).stem  # e.g. astronaut_whole: one sample per crop


def _write_shards(root: Path, kind: str, records: list[dict]) -> Path:
    import webdataset

    folder = root / "shards" / kind
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(records) // SHARDS)
    for i in range(SHARDS):
        with webdataset.TarWriter(str(folder / f"{kind}-{i:03d}.tar"), mtime=0) as sink:
            for rec in records[i * per : (i + 1) * per]:
                sample = {"__key__": _key(kind, rec)}
                meta = dict(rec)
                for role in IMAGE_KEYS[kind]:
                    meta[role] = f"{role}.png"
                    sample[f"{role}.png"] = (root / rec[role]).read_bytes()
                sample["json"] = meta
                sink.write(sample)
    return folder


def _dataset(datasets, root: Path, kind: str, records: list[dict]):
    rows = [
        {
            **rec,
            **{
                role: {"bytes": (root / rec[role]).read_bytes(), "path": Path(rec[role]).name}
                for role in IMAGE_KEYS[kind]
            },
        }
        for rec in records
    ]
    ds = datasets.Dataset.from_list(rows)
    for role in IMAGE_KEYS[kind]:
        ds = ds.cast_column(role, datasets.Image())
    return ds
