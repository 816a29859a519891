import numpy as np
import pytest
import torch
from PIL import Image

from illume_kit.eval.grid import make_grid, save_grid


def test_grid_places_pairs_side_by_side(tmp_path):
    orig = torch.zeros(5, 3, 8, 8)
    orig[:, 0] = 1.0  # red originals
    recon = torch.zeros(5, 3, 8, 8)
    recon[:, 2] = 1.0  # blue reconstructions
    path = tmp_path / "sub" / "grid.png"
    img = save_grid(orig, recon, path, pairs_per_row=2, pad=2)
    assert path.is_file()
    loaded = np.asarray(Image.open(path).convert("RGB"))
    cell_w, cell_h = 2 * 8 + 3 * 2, 8 + 2 * 2
    assert loaded.shape == (3 * cell_h, 2 * cell_w + 2, 3) == np.asarray(img).shape
    assert tuple(loaded[2 + 4, 2 + 4]) == (255, 0, 0)  # first pair, original
    assert tuple(loaded[2 + 4, 2 + 8 + 2 + 4]) == (0, 0, 255)  # first pair, reconstruction
    assert tuple(loaded[2 * cell_h + 6, cell_w + 6]) == (255, 255, 255)  # 6th cell is empty


def test_labels_add_a_strip_and_sizes_can_differ():
    orig = torch.rand(2, 3, 8, 8)
    recon = torch.rand(2, 1, 16, 16)  # grey, 2x super-resolved
    plain = make_grid(orig, recon)
    labelled = make_grid(orig, recon, labels=["23.1 dB", "19.0 dB"])
    assert plain.size[0] == labelled.size[0] == 2 * (2 * 16 + 6) + 2
    assert labelled.size[1] > plain.size[1]
    strip = np.asarray(labelled)[16 + 4 :, :]
    assert (strip < 128).any()  # some text was drawn
    with pytest.raises(ValueError, match="labels"):
        make_grid(orig, recon, labels=["one"])
    with pytest.raises(ValueError, match="originals"):
        make_grid(orig, recon[:1])
