"""The released SDXL decoder folder, loaded by the diffusion detokenizer, decodes as ILLUME+'s own
``StableDiffusionXLDecoderPipeline`` does (tests/fixtures/official/sdxl_decoder, made by
scripts/official_fixtures/sdxl_decoder.py; the official code is not needed here)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from illume_kit.plugins.decoders.diffusion import DiffusionDetokenizer
from illume_kit.plugins.decoders.folder import DiffusersFolderError
from illume_kit.plugins.decoders.official import load_official_sdxl, official_sdxl_params
from illume_kit.plugins.decoders.params import ILLUME_OUTPUT_SIZES, DiffusionDetokenizerParams
from illume_kit.plugins.tokenizers.dualvitok.convert import convert_official, instantiate_official
from illume_kit.plugins.tokenizers.dualvitok.params import DualViTokParams

ROOT = Path(__file__).resolve().parents[3]
FIXTURE = ROOT / "tests/fixtures/official/sdxl_decoder"
FOLDER = FIXTURE / "decoder"
META = json.loads((FIXTURE / "fixture.json").read_text())
RUNS = {r["name"]: r for r in META["runs"]}


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "outputs.safetensors"))


@pytest.fixture(scope="module")
def tok():
    """The MLLM fixture's output DualViTok (the one the decoder fixture ran on), converted."""
    sys.path.insert(0, str(ROOT / "scripts/official_fixtures"))
    try:
        from official_env import illume_kit_params
    finally:
        sys.path.pop(0)
    vq = META["dualvitok"]
    path = ROOT / vq["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == vq["sha256"], (
        f"{path} changed since the SDXL decoder fixture was made: rerun scripts/official_fixtures/sdxl_decoder.py"
    )
    params = DualViTokParams(**illume_kit_params(vq["config"]))
    state = convert_official({k: v.float() for k, v in load_file(str(path)).items()}, params)
    return instantiate_official(state, params).eval()


@pytest.fixture(scope="module")
def det(tok):
    return load_official_sdxl(FOLDER, tok)


def codes_of(ref, name):
    return {"semantic": ref[f"{name}.semantic"], "pixel": ref[f"{name}.pixel"]}


def compare_image(img: torch.Tensor, ref, name: str) -> float:
    run, s, c = RUNS[name], META["image_stride"], META["image_crop"]
    cy, cx = run["crop_top_left"]
    assert list(img.shape[-2:]) == run["output"]
    return max(
        (img[..., ::s, ::s] - ref[f"{name}.image_strided"]).abs().max().item(),
        (img[..., cy : cy + c, cx : cx + c] - ref[f"{name}.image_crop"]).abs().max().item(),
        (img.double().mean(dim=(-2, -1)) - ref[f"{name}.image_mean"]).abs().max().item(),
    )


def test_the_whole_folder_is_read(det):
    p = det.params
    # the scheduler is the folder's: class and config (SDXL base's "leading" spacing, not our "trailing")
    assert (p.scheduler, p.beta_schedule, p.beta_start, p.beta_end) == ("euler", "scaled_linear", 0.00085, 0.012)
    assert p.scheduler_config["timestep_spacing"] == "leading" and p.scheduler_config["steps_offset"] == 1
    sched = json.loads((FOLDER / "scheduler/scheduler_config.json").read_text())
    from illume_kit.plugins.decoders.schedules import make_scheduler

    built = make_scheduler(p, pixel_space=False)
    assert type(built).__name__ == sched["_class_name"]
    assert all(built.config[k] == v for k, v in sched.items() if not k.startswith("_") and k in built.config)
    # UNet and VAE are the folder's architectures and weights
    unet_cfg = json.loads((FOLDER / "unet/config.json").read_text())
    assert list(det.denoiser.config.block_out_channels) == unet_cfg["block_out_channels"]
    assert det.denoiser.config.addition_embed_type == "text_time"
    w = load_file(str(FOLDER / "unet/diffusion_pytorch_model.safetensors"))["conv_in.weight"]
    assert torch.equal(det.denoiser.conv_in.weight, w.float())
    v = load_file(str(FOLDER / "vae/diffusion_pytorch_model.safetensors"))["decoder.conv_out.weight"]
    assert torch.equal(det.space.vae.decoder.conv_out.weight, v.float())
    assert p.output_sizes == ILLUME_OUTPUT_SIZES and p.guidance_scale == 1.5


@pytest.mark.parametrize("name", ["square", "tall"])
def test_denoiser_and_vae_match_the_pipe_given_its_code_map(det, ref, name, monkeypatch):
    """Fed the pipe's own code map, the sampling loop and the VAE reproduce it (exact on the machine
    the fixture was made on)."""
    original = det.code_map
    monkeypatch.setattr(det, "code_map", lambda codes: (ref[f"{name}.code_map"], original(codes)[1]))
    seed = RUNS[name]["seed"]
    lat = det.denoise(codes_of(ref, name), steps=META["steps"], guidance=META["guidance_scale"], seed=seed)
    assert (lat - ref[f"{name}.latents"]).abs().max().item() <= 1e-5
    img = ((det.space.decode(lat).float() + 1) / 2).clamp(0, 1)
    assert compare_image(img, ref, name) <= 1e-5


@pytest.mark.parametrize("name", ["square", "tall"])
def test_decoded_images_match_the_official_pipe(det, ref, name):
    """Codes -> image end to end: within 1e-3 (measured ~6e-5; the pipe's float16 code maps, here float32)."""
    codes = codes_of(ref, name)
    cmap, _ = det.code_map(codes)
    assert (cmap - ref[f"{name}.code_map"]).abs().max().item() <= 1e-3  # float16 rounding of the pipe's
    img = det.decode(codes, steps=META["steps"], guidance=META["guidance_scale"], seed=RUNS[name]["seed"])
    assert compare_image(img, ref, name) <= 1e-3


def test_checkpoint_params_rebuild_without_the_folder(det, tok, ref):
    """What a converted checkpoint records (architectures and scheduler written out, no folder)
    rebuilds the same decoder from the state dict alone."""
    params = det.checkpoint_params(official_sdxl_params(FOLDER))
    assert params["pretrained"] is None and params["scheduler_config"]["timestep_spacing"] == "leading"
    again = DiffusionDetokenizer(DiffusionDetokenizerParams(**params))
    again.attach(tok)
    again.load_state_dict(det.state_dict())
    codes = codes_of(ref, "square")
    a = det.denoise(codes, steps=2, seed=0)
    b = again.denoise(codes, steps=2, seed=0)
    assert torch.equal(a, b)


@pytest.fixture
def broken(tmp_path):
    dst = tmp_path / "decoder"
    shutil.copytree(FOLDER, dst)
    return dst


@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda d: (d / "scheduler/scheduler_config.json").unlink(), "scheduler/scheduler_config.json"),
        (lambda d: (d / "unet/config.json").write_text("{not json"), "unet/config.json"),
        (
            lambda d: (d / "vae/diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 7),
            "vae/diffusion_pytorch_model",
        ),
        (
            lambda d: (d / "unet/diffusion_pytorch_model.safetensors").write_bytes(
                (d / "unet/diffusion_pytorch_model.safetensors").read_bytes()[:-100]
            ),
            "unet/diffusion_pytorch_model.safetensors",
        ),
        (lambda d: (d / "unet/diffusion_pytorch_model.safetensors").unlink(), "unet/diffusion_pytorch_model"),
        (
            lambda d: (d / "model_index.json").write_text(
                (d / "model_index.json").read_text().replace("EulerDiscreteScheduler", "LMSDiscreteScheduler")
            ),
            "model_index.json",
        ),
    ],
    ids=["no-scheduler", "garbled-config", "garbled-vae", "truncated-unet", "no-unet-weights", "unknown-scheduler"],
)
def test_a_broken_folder_is_one_clear_error_naming_the_file(broken, tok, damage, named):
    from illume_kit.cli.output import expected_failure

    damage(broken)
    with pytest.raises(DiffusersFolderError) as info:
        load_official_sdxl(broken, tok)
    message = expected_failure(info.value)  # the CLI prints this one message, exit status 2
    assert message is not None and named in message and "\n" not in message
    if "unknown" in named or "model_index" in named:
        assert "EulerDiscreteScheduler" in message  # the supported classes are listed


def test_the_converted_release_decodes_like_the_pipe_without_the_folder(ref, tmp_path):
    """``convert_illume_plus(..., diffusion=FOLDER)`` (``illume-kit convert illume-plus-official
    --diffusion``) keeps the decoder whole: its checkpoint loads after the folder is gone and decodes
    the fixture's codes as the official pipe did."""
    from illume_kit.model.checkpoint import load_checkpoint
    from illume_kit.model.convert_official import convert_illume_plus

    mllm = ROOT / "tests/fixtures/official/mllm"
    folder = tmp_path / "decoder"
    shutil.copytree(FOLDER, folder)
    params = json.loads((mllm / "dualvitok_params.json").read_text())
    convert_illume_plus(mllm / "mllm", ROOT / META["dualvitok"]["file"], tmp_path / "ckpt", params, diffusion=folder)
    shutil.rmtree(folder)
    det = load_checkpoint(tmp_path / "ckpt")[0].detokenizer
    assert det.params.pretrained is None and det.params.scheduler_config["timestep_spacing"] == "leading"
    img = det.decode(
        codes_of(ref, "square"), steps=META["steps"], guidance=META["guidance_scale"], seed=RUNS["square"]["seed"]
    )
    assert compare_image(img, ref, "square") <= 1e-3


def test_loading_the_folder_later_records_its_architecture_and_scheduler(tok, det):
    """A detokenizer built from other params, then given the folder, samples and checkpoints as the folder's."""
    vae = json.loads((FOLDER / "vae/config.json").read_text())
    other = DiffusionDetokenizer(
        DiffusionDetokenizerParams(
            space="vae",
            vae_config={k: v for k, v in vae.items() if not k.startswith("_")},
            block_out_channels=[8, 16],
            attention_levels=[False, True],
            output_sizes=ILLUME_OUTPUT_SIZES,
        )
    )
    other.attach(tok)
    assert other.params.scheduler == "ddim"
    other.load_official(FOLDER)
    assert other.params.scheduler == "euler" and other.params.scheduler_config["steps_offset"] == 1
    recorded = other.checkpoint_params(other.params.model_dump())
    assert recorded["unet_config"]["block_out_channels"] == [8, 8, 8] and recorded["pretrained"] is None
    assert recorded["scheduler"] == "euler" and recorded["scheduler_config"]["timestep_spacing"] == "leading"
    mine, theirs = other.state_dict(), det.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
