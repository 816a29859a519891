"""Converting the released ILLUME+ DualViTok checkpoint: a strict renaming onto the official preset.

The checkpoint is synthesised from the reference TSV (every official key and shape) with zero-cost
tensors (a 0-dim zero expanded to the shape: no memory, real CPU tensors).
"""

from __future__ import annotations

import datetime
import pickle
from pathlib import Path

import pytest
import torch

from illume_kit.plugins.tokenizers.dualvitok.convert import (
    VIT_PREFIX,
    ConversionError,
    convert_official,
    instantiate_official,
    load_official_file,
    unwrap,
)

# a copy of shared/reference/dualvitok_official_state_dict.tsv (every key and shape of the release)
TSV = Path(__file__).with_name("dualvitok_official_state_dict.tsv")
pytestmark = pytest.mark.skipif(not TSV.exists(), reason="official state-dict table not available")


def official_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in TSV.read_text().splitlines():
        if line.startswith("#") or line.startswith("key\t") or not line.strip():
            continue
        key, shape = line.split("\t")[:2]
        shapes[key] = tuple(int(s) for s in shape.split("x"))
    return shapes


def synthetic_checkpoint(with_vit: bool = True) -> dict[str, torch.Tensor]:
    zero = torch.zeros(())
    return {k: zero.expand(s) for k, s in official_shapes().items() if with_vit or not k.startswith(VIT_PREFIX)}


@pytest.fixture(scope="module")
def converted():
    return convert_official(synthetic_checkpoint())


def test_table_is_complete():
    assert len(official_shapes()) == 999


def test_every_official_tensor_lands_on_the_official_preset(converted):
    from illume_kit.plugins.tokenizers.dualvitok.model import DualViTok

    with torch.device("meta"):
        model = DualViTok(DualViTok.Params())
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("discriminator.")}
    assert {k: tuple(v.shape) for k, v in converted.items()} == ours
    assert "pixel_quantizer.vq.frozen_codebook" in converted and "pixel_quantizer.frozen_codebook" not in converted


@pytest.mark.parametrize("nest", ["model", "ema", "state_dict"])
def test_nesting_and_ddp_prefix(nest):
    sd = synthetic_checkpoint(with_vit=False)
    wrapped = {nest: {"module." + k: v for k, v in sd.items()}, "optimizer": {}, "steps": 3}
    assert set(convert_official(wrapped)) == set(convert_official(sd))


def test_without_vit_keys_is_accepted():
    sd = convert_official(synthetic_checkpoint(with_vit=False))
    assert not any(k.startswith(VIT_PREFIX) for k in sd) and len(sd) == 999 - 391


def test_errors_list_every_problem():
    sd = synthetic_checkpoint()
    del sd["semantic_encoder.model.blocks.3.attn.qkv.weight"]  # a partial ViT is an error
    del sd["pixel_decoder.conv_out.bias"]
    sd["pixel_decoder.extra.weight"] = torch.zeros(2)
    sd["pixel_quant_conv.weight"] = torch.zeros(())
    with pytest.raises(ConversionError) as err:
        convert_official(sd)
    msg = str(err.value)
    assert "2 missing keys" in msg and "semantic_encoder.model.blocks.3.attn.qkv.weight" in msg
    assert "pixel_decoder.conv_out.bias" in msg
    assert "1 unused keys: pixel_decoder.extra.weight" in msg
    assert "pixel_quant_conv.weight: checkpoint () vs model (32, 32, 1, 1)" in msg
    with pytest.raises(ConversionError, match="state dict of tensors"):
        unwrap({"model": {"a": 1}})


def test_load_official_file_uses_safe_loading(tmp_path):
    sd = synthetic_checkpoint(with_vit=False)
    marker = torch.arange(32 * 32, dtype=torch.float32).reshape(32, 32)
    sd["pixel_quantizer.code_transform.weight"] = marker
    path = tmp_path / "pytorch_model.bin"
    torch.save({"model": sd}, path)  # expanded zeros are saved as 1-element storages
    assert path.stat().st_size < 50_000_000
    out = load_official_file(str(path))
    assert torch.equal(out["pixel_quantizer.vq.code_transform.weight"], marker)
    evil = tmp_path / "evil.bin"
    torch.save({"model": sd, "x": datetime.datetime(2025, 1, 1)}, evil)  # not on the weights_only allow-list
    with pytest.raises(ConversionError, match=r"holds Python code or objects \(datetime.datetime\)") as err:
        load_official_file(str(evil))
    assert "weights_only" not in str(err.value) and err.value.__cause__ is None
    assert "safetensors" in str(err.value) and "will not run code" in str(err.value)


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_pickle_with_code_is_refused_and_never_run(tmp_path, protocol):
    marker = tmp_path / "ran"
    bare = tmp_path / "bare.bin"
    bare.write_bytes(pickle.dumps({"w": RunsCode(marker)}, protocol=protocol))
    zipped = tmp_path / "zipped.bin"
    torch.save({"w": RunsCode(marker)}, zipped)
    for path in (bare, zipped):
        with pytest.raises(ConversionError, match=r"holds Python code or objects \((posix|nt).system\)") as err:
            load_official_file(str(path))
        assert "weights_only" not in str(err.value) and err.value.__cause__ is None
    assert not marker.exists()


def test_files_that_are_not_checkpoints(tmp_path):
    import zipfile

    cases = {
        "empty.bin": (b"", "is empty"),
        "noise.bin": (bytes(range(256)) * 4, "neither a torch checkpoint nor a .safetensors file"),
        "text.bin": (b"hello\n", "neither a torch checkpoint nor a .safetensors file"),
        "noise.safetensors": (b"\x05" * 64, "not a readable .safetensors file"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ConversionError, match=message):
            load_official_file(str(tmp_path / name))
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("notes.txt", "hi")
    with pytest.raises(ConversionError, match="a zip archive but not a torch checkpoint"):
        load_official_file(str(tmp_path / "other.zip"))
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "other_net.bin")
    with pytest.raises(ConversionError, match=r"(?s)other_net.bin: .*1 unused keys: foo.weight.*missing keys: pixel_"):
        load_official_file(str(tmp_path / "other_net.bin"))


def test_instantiate_official_assigns_without_init(converted):
    sd = dict(converted)
    sd["pixel_quantizer.vq.code_transform.weight"] = torch.eye(32)
    model = instantiate_official(sd)
    weight = model.pixel_quantizer.vq.code_transform.weight
    assert weight.data_ptr() == sd["pixel_quantizer.vq.code_transform.weight"].data_ptr()  # assigned, not copied
    assert model.discriminator is not None and not any(p.is_meta for p in model.parameters())
    assert not any(b.is_meta for b in model.buffers())
    assert model.semantic_encoder.rotary_pos_emb.inv_freq.shape == (20,)
    assert not any(p.requires_grad for p in model.semantic_encoder.model.parameters())
    with pytest.raises(ConversionError, match="teacher.pretrained"):
        instantiate_official(convert_official(synthetic_checkpoint(with_vit=False)))


@pytest.mark.slow
@pytest.mark.parametrize("size,grids", [(32, ((1, 1), (2, 2))), (256, ((9, 9), (16, 16)))])
def test_converted_official_model_runs(converted, size, grids):
    """Official preset with the converted (zero) weights: codes per the resize table, decode to size."""
    model = instantiate_official(dict(converted)).eval()
    with torch.no_grad():
        out = model.encode(torch.rand(1, 3, size, size))
        assert out.codes["semantic"].shape[1:] == grids[0] and out.codes["pixel"].shape[1:] == grids[1]
        assert out.features["semantic"].shape[-1] == 3584 and out.features["pixel"].shape[-1] == 32
        image = model.decode(out.codes)
    assert image.shape == (1, 3, size, size) and torch.isfinite(image).all()
