"""Byte-level BPE text tokenizers: deterministic default, exact size, round trips, local-only loading."""

import time

import pytest

from illume_kit.plugins.backbones.text_tokenizer import (
    BOS,
    EOS,
    PAD,
    default_text_tokenizer,
    load_text_tokenizer,
    train_text_tokenizer,
)


def test_default_tokenizer_is_deterministic_fast_and_exactly_sized():
    t0 = time.perf_counter()
    a = default_text_tokenizer(600)
    assert time.perf_counter() - t0 < 1.0
    b = default_text_tokenizer(600)
    assert len(a) == len(b) == 600
    assert a.get_vocab() == b.get_vocab()
    assert a is not b  # callers mutate it (extend_vocab), so every call is a fresh object
    assert (a.pad_token_id, a.bos_token_id, a.eos_token_id) == (0, 1, 2)
    assert a.convert_ids_to_tokens([0, 1, 2]) == [PAD, BOS, EOS]


def test_default_tokenizer_pads_with_unreachable_reserved_tokens():
    tok = default_text_tokenizer(4000)  # more than the built-in corpus has merges for
    assert len(tok) == 4000
    assert "<|reserved_0|>" in tok.get_vocab()
    text = "A red circle is left of the blue square, 42 of them!"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    reserved = {i for t, i in tok.get_vocab().items() if t.startswith("<|reserved_")}
    assert not reserved & set(ids)


def test_trained_tokenizer_compresses_its_corpus_and_round_trips():
    corpus = ["the zorblax glimmers near the quantum frobnicator"] * 50
    tok = train_text_tokenizer(corpus, 400)
    assert len(tok) == 400
    ids = tok(corpus[0])["input_ids"]
    assert len(ids) < len(corpus[0]) / 3  # merges learned from the corpus
    assert tok.decode(ids) == corpus[0]
    assert tok.decode(tok("unicode ✓ é")["input_ids"]) == "unicode ✓ é"  # byte-level: nothing is unknown


def test_errors():
    with pytest.raises(ValueError, match="too small"):
        train_text_tokenizer(["abc"], 100)
    with pytest.raises(ValueError, match="non-empty"):
        train_text_tokenizer(["", ""], 400)


def test_save_and_load_round_trip(tmp_path):
    tok = train_text_tokenizer(["hello shapes world"] * 10, 320)
    tok.add_tokens(["<start_of_image>"])
    tok.save_pretrained(tmp_path)
    back = load_text_tokenizer(tmp_path)
    assert back.get_vocab() == tok.get_vocab()
    assert back("hello <start_of_image>")["input_ids"] == tok("hello <start_of_image>")["input_ids"]
    assert back.eos_token == EOS


def test_missing_tokenizer_folder_names_path_and_local_only(tmp_path):
    with pytest.raises(FileNotFoundError, match="local_files_only") as e:
        load_text_tokenizer(tmp_path / "nope")
    assert "nope" in str(e.value)
