"""Gradient accumulation (``grad_accum_steps``) and per-group learning rates (``param_groups``)."""

import pytest
import torch
from torch.utils.data import TensorDataset
from train_toys import mlp, mse_step, regression_data

from illume_kit.train import optim as O
from illume_kit.train.config import TrainerConfig
from illume_kit.train.progress import StageHeader
from illume_kit.train.trainer import Trainer


def cfg(**kw):
    base = dict(steps=6, batch_size=16, lr=1e-2, log_every=2, seed=5, warmup_steps=2, grad_clip=0.5)
    return TrainerConfig(**(base | kw))


def weights(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def max_rel(a, b):
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max()) for k in b)


def token_data(n=96, length=6, dim=8, seed=0):
    """Sequences with a varying number of labelled tokens (1..length), as an LLM batch has."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, length, dim, generator=g)
    y = torch.tanh(x.sum(-1, keepdim=True) / dim)
    count = torch.randint(1, length + 1, (n,), generator=g)
    mask = (torch.arange(length)[None, :] < count[:, None]).float()
    return TensorDataset(x, y, mask)


def token_step(weighted):
    def step(model, batch, s):
        x, y, mask = batch
        err = ((model(x) - y) ** 2).squeeze(-1) * mask
        out = {"loss": err.sum() / mask.sum(), "tokens": mask.sum()}
        if weighted:
            out["loss_weight"] = mask.sum()
        return out

    return step


def run(step_fn, data, **kw):
    model = mlp()
    tr = Trainer(model, step_fn, data, cfg(**kw), quiet=True)
    tr.fit()
    return weights(model), tr


def test_two_micro_batches_of_8_equal_one_batch_of_16():
    one, tr1 = run(mse_step, regression_data(), batch_size=16)
    two, tr2 = run(mse_step, regression_data(), batch_size=8, grad_accum_steps=2)
    assert max_rel(two, one) <= 1e-5
    assert tr2.step == tr1.step == 6  # steps count optimizer steps
    assert [r["step"] for r in tr2.history] == [2, 4, 6]
    assert tr2.history[-1]["loss"] == pytest.approx(tr1.history[-1]["loss"], rel=1e-5)
    assert tr2.state_dict()["data_position"] == tr1.state_dict()["data_position"] == 6 * 16
    # the micro-batches are not a no-op: 6 steps of batch 8 alone end elsewhere
    half, _ = run(mse_step, regression_data(), batch_size=8)
    assert max_rel(half, one) > 1e-3


def test_token_averaged_loss_accumulates_with_its_weight():
    one, _ = run(token_step(True), token_data(), batch_size=16)
    four, _ = run(token_step(True), token_data(), batch_size=4, grad_accum_steps=4)
    assert max_rel(four, one) <= 1e-5
    # without the token counts the micro-batches' means count alike, which is another average
    plain, _ = run(token_step(False), token_data(), batch_size=4, grad_accum_steps=4)
    assert max_rel(plain, one) > 1e-4


def test_accumulated_run_resumes_exactly(tmp_path):
    full, _ = run(mse_step, regression_data(), batch_size=8, grad_accum_steps=2)
    model = mlp()
    Trainer(model, mse_step, regression_data(), cfg(batch_size=8, grad_accum_steps=2), tmp_path, quiet=True).fit(
        until=3
    )
    model = mlp(seed=9)
    Trainer(model, mse_step, regression_data(), cfg(batch_size=8, grad_accum_steps=2), tmp_path, quiet=True).fit(
        resume=True
    )
    for k, v in full.items():
        assert torch.equal(weights(model)[k], v), k


def test_header_reports_the_effective_batch(tmp_path):
    h = StageHeader("gen", "mllm", "the model", 10, tmp_path, batch=(8, 4, 2))
    assert h.effective_batch == 64
    assert h.lines()[-1] == "  effective batch 64 = 8 per micro-batch x 4 accumulated x 2 processes"


def test_grad_accum_below_one_is_a_recipe_error(capsys):
    from illume_kit.cli.main import main

    code = main(["validate", "recipes/tokenizers/siglip_tiny.yaml", "train.stages.0.grad_accum_steps=0"])
    out = "".join(capsys.readouterr())
    assert code == 2 and "grad_accum_steps" in out and "Traceback" not in out


# ------------------------------------------------------------------ param groups


def test_group_with_lr_zero_stays_bitwise_while_the_rest_moves():
    before = weights(mlp())
    groups = [{"match": "0", "lr": 0.0, "weight_decay": 0.0}]
    after, tr = run(mse_step, regression_data(), param_groups=groups, weight_decay=0.1)
    assert torch.equal(after["0.weight"], before["0.weight"]) and torch.equal(after["0.bias"], before["0.bias"])
    assert not torch.equal(after["3.weight"], before["3.weight"])
    assert not torch.equal(after["3.bias"], before["3.bias"])


def test_groups_follow_the_schedule_scaled_by_their_lr():
    model = mlp()
    groups = [{"match": "3", "lr": 2e-3}]
    tr = Trainer(model, mse_step, regression_data(), cfg(param_groups=groups, schedule="cosine"), quiet=True)
    seen = []
    orig = tr._train_step

    def spy(micro, s, autocast):
        seen.append([g["lr"] for g in tr._groups["model"].opt.param_groups])
        return orig(micro, s, autocast)

    tr._train_step = spy
    tr.fit()
    assert len(seen) == 6
    for s, lrs in enumerate(seen):
        factor = O.lr_factor(s, total=6, warmup=2, schedule="cosine", min_ratio=0.0)
        # stage groups first (decayed, undecayed), then the group's own
        assert lrs == pytest.approx([1e-2 * factor] * 2 + [2e-3 * factor] * 2, rel=1e-12)
    # the logged lr is the stage's (the lr of a row's last step)
    assert [r["lr"] for r in tr.history] == [seen[1][0], seen[3][0], seen[5][0]]


def test_group_optimizer_state_round_trips_through_resume(tmp_path):
    groups = [{"match": "3", "lr": 2e-3, "weight_decay": 0.05}]
    full, _ = run(mse_step, regression_data(), param_groups=groups)
    c = cfg(param_groups=groups)
    Trainer(mlp(), mse_step, regression_data(), c, tmp_path, quiet=True).fit(until=3)
    model = mlp(seed=9)
    tr = Trainer(model, mse_step, regression_data(), c, tmp_path, quiet=True)
    tr.fit(resume=True)
    opt = tr._groups["model"].opt
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.0, 0.05, 0.0]
    for k, v in full.items():
        assert torch.equal(weights(model)[k], v), k


def named(*names):
    return [(n, torch.nn.Parameter(torch.zeros(2, 2))) for n in names]


def test_group_matching_prefix_glob_from_layer_and_first_match_wins():
    names = [
        "backbone.embed.weight",
        "enc.semantic.blocks.3.w",
        "enc.semantic.blocks.16.w",
        "enc.semantic.blocks.20.w",
        "enc.pixel.blocks.17.w",
        "proj.w",
    ]
    groups = [
        {"match": "backbone.embed"},
        {"match": "enc.*.blocks", "from_layer": 16},
        {"match": "enc"},
    ]
    assert O.assign_groups(names, groups) == [0, 2, 1, 1, 1, -1]
    # a prefix is a whole name component: "back" is not "backbone"
    with pytest.raises(ValueError, match=r"param_groups\[0\]\.match 'back' matches no parameter.*'backbone'"):
        O.assign_groups(names, [{"match": "back"}])
    with pytest.raises(ValueError, match=r"param_groups\[0\]\.from_layer"):
        O.assign_groups(names, [{"match": "enc.semantic.blocks", "from_layer": 99}])
    opt = O.adamw(named(*names), lr=1.0, weight_decay=0.1, betas=(0.9, 0.99), param_groups=groups)
    assert [(g["lr"], len(g["params"])) for g in opt.param_groups] == [(1.0, 1), (1.0, 1), (1.0, 3), (1.0, 1)]


def test_a_frozen_group_leaves_the_optimizer_and_stops_its_gradients():
    from pydantic import ValidationError

    from illume_kit.core.schema import ParamGroup

    params = named("enc.blocks.0.w", "enc.blocks.1.w", "enc.stem.w", "head.w")
    groups = [{"match": "enc.blocks", "from_layer": 1, "lr": 0.5}, {"match": "enc", "freeze": True}]
    opt = O.adamw(params, lr=1.0, weight_decay=0.0, betas=(0.9, 0.99), param_groups=groups)
    kept = {id(p) for g in opt.param_groups for p in g["params"]}
    assert [n for n, p in params if id(p) in kept] == ["enc.blocks.1.w", "head.w"]
    assert [n for n, p in params if p.requires_grad] == ["enc.blocks.1.w", "head.w"]
    assert [(g["lr"], len(g["params"])) for g in opt.param_groups] == [(1.0, 1), (0.5, 1)]
    with pytest.raises(ValueError, match="freeze: true select every one"):
        O.adamw(
            named("enc.w"), lr=1.0, weight_decay=0.0, betas=(0.9, 0.99), param_groups=[{"match": "enc", "freeze": True}]
        )
    with pytest.raises(ValidationError, match="freeze: true trains nothing"):
        ParamGroup(match="enc", freeze=True, lr=0.1)
    # a group without freeze dumps as before (a sweep keys its stages by the dump)
    assert "freeze" not in ParamGroup(match="enc", lr=0.1).model_dump()
    assert ParamGroup(match="enc", freeze=True).model_dump()["freeze"] is True


# ------------------------------------------------------------------ a real recipe

VQGAN = "recipes/tokenizers/vqgan_tiny.yaml"
# a gradient-trained codebook: the EMA codebook and dead-code restarts update from each forward's batch,
# so they see micro-batches, not the step's batch
VQGAN_SMALL = [
    "train.stages.0.steps=3",
    "train.stages.0.warmup_steps=0",
    "data.params.num_samples=16",
    "tokenizer.params.quantizer.params.learnable_codebook=true",
    "tokenizer.params.quantizer.params.use_cosine_sim=false",
    "tokenizer.params.quantizer.params.threshold_ema_dead_code=0",
]


def test_tokenizer_stage_two_micro_batches_of_4_equal_one_of_8(tmp_path, capsys):
    from safetensors.torch import load_file

    from illume_kit.cli.main import main

    def final(out, *over, quiet=True):
        args = ["train", VQGAN, *VQGAN_SMALL, *over, f"run.output_dir={out}"] + (["--quiet"] if quiet else [])
        assert main(args) == 0
        return load_file(out / "stages" / "tokenizer" / "checkpoints" / "step_00000003" / "model.safetensors")

    one = final(tmp_path / "one", "train.stages.0.batch_size=8")
    two = final(tmp_path / "two", "train.stages.0.batch_size=4", "train.stages.0.grad_accum_steps=2", quiet=False)
    assert "effective batch 8 = 4 per micro-batch x 2 accumulated x 1 process" in "".join(capsys.readouterr())
    half = final(tmp_path / "half", "train.stages.0.batch_size=4")
    moved = 0.0
    for k, v in one.items():
        if v.is_floating_point():
            ref = v.double().norm() + 1e-30
            assert float((two[k].double() - v.double()).norm() / ref) <= 1e-5, k
            moved = max(moved, float((half[k].double() - v.double()).norm() / ref))
    assert moved > 1e-3  # batch 4 alone ends elsewhere: the comparison can fail


def test_mllm_micro_batches_draw_by_their_place_in_the_step(monkeypatch):
    from illume_kit.model import objective

    keys, steps = [], []

    class Mixer:
        def samples(self, batch, step, offset):
            keys.append((step, offset))
            return batch

    monkeypatch.setattr(objective, "mllm_loss", lambda model, samples, average, **kw: {"loss": torch.zeros(())})
    fn = objective.mllm_step_fn(Mixer())

    def step(model, batch, s):
        steps.append((int(s), s.micro))
        return {"loss": fn(model, batch, s)["loss"] + model(batch[0]).sum() * 0}

    data = [(torch.zeros(8),)] * 16
    Trainer(mlp(), step, lambda *a: iter(data), cfg(steps=2, batch_size=4, grad_accum_steps=3), quiet=True).fit()
    assert steps == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    # each micro-batch's samples are keyed by the step and their place among the step's samples
    assert keys == [(0, 0), (0, 4), (0, 8), (1, 0), (1, 4), (1, 8)]
    assert all(type(k) is int for key in keys for k in key)
    fn(None, [], 4)  # a plain int step: the batch is the whole step
    assert keys[-1] == (4, 0)


MLLM_GROUPS = [
    "train",
    "recipes/dualvitok_qwen2_tiny.yaml",
    "data.params.num_samples=8",
    "train.stages=[{name: mllm, target: mllm, trainable: [all], steps: 3, batch_size: 2, lr: 1.0e-3,"
    " weight_decay: 0.1, param_groups: [{match: backbone.model.model.layers, from_layer: 1, lr: 0}],"
    " options: {text_corpus_items: 8}}]",
]


def test_mllm_recipe_group_at_lr_zero_stays_bitwise_across_a_resume(tmp_path):
    import shutil

    from safetensors.torch import load_file

    from illume_kit.cli.main import main

    def ckpt(out, step):
        return out / "stages" / "mllm" / "checkpoints" / f"step_{step:08d}" / "model.safetensors"

    out = tmp_path / "run"
    assert main([*MLLM_GROUPS, f"run.output_dir={out}", "--quiet", "--until", "1"]) == 0
    shutil.copy(ckpt(out, 1), tmp_path / "step1.safetensors")
    assert main([*MLLM_GROUPS, f"run.output_dir={out}", "--quiet", "--resume"]) == 0
    first, last = load_file(tmp_path / "step1.safetensors"), load_file(ckpt(out, 3))
    frozen = [k for k in last if k.startswith("backbone.model.model.layers.") and k.split(".")[4] != "0"]
    moving = [k for k in last if k.startswith("backbone.model.model.layers.0.")]
    assert frozen and moving
    assert all(torch.equal(first[k], last[k]) for k in frozen)
    assert all(not torch.equal(first[k], last[k]) for k in moving if last[k].ndim >= 2)


def test_a_stage_without_the_options_dumps_as_before():
    """A sweep keys its shared stages by their dump: options left at "off" leave the key alone."""
    from illume_kit.core.schema import MllmStage

    plain = MllmStage(name="a", target="mllm").model_dump(mode="json")
    assert "grad_accum_steps" not in plain and "param_groups" not in plain
    used = MllmStage(name="a", target="mllm", grad_accum_steps=2, param_groups=[{"match": "x", "lr": 0}])
    dumped = used.model_dump(mode="json")
    assert dumped["grad_accum_steps"] == 2 and dumped["param_groups"][0]["match"] == "x"
    assert MllmStage.model_validate(dumped) == used


def test_mllm_step_two_micro_batches_of_4_equal_one_of_8(monkeypatch):
    """The task draws of a sample follow its place in the step, so an accumulated step sees the same
    samples as one batch: the same loss and gradient (compared as the optimizer receives it, since
    AdamW's first update, g / (|g| + eps), turns the rounding of near-zero gradients into whole steps)."""
    import copy

    from illume_kit.core.recipe import load_recipe
    from illume_kit.data.build import build_dataset
    from illume_kit.model.compose import compose
    from illume_kit.model.objective import mllm_step_fn, trainable_parameters
    from illume_kit.model.tasks import TaskMixer
    from illume_kit.train.trainer import StepIndex

    resolved = load_recipe("recipes/dualvitok_qwen2_tiny.yaml", ["data.params.num_samples=8"])
    data = build_dataset(resolved, "train")
    items = [data[i] for i in range(8)]
    base = compose(resolved)
    trainable_parameters(base, ["all"])
    before = weights(base)
    fn = mllm_step_fn(TaskMixer(cfg_dropout=0.3, qa_turns=2, seed=0), "sample")
    grads = []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(params, *a, **kw):
        params = list(params)
        grads.append(torch.cat([p.grad.flatten() for p in params if p.grad is not None]))
        return clip(params, *a, **kw)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)

    def train(step_fn, **kw):
        model = copy.deepcopy(base)
        tr = Trainer(model, step_fn, items, TrainerConfig(steps=1, lr=1e-3, seed=0, **kw), quiet=True, collate_fn=list)
        tr.fit()
        return grads[-1], tr.history[-1]["loss"], weights(model)

    g1, loss1, one = train(fn, batch_size=8)
    g2, loss2, two = train(fn, batch_size=4, grad_accum_steps=2)
    assert loss2 == pytest.approx(loss1, rel=1e-5)
    assert float((g2 - g1).norm() / g1.norm()) <= 1e-5
    moved = max(float((one[k] - before[k]).abs().max()) for k in one)
    assert moved > 5e-4  # AdamW's first step moves a weight by up to lr
    assert max(float((two[k] - one[k]).abs().max()) for k in one) < 0.05 * moved  # the same step, up to rounding
    # micro-batches that each drew as if they began the step see other samples
    g3, _, _ = train(lambda m, b, s: fn(m, b, StepIndex(int(s), s.micro)), batch_size=4, grad_accum_steps=2)
    assert float((g3 - g1).norm() / g1.norm()) > 1e-2
