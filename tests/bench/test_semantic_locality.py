"""bench/semantic_locality.py: its probe reads a class that is there, and its cells are the world's."""

import importlib.util
from pathlib import Path

import pytest
import torch

SPEC = importlib.util.spec_from_file_location(
    "semantic_locality", Path(__file__).resolve().parents[2] / "bench" / "semantic_locality.py"
)
loc = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(loc)


def test_probe_reads_a_class_carried_by_the_features_and_not_noise():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (400,), generator=g)
    x = torch.randn(400, 16, generator=g)
    x[:, :4] += 3 * torch.nn.functional.one_hot(y, 4)
    with torch.no_grad():  # the bench calls it under no_grad
        assert loc.probe_accuracy(x, y) > 0.9
    assert loc.probe_accuracy(torch.randn(400, 16, generator=g), y) < 0.45


def test_cell_blocks_split_a_grid_into_cells_in_reading_order():
    maps = torch.arange(2 * 3 * 4 * 4, dtype=torch.float).reshape(2, 3, 4, 4)
    cells = loc.cell_blocks(maps, 2)
    assert cells.shape == (2, 4, 3 * 2 * 2)
    assert torch.equal(cells[1, 3].reshape(3, 2, 2), maps[1, :, 2:, 2:])  # bottom right
    assert torch.equal(cells[0, 1].reshape(3, 2, 2), maps[0, :, :2, 2:])  # top right
    with pytest.raises(ValueError, match="3x3 cells"):
        loc.cell_blocks(maps, 3)


def test_cell_labels_name_shape_colour_size_or_nothing():
    scene = {"grid": 2, "objects": [{"cell": [1, 0], "shape": "star", "color": "blue", "size": "large"}]}
    labels = loc.cell_labels(scene)
    shapes, colours, sizes = (v for _, v in loc.ATTRIBUTES)
    assert labels[2].tolist() == [shapes.index("star"), colours.index("blue"), sizes.index("large")]
    assert [shapes[i] for i in labels[[0, 1, 3], 0]] == ["nothing"] * 3
    assert (labels[[0, 1, 3], 1:] == -1).all()


def test_code_entropy_is_zero_for_codes_the_cell_decides_and_counts_the_rest():
    labels = torch.tensor([[0, 1, 0], [2, 3, 1]]).repeat(50, 1)  # two kinds of cell, 100 cells
    decided = torch.stack([labels[:, 0] * 10 + j for j in range(4)], 1)  # 4 patches, code = f(cell, place)
    assert loc.code_entropy(decided, labels) == 0.0
    coin = decided.clone()
    coin[::4, 0] += 1  # patch 0 of every other kind-0 cell: one of two codes, half the time each
    assert loc.code_entropy(coin, labels) == pytest.approx(1 / 4 / 2)  # 1 bit on 1 of 8 (kind, place) groups
