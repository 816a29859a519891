"""Fewer-step schedulers (DPM-Solver++, UniPC) against DDIM at many steps, on an exact denoiser.

The data are Gaussian per value, x0 ~ N(mu, s^2), so the best denoiser is known in closed form for
the decoder's own noise schedule and prediction type. Every scheduler that solves the probability-flow
ODE of that schedule lands near the same end point from the same noise; one built from another
schedule (or reading the prediction as another type) lands elsewhere.
"""

import pytest
import torch

from illume_kit.plugins.decoders.diffusion import DiffusionDetokenizer
from illume_kit.plugins.decoders.params import SCHEDULERS
from illume_kit.plugins.decoders.schedules import make_scheduler
from illume_kit.testing.fakes import FakeTokenizer


@pytest.fixture(scope="module")
def tok():
    return FakeTokenizer()


@pytest.fixture(scope="module")
def codes(tok):
    torch.manual_seed(0)
    return tok.encode(torch.rand(2, 3, 32, 32)).codes


def make(tok, **params):
    torch.manual_seed(0)
    det = DiffusionDetokenizer(DiffusionDetokenizer.Params(output_scale=1, **params))
    det.attach(tok)
    return det


def exact_denoiser(det, alphas_cumprod: torch.Tensor, prediction_type: str):
    """Replace the UNet by the posterior mean of Gaussian data under ``alphas_cumprod``, given as
    ``prediction_type``. Returns the data's (mu, s)."""
    g = torch.Generator().manual_seed(0)
    shape = (1, det.space.channels, 8, 8)  # 32 px / patch 4
    mu, s = torch.rand(shape, generator=g) - 0.5, 0.1 + 0.3 * torch.rand(shape, generator=g)

    def predict(x, t, cmap, labels):
        ab = alphas_cumprod[int(t)].to(x.dtype)
        x0 = mu + (ab.sqrt() * s**2 / (ab * s**2 + 1 - ab)) * (x - ab.sqrt() * mu)
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        return {"sample": x0, "epsilon": eps, "v_prediction": ab.sqrt() * eps - (1 - ab).sqrt() * x0}[prediction_type]

    det._predict = predict
    return mu, s


def rms(a, b) -> float:
    return float((a - b).pow(2).mean().sqrt())


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_few_step_solvers_land_near_many_step_ddim(tok, codes, prediction_type):
    params = dict(prediction_type=prediction_type, scheduler_config={"clip_sample": False})
    det = make(tok, scheduler="ddim", **params)
    alphas = det.process.ddpm.alphas_cumprod  # the training process's schedule
    exact_denoiser(det, alphas, prediction_type)

    def run(scheduler, steps, d=det):
        return d.denoise(codes, steps=steps, guidance=1.0, seed=0, scheduler=scheduler)

    ref = run("ddim", 200)
    assert rms(run("ddim", 50), ref) < 0.02  # the reference has converged
    ddim10 = rms(run("ddim", 10), ref)
    for scheduler in ("dpm-solver++", "unipc"):
        assert rms(run(scheduler, 20), ref) < 0.02, scheduler  # 20 solver steps ~ 50+ DDIM steps
        assert rms(run(scheduler, 10), ref) < 0.8 * ddim10, scheduler  # better than DDIM at equal steps
    # the same denoiser sampled by solvers built from another beta schedule lands far away
    wrong = make(tok, scheduler="ddim", beta_schedule="linear", **params)
    exact_denoiser(wrong, alphas, prediction_type)
    for scheduler in ("dpm-solver++", "unipc"):
        assert rms(run(scheduler, 20, wrong), ref) > 0.1, scheduler


def test_a_decoder_trained_with_a_solver_samples_with_ddim_and_back(tok, codes):
    det = make(tok, scheduler="unipc", prediction_type="epsilon", scheduler_config={"clip_sample": False})
    exact_denoiser(det, det.process.ddpm.alphas_cumprod, "epsilon")
    ref = det.denoise(codes, steps=200, guidance=1.0, seed=0, scheduler="ddim")
    assert rms(det.denoise(codes, steps=20, guidance=1.0, seed=0), ref) < 0.02  # its own: unipc
    assert rms(det.denoise(codes, steps=20, guidance=1.0, seed=0, scheduler="dpm-solver++"), ref) < 0.02


def test_solvers_take_the_trained_schedule_and_clip_in_pixel_space():
    p = DiffusionDetokenizer.Params(
        scheduler="ddim", beta_schedule="linear", beta_start=0.001, beta_end=0.03, prediction_type="v_prediction"
    )
    dpm = make_scheduler(p, pixel_space=True, name="dpm-solver++")
    unipc = make_scheduler(p, pixel_space=False, name="unipc")
    assert type(dpm).__name__ == "DPMSolverMultistepScheduler" and dpm.config.algorithm_type == "dpmsolver++"
    assert type(unipc).__name__ == "UniPCMultistepScheduler"
    ddpm = make_scheduler(p.model_copy(update={"scheduler": "ddpm"}), pixel_space=True)
    for s in (dpm, unipc):
        assert torch.equal(s.alphas_cumprod, ddpm.alphas_cumprod)
        assert s.config.prediction_type == "v_prediction" and s.config.timestep_spacing == "trailing"
    assert dpm.config.thresholding and dpm.config.sample_max_value == 1.0  # = clip to [-1, 1]
    assert not unipc.config.thresholding  # latents are not clipped
    off = p.model_copy(update={"scheduler_config": {"clip_sample": False}})
    assert not make_scheduler(off, pixel_space=True, name="unipc").config.thresholding


def test_bad_scheduler_choices_are_clear_errors(tok, codes):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="dpm-solver\\+\\+"):  # the recipe error lists the choices
        DiffusionDetokenizer.Params(scheduler="dpmpp")
    det = make(tok, scheduler="ddim")
    with pytest.raises(ValueError, match="scheduler='dpmpp' is not a diffusion scheduler; valid choices: ") as e:
        det.decode(codes, steps=2, scheduler="dpmpp")
    assert all(name in str(e.value) for name in SCHEDULERS)
    with pytest.raises(ValueError, match="trained with scheduler 'ddim'.*valid choices: ddpm, ddim, euler, dpm"):
        det.decode(codes, steps=2, scheduler="flow-match-euler")
    flow = make(tok, scheduler="flow-match-euler")
    with pytest.raises(ValueError, match="rectified-flow.*valid choices: flow-match-euler$"):
        flow.decode(codes, steps=2, scheduler="unipc")
    with pytest.raises(ValueError, match="steps=0"):
        det.decode(codes, steps=0)


def test_scheduler_is_a_decode_option_of_eval():
    from illume_kit.cli.eval_cmds import decode_option_names

    assert {"scheduler", "steps"} <= set(decode_option_names(DiffusionDetokenizer))


@pytest.mark.parametrize("scheduler", ["dpm-solver++", "unipc"])
def test_solver_survives_a_diffusers_folder(tok, codes, tmp_path, scheduler):
    det = make(tok, scheduler=scheduler, prediction_type="sample")
    det.save_pretrained(tmp_path)
    again = make(tok, pretrained=str(tmp_path))
    assert again.params.scheduler == scheduler and again.params.prediction_type == "sample"
    assert torch.equal(det.decode(codes, steps=3, seed=1), again.decode(codes, steps=3, seed=1))


def test_eval_refuses_a_scheduler_of_another_family_before_loading_weights(tmp_path, capsys):
    from illume_kit.cli.eval_cmds import check_overrides
    from illume_kit.core.recipe import load_recipe
    from illume_kit.model.checkpoint import save_checkpoint
    from illume_kit.model.compose import compose

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "illume_kit: 1\nname: r\nbackbone: {name: qwen2, preset: tiny}\ntokenizer: {name: dualvitok, preset: tiny}\n"
        "detokenizer: {name: diffusion, preset: tiny, params: {scheduler: unipc, block_out_channels: [16, 32]}}\n"
        f"data: {{name: shapes, params: {{image_size: 32}}}}\nrun: {{output_dir: {tmp_path / 'run'}}}\n"
    )
    resolved = load_recipe(recipe)
    ck = str(save_checkpoint(compose(resolved), resolved, tmp_path / "ck"))
    check_overrides(ck, {}, {"scheduler": "ddim", "steps": 10})  # same family: fine
    with pytest.raises(ValueError, match="trained with scheduler 'unipc'.*valid choices: ddpm, ddim, euler"):
        check_overrides(ck, {}, {"scheduler": "flow-match-euler"})
    with pytest.raises(ValueError, match="steps=0"):
        check_overrides(ck, {}, {"steps": 0})
    from illume_kit.cli.main import main

    assert main(["eval", ck, "--decode", "scheduler=dpm", "-o", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err
    assert "scheduler='dpm' is not a diffusion scheduler; valid choices: ddpm" in err and "Traceback" not in err


@pytest.mark.slow  # inductor compiles the tiny UNet on the CPU: ~1 min
def test_compiled_unet_decodes_as_the_eager_one(tok, codes):
    """decode(compile=True): the eager images up to float rounding; the compiled module is
    kept beside the decoder, so its state dict is the denoiser's alone."""
    det = make(tok).eval()
    keys = set(det.state_dict())
    with torch.no_grad():
        eager = det.decode(codes, steps=3, seed=0, scheduler="dpm-solver++")
        compiled = det.decode(codes, steps=3, seed=0, scheduler="dpm-solver++", compile=True)
        again = det.decode(codes, steps=3, seed=0, scheduler="dpm-solver++", compile=True)
    # kernels fused otherwise round otherwise; three solver steps amplify it in a few pixels
    diff = (compiled - eager).abs()
    assert float(diff.mean()) < 1e-5 and float(diff.max()) < 1e-2
    assert torch.equal(compiled, again)
    assert set(det.state_dict()) == keys
