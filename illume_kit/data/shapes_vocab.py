"""The words and sentence patterns of the shapes world, in one torch-free place.

``illume_kit.data.shapes`` draws every caption, question, answer and edit instruction from these
templates, so what ``illume-kit show dataset shapes`` lists (``vocabulary()``) is exactly what a
model trained on the world has seen: it answers "what color is the shape at the top left?", not
"what colour is the circle?".
"""

from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 215, 40),
    "green": (40, 170, 70),
    "blue": (50, 90, 230),
    "purple": (150, 70, 200),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
SIZES: tuple[str, ...] = ("small", "large")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (12, 12, 12),
    "dark gray": (64, 64, 64),
    "gray": (128, 128, 128),
    "light gray": (200, 200, 200),
}
GRID_POSITIONS: dict[int, tuple[tuple[str, ...], ...]] = {
    2: (("top left", "top right"), ("bottom left", "bottom right")),
    3: (
        ("top left", "top center", "top right"),
        ("middle left", "center", "middle right"),
        ("bottom left", "bottom center", "bottom right"),
    ),
}
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four")

# a caption names every object, joined with " and "
OBJECT = "a {size} {color} {shape} at the {position}"
CAPTION_JOIN = " and "
# question kind -> (template, what the answer is)
QUESTIONS: dict[str, tuple[str, str]] = {
    "count": ("how many shapes are there?", "a number word"),
    "shape": ("what shape is at the {position}?", "a shape, or 'nothing' for an empty cell"),
    "color": ("what color is the shape at the {position}?", "a color"),
    "size": ("what size is the shape at the {position}?", "a size"),
    "position": ("where is the {color} {shape}?", "a position (asked only when one object matches)"),
    "exists": ("is there a {shape}?", "yes or no"),
}
# edit kind -> instruction template
EDITS: dict[str, str] = {
    "color": "make the {shape} at the {position} {color}",
    "move": "move the {shape} at the {position} to the {to}",
    "add": "add " + OBJECT,
    "remove": "remove the {shape} at the {position}",
}


def vocabulary() -> dict[str, list[str]]:
    """Every word and pattern the world's texts use, by kind (what ``show dataset shapes`` prints)."""
    return {
        "shapes": list(SHAPES),
        "colors": list(COLOR_NAMES),
        "sizes": list(SIZES),
        "positions (grid 2)": [p for row in GRID_POSITIONS[2] for p in row],
        "positions (grid 3)": [p for row in GRID_POSITIONS[3] for p in row],
        "numbers": list(NUMBER_WORDS),
        "caption": [OBJECT + CAPTION_JOIN + "...  (one phrase per object)"],
        "questions": [f"{q}  -> {a}" for q, a in QUESTIONS.values()],
        "edit instructions": list(EDITS.values()),
    }


def words(grid: int | None = None) -> set[str]:
    """Every word the world's texts can use (captions, questions, answers, edit instructions), with
    the positions of ``grid`` only when given. What a checkpoint trained on the world has seen when
    it records no vocabulary of its own."""
    import re

    grids = [grid] if grid in GRID_POSITIONS else list(GRID_POSITIONS)
    texts = [
        *SHAPES,
        *COLOR_NAMES,
        *SIZES,
        *NUMBER_WORDS,
        "yes no nothing",
        OBJECT,
        CAPTION_JOIN,
        *(q for q, _ in QUESTIONS.values()),
        *EDITS.values(),
        *(p for g in grids for row in GRID_POSITIONS[g] for p in row),
    ]
    return {w for t in texts for w in re.findall(r"[^\W_]+", re.sub(r"\{\w+\}", " ", t).lower())}
