import pytest

from illume_kit.core.layout import VocabLayout


def test_official_layout_matches_reference_ids():
    # ILLUME+ with Qwen2.5: text 151665, 7 structure tokens, 32 tags, 32768 + 98304 codes
    lay = VocabLayout.build(151665, [("semantic", 32768), ("pixel", 98304)], 64, 1024)
    assert lay.soi == 151665 and lay.eoi == 151666 and lay.eol == 151667
    assert lay.level_start(0) == 151668 and lay.level_end(1) == 151671
    assert lay.resolution_ids(64, 64) == (151672, 151672 + 16)
    assert lay.codebook("semantic").start == 151704
    assert lay.codebook("pixel").start == 184472 and lay.total_size == 282776
    assert lay.num_added == 131111


def test_image_length_and_round_trip():
    lay = VocabLayout.build(100, [("semantic", 10), ("pixel", 20)], 16, 64)
    # tags(2) + soi/eoi(2) + level0: 2 + 3*(3+1) + level1: 2 + 4*(4+1)
    assert lay.image_length({"semantic": (3, 3), "pixel": (4, 4)}) == 2 + 2 + 14 + 22
    assert VocabLayout.from_dict(lay.to_dict()) == lay


def test_errors():
    lay = VocabLayout.build(100, [("pixel", 20)], 16, 64)
    with pytest.raises(ValueError, match="no resolution tag for height 72: valid sizes are multiples of 16 up to 64"):
        lay.resolution_ids(72, 64)
    with pytest.raises(KeyError, match="no codebook 'semantic'"):
        lay.codebook("semantic")
    with pytest.raises(ValueError, match="newer"):
        VocabLayout.from_dict({**lay.to_dict(), "format": 99})
