"""Procedural shapes world: images with exact ground truth for understanding, generation and editing.

No real data set has exact answers, and none fits a CPU budget. This one costs nothing: each item is
a scene of 1-3 coloured shapes, each in its own named cell of a 2x2 or 3x3 grid, rendered with
Pillow at ``supersample`` x resolution and box-downsampled (antialiased). From the same attributes
come a caption, question/answer pairs and an edit (instruction + re-rendered target), all with a
small, regular vocabulary that a tiny LLM learns in minutes.

Determinism and disjoint splits: item ``i`` of a split is drawn from ``Random(f"{seed}/{split}/{i}")``
and re-drawn until the crc32 of its caption falls in that split's bucket (10% test, 10% val,
80% train), so no caption is shared across splits. The vocabulary (``shapes_vocab``, listed by
``illume-kit show dataset shapes``) is public: evaluation probes size their heads from it.
"""

from __future__ import annotations

import random
import zlib
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from illume_kit.data.params import ShapesParams
from illume_kit.data.shapes_vocab import (  # noqa: F401  (the world's words, re-exported)
    BACKGROUNDS,
    CAPTION_JOIN,
    COLOR_NAMES,
    COLORS,
    EDITS,
    GRID_POSITIONS,
    NUMBER_WORDS,
    OBJECT,
    QUESTIONS,
    SHAPES,
    SIZES,
)

SIZE_FRACTION = {"small": 0.5, "large": 0.85}  # object side as a fraction of the cell side
POSITIONS: tuple[str, ...] = tuple(p for row in GRID_POSITIONS[3] for p in row)  # 3x3 superset
MAX_OBJECTS = 4  # hard upper bound of ShapesParams.max_objects
EDIT_KINDS: tuple[str, ...] = ("color", "move", "add", "remove")
SPLIT_BUCKETS = {"test": range(0, 1), "val": range(1, 2), "train": range(2, 10)}  # crc32(caption) % 10


def positions(grid: int) -> tuple[str, ...]:
    """Named cells of a grid in reading order."""
    return tuple(p for row in GRID_POSITIONS[grid] for p in row)


# ---------------------------------------------------------------- scenes (plain, JSON-able dicts)


def _new_object(rng: random.Random, cell: tuple[int, int], grid: int) -> dict[str, Any]:
    return {
        "shape": rng.choice(SHAPES),
        "color": rng.choice(COLOR_NAMES),
        "size": rng.choice(SIZES),
        "position": GRID_POSITIONS[grid][cell[0]][cell[1]],
        "cell": cell,
        "offset": (rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5)),  # jitter inside the cell
    }


def _sorted(objects: list[dict]) -> list[dict]:
    return sorted(objects, key=lambda o: tuple(o["cell"]))


def sample_scene(
    rng: random.Random, grid: int = 3, min_objects: int = 1, max_objects: int = 3, varied_background: bool = True
) -> dict[str, Any]:
    """Draw a scene: objects in distinct cells, a background tone and a gradient shade."""
    n = rng.randint(min_objects, max_objects)
    cells = rng.sample([(r, c) for r in range(grid) for c in range(grid)], n)
    bg = rng.choice(tuple(BACKGROUNDS)) if varied_background else "black"
    return {
        "grid": grid,
        "objects": _sorted([_new_object(rng, cell, grid) for cell in cells]),
        "count": n,
        "background": bg,
        "shade": rng.uniform(-1.0, 1.0) if varied_background else 0.0,
    }


def describe(obj: dict) -> str:
    return OBJECT.format(size=obj["size"], color=obj["color"], shape=obj["shape"], position=obj["position"])


def caption_of(scene: dict) -> str:
    """'a small red circle at the top left and a large blue square at the center'."""
    return CAPTION_JOIN.join(describe(o) for o in scene["objects"])


def regions_of(scene: dict) -> list[dict[str, Any]]:
    """One region per grid cell: its box (x0, y0, x1, y1) as fractions of the image side and what it
    holds ('a small red circle', or 'nothing'). Dense text for local image-text objectives."""
    g, held = scene["grid"], {tuple(o["cell"]): o for o in scene["objects"]}
    out = []
    for r in range(g):
        for c in range(g):
            o = held.get((r, c))
            text = f"a {o['size']} {o['color']} {o['shape']}" if o else "nothing"
            out.append({"box": (c / g, r / g, (c + 1) / g, (r + 1) / g), "text": text})
    return out


def caption_split(caption: str) -> str:
    bucket = zlib.crc32(caption.encode()) % 10
    return next(s for s, r in SPLIT_BUCKETS.items() if bucket in r)


def questions_of(scene: dict, rng: random.Random) -> list[tuple[str, str]]:
    """Question/answer pairs with exact answers (one word or a position name)."""
    objs = scene["objects"]
    q = {kind: template for kind, (template, _) in QUESTIONS.items()}
    qa = [(q["count"], NUMBER_WORDS[len(objs)])]
    for o in objs:
        qa += [
            (q["shape"].format(position=o["position"]), o["shape"]),
            (q["color"].format(position=o["position"]), o["color"]),
            (q["size"].format(position=o["position"]), o["size"]),
        ]
    for o in objs:  # "where" only when the colour+shape pair names one object
        if sum(p["color"] == o["color"] and p["shape"] == o["shape"] for p in objs) == 1:
            qa.append((q["position"].format(color=o["color"], shape=o["shape"]), o["position"]))
    kind = rng.choice(SHAPES)
    qa.append((q["exists"].format(shape=kind), "yes" if any(o["shape"] == kind for o in objs) else "no"))
    empty = [p for p in positions(scene["grid"]) if p not in {o["position"] for o in objs}]
    if empty:
        qa.append((q["shape"].format(position=rng.choice(empty)), "nothing"))
    return qa


def _copy(scene: dict) -> dict:
    return {**scene, "objects": [dict(o) for o in scene["objects"]]}


def sample_edit(scene: dict, rng: random.Random, min_objects: int = 1, max_objects: int = 3) -> tuple[str, dict]:
    """An instruction and the scene it should produce (change colour, move, add or remove one shape)."""
    grid, objs = scene["grid"], scene["objects"]
    taken = {tuple(o["cell"]) for o in objs}  # tuples, or lists after a JSON round trip
    free = [(r, c) for r in range(grid) for c in range(grid) if (r, c) not in taken]
    kinds = ["color"]
    if free:
        kinds.append("move")
    if free and len(objs) < max_objects:
        kinds.append("add")
    if len(objs) > min_objects:
        kinds.append("remove")
    kind, target = rng.choice(kinds), _copy(scene)
    i = rng.randrange(len(objs))
    o = target["objects"][i]
    if kind == "color":
        new = rng.choice([c for c in COLOR_NAMES if c != o["color"]])
        text = EDITS["color"].format(shape=o["shape"], position=o["position"], color=new)
        o["color"] = new
    elif kind == "move":
        cell = rng.choice(free)
        pos = GRID_POSITIONS[grid][cell[0]][cell[1]]
        text = EDITS["move"].format(shape=o["shape"], position=o["position"], to=pos)
        o.update(cell=cell, position=pos)
    elif kind == "add":
        new = _new_object(rng, rng.choice(free), grid)
        text = EDITS["add"].format(**{k: new[k] for k in ("size", "color", "shape", "position")})
        target["objects"].append(new)
    else:
        text = EDITS["remove"].format(shape=o["shape"], position=o["position"])
        del target["objects"][i]
    target["objects"] = _sorted(target["objects"])
    target["count"] = len(target["objects"])
    return text, target


# ---------------------------------------------------------------- rendering


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "star":
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        return [(cx + rr * np.cos(a), cy - rr * np.sin(a)) for a, rr in zip(angles, radii)]
    raise ValueError(f"no polygon for shape {shape!r}")


def render(scene: dict, image_size: int, supersample: int = 4, jitter: float = 1.0) -> Image.Image:
    """Draw a scene at ``image_size * supersample`` and box-downsample to ``image_size`` (RGB).
    ``jitter`` scales each object's drawn offset from its cell centre (0: centred)."""
    side = image_size * supersample
    base = np.array(BACKGROUNDS[scene["background"]], dtype=np.float32)
    ramp = np.linspace(1.0, -1.0, side, dtype=np.float32)[:, None] * scene["shade"] * 24.0
    canvas = np.clip(base[None, None, :] + ramp[:, :, None], 0, 255).astype(np.uint8)
    img = Image.fromarray(np.broadcast_to(canvas, (side, side, 3)).copy())
    draw = ImageDraw.Draw(img)
    cell = side / scene["grid"]
    for o in scene["objects"]:
        s = cell * SIZE_FRACTION[o["size"]]
        cx = (o["cell"][1] + 0.5) * cell + jitter * o["offset"][0] * (cell - s) / 2
        cy = (o["cell"][0] + 0.5) * cell + jitter * o["offset"][1] * (cell - s) / 2
        r, fill = s / 2, COLORS[o["color"]]
        if o["shape"] == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif o["shape"] == "square":
            h = r * 0.85
            draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
        else:
            draw.polygon(_polygon(o["shape"], cx, cy, r), fill=fill)
    if supersample > 1:
        img = img.resize((image_size, image_size), Image.Resampling.BOX)
    return img


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> float (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


# ---------------------------------------------------------------- dataset


class ShapesDataset(Dataset):
    """Items: ``image`` (3,H,W) in [0,1], ``caption``, ``qa`` [(q, a)], ``attributes`` (the scene),
    ``regions`` (each cell's box and text, see ``regions_of``) and,
    with ``edits``, ``edit`` = {instruction, image, attributes} (the target scene after the edit)."""

    Params = ShapesParams

    def __init__(self, params: ShapesParams | None = None):
        self.params = params if params is not None else ShapesParams()

    def __len__(self) -> int:
        return self.params.num_samples

    def _rng(self, index: int, tag: str) -> random.Random:
        p = self.params
        return random.Random(f"{p.seed}/{p.split}/{index}/{tag}")

    def scene(self, index: int) -> dict[str, Any]:
        """The attributes of item ``index`` (cheap: no rendering)."""
        if not 0 <= index < len(self):
            raise IndexError(f"shapes index {index} out of range [0, {len(self)})")
        p = self.params
        for attempt in range(10_000):
            rng = self._rng(index, str(attempt))
            scene = sample_scene(rng, p.grid, p.min_objects, p.max_objects, p.varied_background)
            if caption_split(caption_of(scene)) == p.split:
                return scene
        raise RuntimeError(f"no {p.split} scene found for index {index}")  # pragma: no cover

    def size_of(self, index: int) -> tuple[int, int]:
        return (self.params.image_size, self.params.image_size)

    def task_counts(self) -> dict[str, dict[str, int]]:
        n = len(self)
        return {"shapes": {"und": n, "t2i": n, **({"edit": n} if self.params.edits else {})}}

    def __getitem__(self, index: int) -> dict[str, Any]:
        p = self.params
        scene = self.scene(index)
        item = {
            "image": to_tensor(render(scene, p.image_size, p.supersample, p.jitter)),
            "caption": caption_of(scene),
            "qa": questions_of(scene, self._rng(index, "qa")),
            "attributes": scene,
            "regions": regions_of(scene),
        }
        if p.edits:
            text, target = sample_edit(scene, self._rng(index, "edit"), p.min_objects, p.max_objects)
            item["edit"] = {
                "instruction": text,
                "image": to_tensor(render(target, p.image_size, p.supersample, p.jitter)),
                "attributes": target,
            }
        return item
