"""What a checkpoint records about its training texts and sizes, read without torch."""

import json

import pytest

from illume_kit.core.coverage import (
    read_trained_sizes,
    read_vocabulary,
    unseen,
    vocabulary_json,
    vocabulary_of,
    words,
)
from illume_kit.core.manifest import CheckpointError


def test_words_are_lower_cased_and_split_at_punctuation():
    assert words("What colour is the Top-Left shape_2?") == ["what", "colour", "is", "the", "top", "left", "shape", "2"]
    assert vocabulary_of(["a red star", "A star!"]) == ["a", "red", "star"]


def test_unseen_names_each_new_word_once_in_order():
    assert unseen("a purple hexagon and a purple octagon, hexagon", {"a", "and", "purple"}) == ["hexagon", "octagon"]


def test_vocabulary_round_trips_and_garbage_is_refused_naming_the_file(tmp_path):
    assert read_vocabulary(tmp_path) is None
    (tmp_path / "vocabulary.json").write_text(vocabulary_json({"b", "a"}))
    assert read_vocabulary(tmp_path) == {"a", "b"}
    assert json.loads((tmp_path / "vocabulary.json").read_text()) == {"words": ["a", "b"]}
    for bad in ("[1, 2", '{"words": [1]}', '["a"]', "[" * 100_000):
        (tmp_path / "vocabulary.json").write_text(bad)
        with pytest.raises(CheckpointError, match="vocabulary.json"):
            read_vocabulary(tmp_path)


def test_trained_sizes_are_pairs_of_positive_ints():
    assert read_trained_sizes({}) is None
    assert read_trained_sizes({"trained_sizes": [[64, 64], [32, 48]]}) == [(64, 64), (32, 48)]
    for bad in ({"a": 1}, [[64]], [[0, 64]], [["64", 64]], "64x64"):
        with pytest.raises(CheckpointError, match="trained_sizes"):
            read_trained_sizes({"trained_sizes": bad})
