import json

import pytest
import torch
from safetensors.torch import load_file
from train_toys import TinyAutoencoder, gan_steps, image_data, mlp, mse_step, noisy_step, regression_data, tiny_disc

from illume_kit.train.config import TrainerConfig
from illume_kit.train.state import STATE_FILE, latest_checkpoint
from illume_kit.train.trainer import Trainer


def cfg(**kw):
    base = dict(steps=12, batch_size=16, lr=1e-2, log_every=4, seed=3, warmup_steps=2)
    return TrainerConfig(**(base | kw))


def weights(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def assert_bitwise(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_loss_falls_on_toy_regression(tmp_path):
    model = mlp()
    tr = Trainer(model, mse_step, regression_data(), cfg(steps=150, log_every=25), tmp_path, quiet=True)
    last = tr.fit()
    first = tr.history[0]["loss"]
    assert last["step"] == 150
    assert last["loss"] < 0.2 * first, (first, last["loss"])
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [25, 50, 75, 100, 125, 150]
    assert {"loss", "mse", "lr", "grad_norm"} <= rows[0].keys()
    folder = latest_checkpoint(tmp_path / "checkpoints")
    assert folder is not None and folder.name == "step_00000150"
    saved = load_file(str(folder / "model.safetensors"))
    assert_bitwise(saved, model.state_dict())
    state = torch.load(folder / STATE_FILE, weights_only=True)
    assert state["step"] == 150 and state["data_position"] == 150 * 16


class Crash(Exception):
    pass


def crash_at(step_fn, at):
    def fn(model, batch, step, *rest):
        if step == at:
            raise Crash
        return step_fn(model, batch, step, *rest)

    return fn


@pytest.mark.parametrize("adversarial", [False, True])
def test_exact_resume_after_crash_is_bitwise_identical(tmp_path, adversarial):
    """12 steps uninterrupted == crash in step 6 (last checkpoint: 4), rebuild, resume to 12."""

    def build(step_wrap=lambda f: f):
        if adversarial:
            torch.manual_seed(0)
            model, disc = TinyAutoencoder(), tiny_disc()
            step_fn, disc_fn = gan_steps(disc)
            return model, disc, step_wrap(step_fn), disc_fn, image_data()
        return mlp(dropout=0.2), None, step_wrap(noisy_step), None, regression_data()

    c = cfg(checkpoint_every=4, disc_start=2, keep_last=2)
    model, disc, step_fn, disc_fn, data = build()
    Trainer(model, step_fn, data, c, tmp_path / "full", disc=disc, disc_step_fn=disc_fn, quiet=True).fit()
    want = weights(model)
    want_disc = weights(disc) if disc is not None else None

    out = tmp_path / "resumed"
    model, disc, step_fn, disc_fn, data = build(lambda f: crash_at(f, 6))
    with pytest.raises(Crash):
        Trainer(model, step_fn, data, c, out, disc=disc, disc_step_fn=disc_fn, quiet=True).fit()
    assert latest_checkpoint(out / "checkpoints").name == "step_00000004"

    model, disc, step_fn, disc_fn, data = build()  # a fresh process would rebuild from scratch
    tr = Trainer(model, step_fn, data, c, out, disc=disc, disc_step_fn=disc_fn, quiet=True)
    tr.fit(resume=True)
    assert tr.step == 12
    assert_bitwise(weights(model), want)
    if disc is not None:
        assert_bitwise(weights(disc), want_disc)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 8, 12]  # rows the crashed run logged after step 4 were dropped and redone
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_00000008", "step_00000012"]


def test_until_then_resume_matches_and_changes_nothing_without_resume(tmp_path):
    model = mlp(dropout=0.1)
    Trainer(model, noisy_step, regression_data(), cfg(), tmp_path / "a", quiet=True).fit()
    want = weights(model)

    model = mlp(dropout=0.1)
    tr = Trainer(model, noisy_step, regression_data(), cfg(), tmp_path / "b", quiet=True)
    tr.fit(until=5)
    assert tr.step == 5 and latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step_00000005"
    model = mlp(dropout=0.1)
    Trainer(model, noisy_step, regression_data(), cfg(), tmp_path / "b", quiet=True).fit(resume=True)
    assert_bitwise(weights(model), want)

    # resume=False ignores the checkpoint and starts over (same result, from step 0)
    model = mlp(dropout=0.1)
    tr = Trainer(model, noisy_step, regression_data(), cfg(), tmp_path / "b", quiet=True)
    tr.fit()
    assert_bitwise(weights(model), want)


def test_resume_with_changed_settings_warns(tmp_path):
    Trainer(mlp(), mse_step, regression_data(), cfg(), tmp_path, quiet=True).fit(until=4)
    with pytest.warns(UserWarning, match="lr"):
        Trainer(mlp(), mse_step, regression_data(), cfg(lr=1e-3), tmp_path, quiet=True).fit(resume=True)


def test_eval_fn_never_changes_the_trajectory(tmp_path):
    model = mlp(dropout=0.2)
    Trainer(model, noisy_step, regression_data(), cfg(), quiet=True).fit()
    want = weights(model)

    seen = []

    def eval_fn(m, step):
        assert not m.training
        torch.randn(100)  # consumes RNG: must not leak into training
        seen.append(step)
        return {"val/x": 1.5}

    model = mlp(dropout=0.2)
    tr = Trainer(model, noisy_step, regression_data(), cfg(eval_every=5), tmp_path, eval_fn=eval_fn, quiet=True)
    tr.fit()
    assert seen == [5, 10, 12]
    assert model.training
    assert_bitwise(weights(model), want)
    assert any(r.get("val/x") == 1.5 for r in tr.history)


def test_trainable_prefixes_freeze_the_rest(tmp_path):
    model = mlp()
    before = weights(model)
    tr = Trainer(model, mse_step, regression_data(), cfg(steps=5, trainable=["3"]), quiet=True)
    tr.fit()
    after = weights(model)
    assert torch.equal(before["0.weight"], after["0.weight"])
    assert not torch.equal(before["3.weight"], after["3.weight"])
    with pytest.raises(ValueError, match="matches no parameter"):
        Trainer(mlp(), mse_step, regression_data(), cfg(trainable=["encoder"]), quiet=True).fit()
    # a callable filter works too
    model = mlp()
    Trainer(
        model, mse_step, regression_data(), cfg(steps=3), quiet=True, trainable=lambda name, p: name.endswith("bias")
    ).fit()
    assert torch.equal(weights(model)["3.weight"], before["3.weight"])
    assert not torch.equal(weights(model)["3.bias"], before["3.bias"])


def test_discriminator_trains_after_disc_start_only():
    torch.manual_seed(0)
    model, disc = TinyAutoencoder(), tiny_disc()
    step_fn, disc_fn = gan_steps(disc)
    d0 = weights(disc)
    tr = Trainer(
        model,
        step_fn,
        image_data(),
        cfg(steps=3, disc_start=3, log_every=1),
        disc=disc,
        disc_step_fn=disc_fn,
        quiet=True,
    )
    tr.fit()
    # the generator's adversarial term must not move the discriminator
    assert_bitwise(weights(disc), d0)
    assert "disc/loss" not in tr.history[-1]

    tr = Trainer(
        model,
        step_fn,
        image_data(),
        cfg(steps=4, disc_start=1, log_every=1),
        disc=disc,
        disc_step_fn=disc_fn,
        quiet=True,
    )
    tr.fit()
    assert not torch.equal(weights(disc)["0.weight"], d0["0.weight"])
    assert {"rec", "adv", "disc/loss"} <= tr.history[-1].keys()
    assert "recon" not in tr.history[-1]  # non-scalar outputs are passed on, not logged
    assert all(p.requires_grad for p in disc.parameters())


def test_step_fn_contract_errors():
    bad = Trainer(mlp(), lambda m, b, s: {"mse": torch.tensor(1.0)}, regression_data(), cfg(), quiet=True)
    with pytest.raises(KeyError, match="scalar 'loss'"):
        bad.fit()

    def nan_step(m, b, s):
        return {"loss": mse_step(m, b, s)["loss"] * float("nan")}

    with pytest.raises(FloatingPointError, match="step 0"):
        Trainer(mlp(), nan_step, regression_data(), cfg(), quiet=True).fit()
    with pytest.raises(ValueError, match="together"):
        Trainer(mlp(), mse_step, regression_data(), cfg(), disc=tiny_disc())


def test_loader_factory_and_running_out():
    def factory(start, rank, world):
        data = regression_data()
        for s in range(start, 6):
            yield data.tensors[0][s * 4 : (s + 1) * 4], data.tensors[1][s * 4 : (s + 1) * 4]

    tr = Trainer(mlp(), mse_step, factory, cfg(steps=6), quiet=True)
    assert tr.fit()["step"] == 6
    with pytest.raises(RuntimeError, match="ran out at step 6"):
        Trainer(mlp(), mse_step, factory, cfg(steps=8), quiet=True).fit()


def test_config_is_strict_and_converts_from_a_stage():
    with pytest.raises(Exception, match="extra"):
        TrainerConfig(stepz=3)
    c = TrainerConfig.from_stage({"name": "s1", "target": "tokenizer", "steps": 7, "lr": 1e-3, "options": {}})
    assert c.steps == 7 and c.lr == 1e-3


def test_recipe_stage_betas_reach_the_optimiser():
    from illume_kit.core.schema import Stage

    stage = Stage(name="s", target="mllm", steps=1, betas=(0.8, 0.95))
    tr = Trainer(mlp(), mse_step, regression_data(), TrainerConfig.from_stage(stage), quiet=True)
    tr.fit()
    assert tr._groups["model"].opt.param_groups[0]["betas"] == (0.8, 0.95)
    with pytest.raises(Exception, match="less than 1"):
        Stage(name="s", target="mllm", betas=(0.9, 1.0))
