"""bench/unified_diagnostics.py: its linear probe separates what is there and not what is not."""

import importlib.util
from pathlib import Path

import torch

SPEC = importlib.util.spec_from_file_location(
    "unified_diagnostics", Path(__file__).resolve().parents[2] / "bench" / "unified_diagnostics.py"
)
diag = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(diag)


def test_linear_probe_reads_a_linear_feature_and_not_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 32, generator=g)
    y = (x[:, 3] > 0).float()
    assert diag.linear_probe(x, y) > 0.8
    noise = (torch.rand(200, generator=g) > 0.5).float()
    assert diag.linear_probe(x, noise) < 0.7


def test_cells_key_objects_by_cell():
    scene = {"objects": [{"cell": [0, 1], "shape": "star", "color": "red", "size": "small"}]}
    assert diag._cells(scene) == {(0, 1): ("star", "red", "small")}
