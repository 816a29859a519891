"""`generate --prompts` / `edit --pairs` on the shipped tiny checkpoint: benchmark layouts, resume, seeding."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from illume_kit.cli.main import main
from illume_kit.eval.batch_generation import item_seed, read_prompts

CKPT = "checkpoints/dualvitok_qwen2_mllm_tiny"
SCENE = "checkpoints/scene.png"
PROMPTS = [
    {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a red circle"},
    {"tag": "colors", "prompt": "a blue square at the top left"},
    {"tag": "two_object", "prompt": "a green triangle and a red circle"},
]


@pytest.fixture(scope="module")
def loaded():
    from illume_kit.model.checkpoint import load_checkpoint

    return load_checkpoint(CKPT)


@pytest.fixture(autouse=True)
def one_load(loaded, monkeypatch):
    """The checkpoint is read once for the module: every verb below gets the same model."""
    import illume_kit.model.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda path: loaded)


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# the tiny model is peaked at its recipe's sampling: hot, unguided draws make every sample differ
HOT = ("--cfg", "1", "--temperature", "3")


def _generate(prompts: Path, out: Path, *extra: str) -> int:
    return main(["generate", CKPT, "--prompts", str(prompts), "-o", str(out), "--seed", "5", *extra])


def test_geneval_layout_resume_and_seeding(tmp_path, capsys):
    prompts = _jsonl(tmp_path / "evaluation_metadata.jsonl", PROMPTS)
    out = tmp_path / "geneval"
    assert _generate(prompts, out, "--samples", "2", "--batch-size", "3", *HOT) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000", "00001", "00002"]
    for i, row in enumerate(PROMPTS):
        folder = out / f"{i:05d}"
        assert json.loads((folder / "metadata.jsonl").read_text()) == row  # GenEval json.load()s it
        assert sorted(p.name for p in (folder / "samples").iterdir()) == ["0000.png", "0001.png"]
        for png in (folder / "samples").iterdir():
            assert Image.open(png).size == (64, 64)
    assert not (out / "00000" / "grid.png").exists()
    first = {p: (p.stat().st_mtime_ns, _pixels(p)) for p in out.rglob("*.png")}
    assert len({a.tobytes() for _, a in first.values()}) == 6  # each sample its own draw
    capsys.readouterr()

    # a rerun draws nothing and touches nothing
    assert _generate(prompts, out, "--samples", "2", "--batch-size", "3", *HOT) == 0
    assert "skipped 3 already finished" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == {p: m for p, (m, _) in first.items()}

    # one prompt's folder gone: only it is drawn again, at another batch size, pixel for pixel the same
    shutil.rmtree(out / "00001")
    assert _generate(prompts, out, "--samples", "2", "--batch-size", "1", *HOT) == 0
    assert "wrote 1 prompt (2 images)" in capsys.readouterr().out
    for p, (mtime, pixels) in first.items():
        if p.parent.parent.name == "00001":
            assert np.array_equal(_pixels(p), pixels)
        else:
            assert p.stat().st_mtime_ns == mtime

    # a changed line is not "finished": its folder is drawn again with the new metadata
    changed = [*PROMPTS[:2], {**PROMPTS[2], "prompt": "a red square"}]
    _jsonl(prompts, changed)
    assert _generate(prompts, out, "--samples", "2", "--grid") == 0
    assert json.loads((out / "00002" / "metadata.jsonl").read_text())["prompt"] == "a red square"
    assert Image.open(out / "00002" / "grid.png").size == (128, 64)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_dpg_layout_is_a_two_by_two_grid_per_item_id(tmp_path):
    prompts = _jsonl(
        tmp_path / "dpg.jsonl",
        [{"item_id": "partiprompts7", "text": "a red circle"}, {"file_name": "coco12.txt", "caption": "a blue star"}],
    )
    out = tmp_path / "dpg"
    assert _generate(prompts, out, "--layout", "dpg", "--batch-size", "5", *HOT) == 0
    assert sorted(p.name for p in out.iterdir()) == ["coco12.png", "partiprompts7.png"]  # nothing else to score
    grid = _pixels(out / "partiprompts7.png")
    assert grid.shape == (128, 128, 3)  # DPG-Bench --resolution 64 --pic-num 4 crops four 64x64 tiles
    tiles = [grid[r : r + 64, c : c + 64] for r in (0, 64) for c in (0, 64)]
    assert len({t.tobytes() for t in tiles}) == 4

    # DPG-Bench's own prompts folder (one .txt per item) names the files the same way
    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "partiprompts7.txt").write_text("a red circle\n")
    items = read_prompts(folder)
    assert [(it.name, it.text) for it in items] == [("partiprompts7", "a red circle")]


def test_flat_layout_writes_metadata_with_the_outputs(tmp_path):
    prompts = _jsonl(tmp_path / "p.jsonl", [{"id": "one", "prompt": "a red circle"}, {"prompt": "a blue square"}])
    out = tmp_path / "flat"
    assert _generate(prompts, out, "--layout", "flat", "--samples", "2") == 0
    assert sorted(p.name for p in out.glob("*.png")) == [
        "00001_0000.png",
        "00001_0001.png",
        "one_0000.png",
        "one_0001.png",
    ]
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert rows[0] == {"id": "one", "prompt": "a red circle", "outputs": ["one_0000.png", "one_0001.png"]}


def test_edit_pairs(tmp_path, capsys):
    shutil.copy(SCENE, tmp_path / "scene.png")
    pairs = _jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"image": "scene.png", "instruction": "make the circle blue", "id": "e1"},
            {"images": ["scene.png"], "conversations": [{"value": "<image>remove the square"}]},  # ILLUME+'s format
        ],
    )
    out = tmp_path / "edits"
    args = ["edit", CKPT, "--pairs", str(pairs), "-o", str(out), "--batch-size", "2"]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00001.png", "e1.png", "metadata.jsonl"]
    assert Image.open(out / "e1.png").size == (64, 64)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["outputs"] for r in rows] == [["e1.png"], ["00001.png"]]
    assert rows[0]["instruction"] == "make the circle blue"
    mtime = (out / "e1.png").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    assert "skipped 2 already finished" in capsys.readouterr().out
    assert (out / "e1.png").stat().st_mtime_ns == mtime


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"prompt": "ok"}', '{"promt": "typo"}'], ":2: no prompt text; valid fields: prompt, text, caption"),
        (['{"prompt": "ok"}', "", '{"prompt": "x"'], ":3: not a JSON line"),
        (['{"prompt": "a", "id": "x"}', '{"prompt": "b", "id": "x"}'], ":2: the output name 'x' is also line 1's"),
        (['{"prompt": "a", "id": "../up"}'], ":1: id '../up' cannot name an output file"),
        (['["a list"]'], ":1: expected a JSON object per line"),
    ],
)
def test_a_bad_prompt_line_names_file_and_line(tmp_path, capsys, lines, message):
    prompts = tmp_path / "bad.jsonl"
    prompts.write_text("\n".join(lines) + "\n")
    assert _generate(prompts, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert f"{prompts}{message}" in err
    assert "Traceback" not in err


def test_bad_pairs_and_mixed_modes_exit_2(tmp_path, capsys):
    pairs = _jsonl(tmp_path / "pairs.jsonl", [{"image": "missing.png", "instruction": "x"}])
    assert main(["edit", CKPT, "--pairs", str(pairs), "-o", str(tmp_path / "o")]) == 2
    assert f"{pairs}:1: image missing.png: {tmp_path / 'missing.png'} does not exist" in capsys.readouterr().err
    prompts = _jsonl(tmp_path / "p.jsonl", PROMPTS)
    assert main(["generate", CKPT, "a caption", "--prompts", str(prompts), "-o", str(tmp_path / "o")]) == 2
    assert "drop the caption argument" in capsys.readouterr().err
    assert main(["generate", CKPT, "a caption", "-o", str(tmp_path / "o.png"), "--samples", "2"]) == 2
    assert "--samples applies with --prompts only" in capsys.readouterr().err
    assert _generate(prompts, tmp_path / "o", "--layout", "dpg", "--samples", "5") == 2
    assert "valid 1 to 4" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_item_seed_depends_on_seed_prompt_and_sample_only():
    seeds = {item_seed(s, i, k) for s in range(3) for i in range(20) for k in range(4)}
    assert len(seeds) == 3 * 20 * 4
    assert item_seed(1, 2, 3) == item_seed(1, 2, 3)
    assert all(0 <= s < 2**63 for s in seeds)


def test_official_sampling_batches_draw_the_same_images_at_any_batch_size(tmp_path):
    prompts = _jsonl(tmp_path / "p.jsonl", PROMPTS[:2])
    out = tmp_path / "official"
    assert _generate(prompts, out, "--samples", "2", "--batch-size", "4", "--sampling", "official") == 0
    first = {p: _pixels(p) for p in out.rglob("*.png")}
    assert len({a.tobytes() for a in first.values()}) > 1
    shutil.rmtree(out / "00000")
    assert _generate(prompts, out, "--samples", "2", "--batch-size", "1", "--sampling", "official") == 0
    assert all(np.array_equal(_pixels(p), a) for p, a in first.items())


@pytest.mark.parametrize("preprocess", ["plain", "official"])
def test_an_unreadable_source_image_names_its_pair_line(tmp_path, capsys, preprocess):
    (tmp_path / "bad.png").write_text("not an image")
    pairs = _jsonl(tmp_path / "pairs.jsonl", [{"image": "bad.png", "instruction": "make it blue"}])
    args = ["edit", CKPT, "--pairs", str(pairs), "-o", str(tmp_path / "o"), "--preprocess", preprocess]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{pairs}:1: " in err and "bad.png" in err and "Traceback" not in err
