"""EMA weights (``ema: {decay, start_step}``): the average itself, where it goes, exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_toys import mlp, noisy_step, regression_data

from illume_kit.train.config import TrainerConfig
from illume_kit.train.state import STATE_FILE, latest_checkpoint
from illume_kit.train.trainer import EMA_RAW, Trainer


def cfg(**kw):
    base = dict(steps=6, batch_size=8, lr=5e-2, log_every=3, seed=3, schedule="constant")
    return TrainerConfig(**(base | kw))


def weights(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def recording(trajectory):
    """mse step that records the weights each step starts from (those after ``step`` updates)."""

    def step_fn(model, batch, step):
        trajectory.append(weights(model))
        x, y = batch
        loss = ((model(x) - y) ** 2).mean()
        return {"loss": loss}

    return step_fn


@pytest.mark.parametrize("start_step", [0, 3, 6])
def test_ema_is_the_hand_computed_average_from_start_step(tmp_path, start_step):
    decay = 0.7
    trajectory = []
    raw_model = mlp()
    Trainer(raw_model, recording(trajectory), regression_data(), cfg(), quiet=True).fit()
    trajectory.append(weights(raw_model))  # w_0 .. w_6
    expected = {}
    for k in trajectory[0]:
        e = trajectory[start_step][k].clone()
        for w in trajectory[start_step + 1 :]:
            e = decay * e + (1 - decay) * w[k]
        expected[k] = e

    model = mlp()
    c = cfg(ema={"decay": decay, "start_step": start_step})
    Trainer(model, recording([]), regression_data(), c, tmp_path, quiet=True).fit()
    got = weights(model)
    for k in expected:
        assert torch.allclose(got[k], expected[k], atol=1e-6, rtol=0), k
    if start_step == 6:  # never averaged: the trained weights themselves
        for k in expected:
            assert torch.equal(got[k], trajectory[-1][k])
    else:
        assert not torch.allclose(got["0.weight"], trajectory[-1]["0.weight"], atol=1e-4)
    # the checkpoint's model file is the average; its training state keeps the trained weights
    folder = latest_checkpoint(tmp_path / "checkpoints")
    saved = load_file(str(folder / "model.safetensors"))
    for k in expected:
        assert torch.equal(saved[k], got[k])
    state = torch.load(folder / STATE_FILE, weights_only=True)
    for k in expected:
        assert torch.equal(state[EMA_RAW][k], trajectory[-1][k])


def test_exact_resume_with_ema(tmp_path):
    """6 steps uninterrupted == stop at 4 (checkpoint of the average), rebuild, resume to 6."""
    c = cfg(ema={"decay": 0.8, "start_step": 1}, checkpoint_every=2)
    model = mlp(dropout=0.2)
    Trainer(model, noisy_step, regression_data(), c, tmp_path / "full", quiet=True).fit()
    want = weights(model)
    want_raw = torch.load(latest_checkpoint(tmp_path / "full" / "checkpoints") / STATE_FILE, weights_only=True)[EMA_RAW]

    model = mlp(dropout=0.2)
    Trainer(model, noisy_step, regression_data(), c, tmp_path / "resumed", quiet=True).fit(until=4)
    model = mlp(dropout=0.2)
    tr = Trainer(model, noisy_step, regression_data(), c, tmp_path / "resumed", quiet=True)
    tr.fit(resume=True)
    assert tr.step == 6
    got = weights(model)
    raw = torch.load(latest_checkpoint(tmp_path / "resumed" / "checkpoints") / STATE_FILE, weights_only=True)[EMA_RAW]
    for k in want:
        assert torch.equal(got[k], want[k]), k
        assert torch.equal(raw[k], want_raw[k]), k


def test_eval_fn_sees_the_average_and_training_goes_on_from_the_trained_weights(tmp_path):
    seen = []

    def eval_fn(model, step):
        seen.append(weights(model))
        return {"w": float(model[0].weight.sum())}

    c = cfg(ema={"decay": 0.9}, eval_every=3)
    model = mlp()
    Trainer(model, recording(trajectory := []), regression_data(), c, quiet=True, eval_fn=eval_fn).fit()
    plain = mlp()
    Trainer(plain, recording(plain_traj := []), regression_data(), cfg(eval_every=3), quiet=True).fit()
    # evaluating on the average never changed what trained: step 4 starts from the trained weights
    for k in trajectory[4]:
        assert torch.equal(trajectory[4][k], plain_traj[4][k])
    assert len(seen) == 2
    assert not torch.equal(seen[0]["0.weight"], trajectory[3]["0.weight"])  # the average, not the weights
    for k in seen[1]:
        assert torch.equal(seen[1][k], model.state_dict()[k])  # the final eval saw what fit leaves behind


def test_ema_config_is_checked():
    with pytest.raises(ValueError, match="decay"):
        TrainerConfig(ema={"decay": 1.0})
    with pytest.raises(ValueError, match="fsdp"):
        TrainerConfig(ema={"decay": 0.9}, parallelism={"strategy": "fsdp"})


def test_recipe_refuses_ema_under_fsdp_and_dumps_stages_without_it():
    from illume_kit.core.schema import Recipe

    base = {
        "illume_kit": 1,
        "name": "r",
        "tokenizer": {"name": "t"},
        "backbone": {"name": "b"},
        "train": {"stages": [{"name": "s", "target": "tokenizer"}]},
    }
    plain = Recipe.model_validate(base)
    assert "ema" not in plain.train.stages[0].model_dump()  # a stage without ema keeps its key
    with_ema = {**base, "train": {"stages": [{"name": "s", "target": "tokenizer", "ema": {"decay": 0.99}}]}}
    dumped = Recipe.model_validate(with_ema).train.stages[0].model_dump()
    assert dumped["ema"] == {"decay": 0.99, "start_step": 0}
    with pytest.raises(ValueError, match=r"train\.stages\.0\.ema: .*strategy: fsdp"):
        Recipe.model_validate({**with_ema, "parallelism": {"strategy": "fsdp"}})


def test_a_recipe_stage_with_ema_saves_the_average_for_eval_and_later_stages(tmp_path):
    pytest.importorskip("tensorboard")  # the stage also logs to it (run.loggers reaches the trainer)
    from illume_kit.core.recipe import load_recipe
    from illume_kit.model.checkpoint import load_checkpoint
    from illume_kit.train.stages import train

    resolved = load_recipe(
        Path(__file__).parents[2] / "recipes" / "tokenizers" / "vqgan_tiny.yaml",
        [
            "train.stages.0.steps=3",
            "train.stages.0.batch_size=2",
            "train.stages.0.ema={decay: 0.5, start_step: 1}",
            "data.params.num_samples=16",
            f"run.output_dir={tmp_path / 'run'}",
            "run.loggers=[jsonl, tensorboard]",
        ],
    )
    train(resolved, quiet=True)
    assert list((tmp_path / "run" / "stages" / "tokenizer" / "tb").glob("events.out.tfevents.*"))  # run.loggers
    folder = latest_checkpoint(tmp_path / "run" / "stages" / "tokenizer" / "checkpoints")
    average = load_file(str(folder / "model.safetensors"))
    trained = torch.load(folder / STATE_FILE, weights_only=True)[EMA_RAW]
    model, _ = load_checkpoint(tmp_path / "run" / "checkpoint")  # what `illume-kit eval` and the next stage load
    tok = model.tokenizer.state_dict()
    assert trained and all(torch.equal(tok[k], average[k]) for k in trained)
    assert any(not torch.equal(tok[k], trained[k]) for k in trained)
