"""illume_kit.data.aspect against the released ILLUME+ code's own outputs.

The fixture (``tests/fixtures/official/aspect``) was written by ``scripts/official_fixtures/aspect.py``
running the reference code; the reference code is not needed here. Both sides resample with
Pillow's Lanczos (anchors) and bicubic (understanding) filters, so pixels are compared exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from illume_kit.data import aspect

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "official" / "aspect"
RECORD = json.loads((FIXTURE / "aspect.json").read_text())


def test_fixture_names_the_official_commit():
    assert RECORD["official_commit"].startswith("51de69d")


def test_base_512_table_is_the_released_one():
    assert [list(a) for a in aspect.anchors(512)] == RECORD["ratios_512"]
    # the reference derives its table from eleven ratios at 512x512 area: the same set
    assert sorted(map(list, aspect.anchors(512))) == RECORD["calculate_ratio_512"]


@pytest.mark.parametrize("case", RECORD["anchor_cases"], ids=lambda c: f"b{c['base']}-{c['size'][0]}x{c['size'][1]}")
def test_anchor_and_sizes_match_official(case):
    h, w = case["size"]
    anchor = aspect.nearest_anchor(h, w, case["base"])
    assert list(anchor) == case["anchor"]
    for fit in ("pad", "crop"):
        assert list(aspect.fit_size(h, w, anchor, fit)) == case[fit]["resized"], fit
        assert case[fit]["output"] == case["anchor"]


@pytest.mark.parametrize(
    "case", RECORD["native_cases"], ids=lambda c: f"{c['max_pixels']}-{c['size'][0]}x{c['size'][1]}"
)
def test_native_size_matches_official(case):
    h, w = case["size"]
    got = aspect.native_size(h, w, case["min_pixels"], case["max_pixels"], case["factor"])
    assert list(got) == case["native"]


@pytest.fixture(scope="module")
def pixels():
    from safetensors.torch import load_file

    return load_file(str(FIXTURE / "pixels.safetensors"))


def _pil(t):
    from PIL import Image

    return Image.fromarray(t.numpy())


def _arr(img):
    import numpy as np

    return np.asarray(img)


@pytest.mark.parametrize("fit", ["pad", "crop"])
def test_snap_pixels_match_official(pixels, fit):
    import numpy as np

    for case in RECORD["pixels"]["snap"]:
        src = _pil(pixels[f"input_{case['index']}"])
        anchor = aspect.nearest_anchor(src.height, src.width, case["base"])
        assert list(anchor) == case["anchor"]
        got = _arr(aspect.snap(src, anchor, fit))
        want = pixels[f"{fit}_{case['index']}_{case['base']}"].numpy()
        assert got.shape == want.shape == (anchor[0], anchor[1], 3)
        np.testing.assert_array_equal(got, want)


# the recorded pixels are Pillow 13's bicubic resampling (the official processor resizes through
# Pillow; Pillow 12 resamples up to 16 levels otherwise); fixtures made from now on record it
FIXTURE_PILLOW = RECORD.get("pillow", "13")


def test_native_resize_pixels_match_official(pixels):
    """The official processor's pixels with the Pillow that recorded them; with another Pillow, its
    own bicubic resampling at the official size (what the processor asks Pillow for)."""
    import numpy as np
    import PIL
    from PIL import Image

    same_pillow = PIL.__version__.split(".")[0] == FIXTURE_PILLOW.split(".")[0]
    bounds = RECORD["pixels"]["native"]
    for i in range(len(RECORD["pixels"]["sizes"])):
        src = _pil(pixels[f"input_{i}"])
        got = _arr(aspect.native_resize(src, bounds["min_pixels"], bounds["max_pixels"], bounds["factor"]))
        want = pixels[f"native_{i}"].numpy()
        assert got.shape == want.shape
        if not same_pillow:
            want = _arr(src.resize((want.shape[1], want.shape[0]), Image.Resampling.BICUBIC))
        np.testing.assert_array_equal(got, want)


def test_pad_fills_white_and_crop_does_not():
    from PIL import Image

    black = Image.new("RGB", (90, 20))
    padded = aspect.snap(black, (32, 128), "pad")
    assert padded.size == (128, 32)
    assert padded.getpixel((0, 0)) == (255, 255, 255)
    assert padded.getpixel((64, 16)) == (0, 0, 0)
    assert aspect.snap(black, (32, 128), "crop").getpixel((0, 0)) == (0, 0, 0)


def test_an_image_thinner_than_a_pixel_still_snaps():
    from PIL import Image

    out = aspect.snap(Image.new("RGB", (5000, 10)), (256, 1024), "pad")
    assert out.size == (1024, 256)


@pytest.mark.parametrize("base", [0, 7, 100, -8, True, 64.0])
def test_bad_base_is_refused_naming_the_valid_ones(base):
    with pytest.raises(ValueError, match="multiple of 8"):
        aspect.anchors(base)


def test_other_bases_scale_the_table():
    assert aspect.anchors(256)[0] == (256, 256)
    assert aspect.anchors(1024)[-1] == (2048, 512)
    assert aspect.anchors(64) == tuple((h // 8, w // 8) for h, w in aspect.RATIOS_512)


def test_bad_native_bounds_are_refused():
    with pytest.raises(ValueError, match="min_pixels"):
        aspect.native_size(10, 10, min_pixels=100, max_pixels=50)
    with pytest.raises(ValueError, match="positive"):
        aspect.native_size(0, 10)
