"""The example plugin runs illume-kit's conformance suite on its tiny preset, as any plugin should."""

import torch

from illume_kit.testing import conformance
from illume_kit_fsq.model import FSQTokenizer
from illume_kit_fsq.params import PRESETS


def make():
    torch.manual_seed(0)
    return FSQTokenizer(FSQTokenizer.Params(**PRESETS["tiny"]))


@conformance.parametrize("tokenizer")
def test_conformance(check):
    check(make)


def test_registered_through_entry_point():
    from illume_kit.core.plugins import PluginManager

    reg = PluginManager().build_registry()
    spec = reg.get("tokenizer", "fsq-conv")
    assert spec.dist == "illume-kit-fsq-tokenizer" and spec.dist_version == "0.1.0"


def test_non_square_sizes_round_trip():
    tok = make().eval()
    x = torch.rand(2, 3, 32, 48)
    out = tok.encode(x)
    assert out.codes["pixel"].shape == (2, 2, 3)
    assert tok.decode(out.codes).shape == (2, 3, 32, 48)
    assert torch.allclose(tok.codes_to_maps(out.codes)["pixel"], out.quantized["pixel"])


def test_registry_record_declares_what_the_tokenizer_provides():
    from illume_kit.core.plugins import PluginManager

    spec = PluginManager().build_registry().get("tokenizer", "fsq-conv")
    conformance.check_declared(spec.provides, make())
