"""What `illume-kit show dataset shapes` lists is every word and pattern the world's texts use."""

import os
import re
import subprocess
import sys
from pathlib import Path

from illume_kit.data.params import ShapesParams
from illume_kit.data.shapes import ShapesDataset
from illume_kit.data.shapes_vocab import EDITS, OBJECT, QUESTIONS, vocabulary

ROOT = Path(__file__).resolve().parents[2]


def pattern(template: str) -> re.Pattern:
    """A template as a regex whose slots take only listed words."""
    v = vocabulary()
    words = {
        "shape": v["shapes"],
        "color": v["colors"],
        "size": v["sizes"],
        "position": v["positions (grid 3)"],
        "to": v["positions (grid 3)"],
    }
    out, last = "", 0
    for m in re.finditer(r"\{(\w+)\}", template):
        out += re.escape(template[last : m.start()]) + "(?:" + "|".join(map(re.escape, words[m.group(1)])) + ")"
        last = m.end()
    return re.compile(out + re.escape(template[last:]))


def test_every_text_of_the_world_matches_a_listed_pattern():
    v = vocabulary()
    questions = [pattern(q) for q, _ in QUESTIONS.values()]
    edits = [pattern(e) for e in EDITS.values()]
    caption = re.compile(f"{pattern(OBJECT).pattern}(?: and {pattern(OBJECT).pattern})*")
    answers = set(
        v["shapes"] + v["colors"] + v["sizes"] + v["positions (grid 3)"] + v["numbers"] + ["yes", "no", "nothing"]
    )
    kinds = set()
    for grid in (2, 3):
        ds = ShapesDataset(ShapesParams(split="val", num_samples=60, grid=grid, image_size=16, supersample=1))
        for i in range(len(ds)):
            item = ds[i]
            assert caption.fullmatch(item["caption"]), item["caption"]
            for q, a in item["qa"]:
                assert any(p.fullmatch(q) for p in questions), q
                assert a in answers, (q, a)
            kinds.add(next(k for k, p in zip(EDITS, edits) if p.fullmatch(item["edit"]["instruction"])))
    assert kinds == set(EDITS)  # every edit kind was drawn, and each matched its listed pattern


def test_the_world_says_color_not_colour():
    ds = ShapesDataset(ShapesParams(split="val", num_samples=20, image_size=16, supersample=1))
    texts = [q for i in range(len(ds)) for q, _ in ds[i]["qa"]]
    assert any(q.startswith("what color is the shape at the ") for q in texts)
    assert not any("colour" in q for q in texts)


def test_show_lists_the_vocabulary_without_torch_under_both_role_names():
    code = (
        "import sys; from illume_kit.cli.main import main; rc = main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules, 'imported torch'; sys.exit(rc)"
    )
    outs = []
    for role in ("dataset", "data"):
        r = subprocess.run(
            [sys.executable, "-c", code, "show", role, "shapes"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert r.returncode == 0, r.stderr
        outs.append(r.stdout)
    assert outs[0] == outs[1]
    said = outs[0]
    assert "vocabulary" in said
    for words in vocabulary().values():
        for w in words:
            assert w in said, w
