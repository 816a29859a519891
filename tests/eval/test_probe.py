"""The shapes attribute probe: shipped weights read held-out ground truth, scoring is exact, and
scripts/train_probe.py trains one that eval loads."""

import importlib.util
from pathlib import Path

import pytest
import torch

import illume_kit.eval.probe as probe_module
from illume_kit.eval.probe import (
    WEIGHTS,
    ShapesProbe,
    cells,
    compare,
    corrupt,
    heldout_scenes,
    load_probe,
    read_scenes,
    score,
    to_side,
)

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_probe.py"
_spec = importlib.util.spec_from_file_location("train_probe", SCRIPT)
train_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_script)


@pytest.fixture(scope="module")
def probe():
    return load_probe()


def test_shipped_weights_are_small_safetensors():
    assert WEIGHTS.suffix == ".safetensors" and WEIGHTS.is_file()
    assert WEIGHTS.stat().st_size < 1_000_000
    assert (WEIGHTS.parent / "shapes_probe.json").is_file()


@pytest.mark.parametrize("grid", [3, 2])
def test_probe_reads_heldout_ground_truth(probe, grid):
    imgs, truths = heldout_scenes(200, seed=11, grid=grid)
    s = score(read_scenes(probe, imgs, grid), truths)
    assert s["accuracy"] >= 0.95, s
    assert s["count"] >= 0.97 and s["shape"] >= 0.97 and s["colour"] >= 0.98, s


def test_probe_is_robust_to_mild_corruption(probe):
    imgs, truths = heldout_scenes(150, seed=12)
    noisy = corrupt(to_side(imgs), torch.Generator().manual_seed(0), strength=0.8)
    assert (noisy - imgs).abs().mean() > 0.005  # it really is corrupted
    assert score(read_scenes(probe, noisy, 3), truths)["accuracy"] >= 0.9


def test_probe_reads_other_image_sizes(probe):
    for size in (48, 128):
        imgs, truths = heldout_scenes(60, seed=13, image_size=size)
        assert imgs.shape[-1] == size
        assert score(read_scenes(probe, imgs, 3), truths)["accuracy"] >= 0.9, size


def test_blank_image_reads_as_empty(probe):
    (scene,) = read_scenes(probe, torch.full((1, 3, 64, 64), 0.05), 3)
    assert scene["count"] == 0 and scene["objects"] == []


def test_cells_cut_in_reading_order():
    x = torch.zeros(1, 3, 64, 64)
    x[:, 0, 32:, 32:] = 1.0  # bottom-right quadrant red
    p = cells(x, 2)
    assert p.shape == (4, 3, 24, 24)
    assert p[3, 0].mean() > 0.9 and p[:3, 0].max() < 0.1


def _obj(shape, color, cell, grid=3, size="small"):
    from illume_kit.data.shapes import GRID_POSITIONS

    return {
        "shape": shape,
        "color": color,
        "size": size,
        "cell": cell,
        "position": GRID_POSITIONS[grid][cell[0]][cell[1]],
    }


def test_compare_and_score_are_exact():
    truth = {"grid": 3, "objects": [_obj("circle", "red", (0, 0)), _obj("star", "blue", (1, 1))], "count": 2}
    same = {"grid": 3, "objects": [dict(o) for o in truth["objects"]], "count": 2}
    recolored = {"grid": 3, "objects": [_obj("circle", "green", (0, 0)), _obj("star", "blue", (1, 1))], "count": 2}
    moved = {"grid": 3, "objects": [_obj("circle", "red", (0, 1)), _obj("star", "blue", (1, 1))], "count": 2}
    extra = {"grid": 3, "objects": same["objects"] + [_obj("square", "red", (2, 2))], "count": 3}
    assert compare(same, truth)["exact"] == 1
    assert compare(recolored, truth)["exact"] == 0 and compare(recolored, truth)["shape"] == 2
    assert compare(moved, truth) == {
        "exact": 0,
        "count": 1,
        "objects": 2,
        "position": 1,
        "shape": 1,
        "colour": 1,
        "size": 1,
    }
    assert compare(extra, truth)["exact"] == 0 and compare(extra, truth)["count"] == 0
    s = score([same, recolored, moved, extra], [truth] * 4)
    assert s["accuracy"] == 0.25 and s["count"] == 0.75
    assert s["colour"] == 6 / 8 and s["position"] == 7 / 8
    assert s["attributes"] == pytest.approx((s["shape"] + 6 / 8 + 7 / 8 + 0.75) / 4)
    with pytest.raises(ValueError, match="readings"):
        score([same], [truth, truth])


def test_load_probe_errors_and_round_trip(tmp_path):
    with pytest.raises(FileNotFoundError, match="scripts/train_probe.py"):
        load_probe(tmp_path / "nope.safetensors")
    p = ShapesProbe()
    path = train_script.save_probe(p, tmp_path)
    q = load_probe(path)
    x = torch.rand(5, 3, 24, 24)
    p.eval()
    assert torch.allclose(p(x)["shape"], q(x)["shape"], atol=2e-2)  # fp16 storage
    with pytest.raises(ValueError, match="grids"):
        read_scenes(q, torch.rand(1, 3, 64, 64), 4)


def test_training_from_scratch_lowers_the_loss():
    _, report = train_script.train_probe(steps=40, batch_images=16, n_scenes=200, heldout=0, quiet=True)
    assert report["steps"] == 40
    assert report["final_loss"] < 0.6 * report["first_loss"], report


def test_the_script_writes_weights_that_eval_loads(tmp_path, capsys):
    assert train_script.main(["--steps", "3", "--scenes", "20", "--heldout", "0", "--out", str(tmp_path)]) == 0
    assert f"wrote {tmp_path / WEIGHTS.name}" in capsys.readouterr().out
    probe = load_probe(tmp_path)
    assert isinstance(probe, ShapesProbe) and not probe.training
    assert (tmp_path / "shapes_probe.json").is_file()


def test_eval_module_reads_and_scores_only():
    for name in ("train_probe", "render_set", "save_probe", "main"):
        assert not hasattr(probe_module, name), name
