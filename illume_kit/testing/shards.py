"""Small synthetic webdataset tar shards of each task kind, for tests and benchmarks.

Every record ``i`` has the key ``{i:06d}``, a ``size`` x ``size`` PNG of one colour drawn from ``i``
(so a test can tell items apart by pixels), and texts that name ``i``. ``layout="members"`` writes
``KEY.json`` whose image fields name members (``"image": "image.png"`` and ``KEY.image.png``);
``layout="plain"`` writes ``KEY.png`` and ``KEY.txt`` (captions only; read with
``fields: {image: png, caption: txt}``). ``bad`` turns records into bad ones by index:
``missing_image`` (the member is absent), ``corrupt`` (the PNG's bytes cut short), ``no_field`` (the
caption / conversations / instruction field is absent), ``no_image_token`` (a conversation without
``<image>``); ``text_only`` indices write conversations without an image.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

BAD_KINDS = ("missing_image", "corrupt", "no_field", "no_image_token")


def png_bytes(i: int, size: int = 16) -> bytes:
    """A PNG of one colour drawn from ``i``."""
    from PIL import Image

    colour = ((i * 67) % 256, (i * 131 + 40) % 256, (i * 29 + 90) % 256)
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


def _sample(kind: str, i: int, size: int, layout: str, bad: str | None, text_only: bool) -> dict[str, Any]:
    key = f"{i:06d}"
    sample: dict[str, Any] = {"__key__": key}
    if layout == "plain":
        if kind != "captions":
            raise ValueError("layout 'plain' writes captions only")
        if bad != "missing_image":
            sample["png"] = png_bytes(i, size)[: 40 if bad == "corrupt" else None]
        if bad != "no_field":
            sample["txt"] = f"a picture number {i}"
        return sample
    roles = {"edits": ("source", "target")}.get(kind, ("image",))
    rec: dict[str, Any] = {}
    if not text_only:
        for n, role in enumerate(roles):
            rec[role] = f"{role}.png"
            data = png_bytes(i * 2 + n if kind == "edits" else i, size)
            if bad == "corrupt":
                data = data[:40]
            if bad != "missing_image":
                sample[f"{role}.png"] = data
    question = "what is shown?" if text_only or bad == "no_image_token" else "<image>\nwhat is shown?"
    fields = {
        "captions": {"caption": f"a picture number {i}"},
        "conversations": {
            "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": f"picture {i}"}]
        },
        "edits": {"instruction": f"recolour picture {i}"},
    }[kind]
    if bad == "no_field":
        fields = {}
    sample["json"] = json.dumps({**rec, **fields}).encode()
    return sample


def write_shards(
    folder: str | Path,
    n: int,
    *,
    kind: str = "captions",
    per_shard: int = 10,
    size: int = 16,
    layout: str = "members",
    bad: dict[int, str] | None = None,
    text_only: set[int] | frozenset[int] = frozenset(),
    prefix: str = "shard",
) -> list[Path]:
    """``n`` records of ``kind`` in shards of ``per_shard`` records, ``folder/PREFIX-000000.tar`` on; their paths."""
    import webdataset as wds

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bad = bad or {}
    unknown = set(bad.values()) - set(BAD_KINDS)
    if unknown:
        raise ValueError(f"bad kinds {sorted(unknown)}: expected one of {', '.join(BAD_KINDS)}")
    paths: list[Path] = []
    for s, start in enumerate(range(0, n, per_shard)):
        path = folder / f"{prefix}-{s:06d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(start, min(n, start + per_shard)):
                sink.write(_sample(kind, i, size, layout, bad.get(i), i in text_only))
        paths.append(path)
    return paths
