"""The semantic-only baseline: conformance, learning, and the compose-time refusal of `vq`."""

import pytest
import torch

from illume_kit.core.recipe import load_recipe
from illume_kit.model.compose import ComposeError
from illume_kit.plugins.tokenizers.siglip.model import SigLIPTokenizer
from illume_kit.plugins.tokenizers.siglip.params import PRESETS, SigLIPTokenizerParams
from illume_kit.testing import conformance


def make():
    torch.manual_seed(0)
    return SigLIPTokenizer(SigLIPTokenizerParams(**PRESETS["tiny"]))


@conformance.parametrize("tokenizer")
def test_conformance(check):
    check(make)


def test_grid_and_no_pixel_decoder():
    tok = make()
    assert tok.grid(64, 64) == {"semantic": (8, 8)}
    with pytest.raises(ValueError, match="multiples of 8"):
        tok.grid(60, 64)
    with pytest.raises(NotImplementedError, match="diffusion"):
        tok.decode({"semantic": torch.zeros(1, 8, 8, dtype=torch.long)})


def test_feature_reconstruction_learns():
    tok = make().train()
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW([p for p in tok.parameters() if p.requires_grad], lr=2e-3)
    first = None
    for _ in range(30):
        out = tok.loss(x)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first if first is not None else float(out["semantic_rec"])
    assert float(tok.semantic_cosine(x).mean()) > 1 - first + 0.1


def test_validate_and_compose_refuse_vq_detokenizer(tmp_path):
    from illume_kit.core.recipe import RecipeError
    from illume_kit.model.compose import check_contracts
    from illume_kit.plugins.decoders.vq import VQDetokenizer

    p = tmp_path / "r.yaml"
    p.write_text(
        "illume_kit: 1\nname: s\ntokenizer: {name: siglip, preset: tiny}\nbackbone: {name: qwen2, preset: tiny}\n"
        "detokenizer: {name: vq}\n"
    )
    with pytest.raises(RecipeError, match="'vq' requires pixel_decoder.*work with it: diffusion"):
        load_recipe(p)
    with pytest.raises(ComposeError, match="semantic-only.*'diffusion'"):
        check_contracts(make(), VQDetokenizer(), {"tokenizer": "siglip", "detokenizer": "vq"})


def test_registry_record_declares_what_the_tokenizer_provides():
    from illume_kit.core.plugins import get_registry

    conformance.check_declared(get_registry().get("tokenizer", "siglip").provides, make())
