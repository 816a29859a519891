"""The vq detokenizer: a thin, weightless adapter over the tokenizer's own pixel decoder."""

import pytest
import torch

from illume_kit.plugins.decoders.vq import VQDetokenizer
from illume_kit.testing import conformance
from illume_kit.testing.fakes import FakeTokenizer


@conformance.parametrize("detokenizer")
def test_conformance(check):
    check(lambda: (FakeTokenizer(), VQDetokenizer()))


def test_decodes_with_the_tokenizers_decoder_and_owns_no_weights():
    tok = FakeTokenizer()
    det = VQDetokenizer(VQDetokenizer.Params())
    det.attach(tok)
    codes = tok.encode(torch.rand(2, 3, 32, 32)).codes
    out = det.decode(codes, seed=3)  # sampling options are accepted and ignored
    assert out.shape == (2, 3, 32, 32)
    assert torch.equal(out, tok.decode(codes).clamp(0, 1))
    assert det.consumes == ("semantic", "pixel") and det.output_scale == 1
    assert len(det.state_dict()) == 0 and len(list(det.parameters())) == 0  # tokenizer not a submodule


def test_refuses_a_semantic_only_tokenizer_naming_diffusion():
    det = VQDetokenizer()
    with pytest.raises(ValueError, match="'diffusion' detokenizer"):
        det.attach(FakeTokenizer(semantic_only=True))


def test_unattached_and_bad_inputs_are_clear_errors():
    det = VQDetokenizer()
    with pytest.raises(RuntimeError, match="attach"):
        _ = det.consumes
    det.attach(FakeTokenizer())
    with pytest.raises(TypeError, match="temperature"):
        det.decode({}, temperature=1.0)
    with pytest.raises(KeyError, match="pixel"):
        det.decode({"semantic": torch.zeros(1, 2, 2, dtype=torch.long)})
