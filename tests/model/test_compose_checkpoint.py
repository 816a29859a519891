"""Compose end to end with real components, checkpoint round trip, contract and checkpoint errors."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from illume_kit.core.manifest import CheckpointError
from illume_kit.core.recipe import load_recipe
from illume_kit.model.checkpoint import load_checkpoint, save_checkpoint
from illume_kit.model.compose import ComposeError, compose

ROOT = Path(__file__).resolve().parents[2]
FSQ_RECIPE = ROOT / "recipes/examples/fsq_qwen2_tiny.yaml"

pytest.importorskip(
    "illume_kit_fsq", reason="example plugin not installed (pip install -e examples/illume-kit-fsq-tokenizer)"
)


@pytest.fixture(scope="module")
def composed(tmp_path_factory):
    resolved = load_recipe(FSQ_RECIPE)
    model = compose(resolved).eval()
    out = save_checkpoint(model, resolved, tmp_path_factory.mktemp("ck") / "ckpt")
    return resolved, model, out


def _outputs(model):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        enc = model.tokenizer.encode(x)
        feats = model.projectors["pixel"](enc.features["pixel"])
        ids = torch.tensor([[1, 2, model.layout.soi, model.layout.codebook("pixel").start + 5]])
        logits = model.backbone(inputs_embeds=model.backbone.embed(ids)).logits
        img = model.detokenizer.decode(enc.codes)
    return enc.codes["pixel"], feats, logits, img


def test_compose_builds_layout_and_contracts(composed):
    _, model, _ = composed
    lay = model.layout
    assert lay.codebook("pixel").size == 1000
    assert model.backbone.vocab_size >= lay.total_size
    assert model.image_tokens(64, 64) == 2 + 2 + 2 + 4 * 5


def test_checkpoint_round_trip_identical_outputs(composed):
    _, model, folder = composed
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {
        "illume_kit.json",
        "recipe.yaml",
        "tokenizer/model.safetensors",
        "backbone/model.safetensors",
        "projectors/model.safetensors",
    } <= files
    manifest = json.loads((folder / "illume_kit.json").read_text())
    assert manifest["components"]["tokenizer"]["dist"] == "illume-kit-fsq-tokenizer"
    assert manifest["vocab_layout"]["codebooks"][0]["name"] == "pixel"
    assert not list(folder.parent.glob(".*tmp*")), "temporary folder left behind"
    loaded, _ = load_checkpoint(folder)
    for a, b in zip(_outputs(model), _outputs(loaded)):
        assert torch.equal(a, b)


def test_missing_and_corrupt_weight_files(composed, tmp_path):
    _, _, folder = composed
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    (bad / "backbone/model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"backbone: weight file .*backbone/model.safetensors is missing"):
        load_checkpoint(bad)
    shutil.rmtree(bad)
    shutil.copytree(folder, bad)
    (bad / "tokenizer/model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="tokenizer: weight file .* is corrupt"):
        load_checkpoint(bad)


def test_newer_format_and_missing_plugin(composed, tmp_path):
    _, _, folder = composed
    bad = tmp_path / "newer"
    shutil.copytree(folder, bad)
    m = json.loads((bad / "illume_kit.json").read_text())
    (bad / "illume_kit.json").write_text(json.dumps({**m, "format": 99}))
    with pytest.raises(CheckpointError, match="checkpoint format 99, newer than this illume-kit"):
        load_checkpoint(bad)
    m["components"]["tokenizer"].update(name="not-installed", dist="illume-kit-nothere", dist_version="2.0")
    (bad / "illume_kit.json").write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match=r"pip install 'illume-kit-nothere>=2.0'"):
        load_checkpoint(bad)
    m["components"]["tokenizer"].update(name="fsq-conv", dist="illume-kit-fsq-tokenizer", dist_version="9.0")
    (bad / "illume_kit.json").write_text(json.dumps(m))
    with pytest.raises(
        CheckpointError, match="written by illume-kit-fsq-tokenizer 9.0 but illume-kit-fsq-tokenizer 0.1.0"
    ):
        load_checkpoint(bad)


def test_atomic_write_leaves_old_checkpoint_intact(composed, tmp_path, monkeypatch):
    resolved, model, folder = composed
    target = tmp_path / "ck"
    shutil.copytree(folder, target)
    before = (target / "illume_kit.json").read_text()
    import illume_kit.model.checkpoint as ck

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_module", boom)
    with pytest.raises(OSError):
        save_checkpoint(model, resolved, target)
    assert (target / "illume_kit.json").read_text() == before
    assert not list(tmp_path.glob(".ck.tmp*"))


def test_incompatible_detokenizer_is_refused():
    class SemanticOnly(torch.nn.Module):
        has_pixel_decoder = False
        codebooks = ()

    from illume_kit.model.compose import check_contracts
    from illume_kit.plugins.decoders.vq import VQDetokenizer

    det = VQDetokenizer(VQDetokenizer.Params())
    with pytest.raises(ComposeError, match="diffusion"):
        check_contracts(SemanticOnly(), det, {"tokenizer": "siglip", "detokenizer": "vq"})


def test_consumed_codebook_must_exist():
    from illume_kit.core.protocols import CodebookSpec
    from illume_kit.model.compose import check_contracts

    class Tok:
        codebooks = (CodebookSpec("pixel", 10, 4, 16, 4),)

    class Det:
        consumes = ("semantic", "pixel")

    with pytest.raises(ComposeError, match="consumes codebook 'semantic', which tokenizer 'tok' does not have"):
        check_contracts(Tok(), Det(), {"tokenizer": "tok"})


def test_retrained_text_tokenizer_survives_checkpoint(tmp_path):
    resolved = load_recipe(FSQ_RECIPE)
    model = compose(resolved).eval()
    model.backbone.retrain_text_tokenizer(["a red circle at the top left", "a blue square"] * 20)
    ids = model.backbone.text_tokenizer("a red circle")["input_ids"]
    out = save_checkpoint(model, resolved, tmp_path / "ck")
    loaded, _ = load_checkpoint(out)
    assert loaded.backbone.text_tokenizer("a red circle")["input_ids"] == ids
    assert loaded.backbone.text_tokenizer.convert_tokens_to_ids("<start_of_image>") == model.layout.soi


def test_image_position_tables_round_trip(tmp_path):
    resolved = load_recipe(FSQ_RECIPE, ["model.image_positions=8"])
    model = compose(resolved).eval()
    with torch.no_grad():
        model.projectors["pixel"].row_embed.normal_()
    folder = save_checkpoint(model, resolved, tmp_path / "ckpt")
    loaded, _ = load_checkpoint(folder)
    assert loaded.image_positions == 8
    for name in ("row_embed", "col_embed"):
        assert torch.equal(getattr(loaded.projectors["pixel"], name), getattr(model.projectors["pixel"], name))


def test_level_order_round_trips_through_a_checkpoint(tmp_path):
    resolved = load_recipe(ROOT / "recipes/dualvitok_qwen2_tiny.yaml", ["model.level_order=fine_first"])
    model = compose(resolved).eval()
    assert [cb.name for cb in model.layout.codebooks] == ["pixel", "semantic"]
    out = save_checkpoint(model, resolved, tmp_path / "ckpt")
    loaded, _ = load_checkpoint(out)
    assert loaded.layout == model.layout
    manifest = json.loads((out / "illume_kit.json").read_text())
    assert [c["name"] for c in manifest["vocab_layout"]["codebooks"]] == ["pixel", "semantic"]
