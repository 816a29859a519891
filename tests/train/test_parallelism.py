"""The parallelism section in one process: precision policies, blocks, sharded checkpoints and the
set-ups refused before any weights load."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_toys import mlp, mse_step, regression_data

from illume_kit.train import Trainer, TrainerConfig
from illume_kit.train import parallel as P
from illume_kit.train.state import ShardedCheckpointError, latest_checkpoint, load_sharded_checkpoint

ROOT = Path(__file__).parents[2]
RECIPE = str(ROOT / "tests" / "fixtures" / "recipes" / "fsdp_mllm_tiny.yaml")


def cli(*args, env=None):
    full = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "illume_kit.cli.main", *args], env=full, capture_output=True, text=True, timeout=300
    )


def rounded_mlp():
    """The toy model with bf16-representable weights: their bf16 copies are exact."""
    return mlp().bfloat16().float()


def toy(precision: str, lr: float, steps: int = 1, fit: bool = True):
    model = rounded_mlp()
    config = TrainerConfig(
        steps=steps, batch_size=16, lr=lr, seed=0, grad_clip=None, parallelism={"precision": precision}
    )
    trainer = Trainer(model, mse_step, regression_data(), config, quiet=True)
    if fit:
        trainer.fit()
    return trainer, model


def test_bf16_compute_keeps_fp32_master_weights_that_take_updates_below_bf16_resolution():
    before = rounded_mlp().state_dict()["0.weight"]
    # AdamW's first step moves each weight by about lr = 1e-5: for weights above 0.05 that is below half
    # a bf16 step (>= 2.4e-4 there), so in bf16 the update rounds away
    big = before.abs() > 0.05
    _, mixed = toy("bf16-mixed", lr=1e-5)
    assert all(p.dtype == torch.float32 for p in mixed.parameters())
    w = mixed[0].weight.detach()
    assert (w != before)[big].all()
    assert torch.equal(w.bfloat16()[big], before.bfloat16()[big])  # an update bf16 weights could not hold

    with pytest.warns(UserWarning, match="bf16-true keeps bf16 weights"):
        _, pure = toy("bf16-true", lr=1e-5)
    assert pure[0].weight.dtype == torch.bfloat16
    assert torch.equal(pure[0].weight.detach()[big], before.bfloat16()[big])  # rounded away


def test_a_model_loaded_in_bf16_trains_fp32_master_weights():
    model = rounded_mlp().bfloat16()
    model[0].bias.requires_grad_(False)  # frozen: stays as loaded
    cfg = TrainerConfig(steps=1, batch_size=16, lr=1e-5, grad_clip=None, parallelism={"precision": "bf16-mixed"})
    Trainer(model, mse_step, regression_data(), cfg, quiet=True).fit()
    assert model[0].weight.dtype == torch.float32 and model[0].bias.dtype == torch.bfloat16
    before = rounded_mlp().state_dict()["0.weight"]
    assert (model[0].weight.detach() != before)[before.abs() > 0.05].all()  # updates below bf16 resolution kept


def test_bf16_mixed_computes_in_bf16():
    seen = []

    def step(model, batch, s):
        x, y = batch
        out = model(x)
        seen.append(out.dtype)
        return {"loss": ((out.float() - y) ** 2).mean()}

    cfg = TrainerConfig(steps=1, batch_size=8, parallelism={"precision": "bf16-mixed"})
    Trainer(mlp(), step, regression_data(), cfg, quiet=True).fit()
    assert seen == [torch.bfloat16]


def test_fp16_mixed_scales_the_loss_and_trains():
    trainer, model = toy("fp16-mixed", lr=1e-2, steps=30, fit=False)
    first = ((model(regression_data()[:][0]) - regression_data()[:][1]) ** 2).mean().item()
    trainer.fit()
    scaler = trainer._groups["model"].scaler
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.get_scale() > 1
    last = ((model(regression_data()[:][0]) - regression_data()[:][1]) ** 2).mean().item()
    assert last < first


def test_fsdp_in_one_process_writes_sharded_checkpoints_that_resume_exactly(tmp_path):
    def cfg(steps):
        return TrainerConfig(
            steps=steps, batch_size=8, lr=1e-2, seed=1, checkpoint_every=3, parallelism={"strategy": "fsdp"}
        )

    whole = mlp()
    Trainer(whole, mse_step, regression_data(), cfg(6), tmp_path / "a", quiet=True).fit()
    part = mlp()
    Trainer(part, mse_step, regression_data(), cfg(6), tmp_path / "b", quiet=True).fit(until=3)
    folder = latest_checkpoint(tmp_path / "b" / "checkpoints")
    assert (folder / "dcp" / ".metadata").is_file() and not list(folder.glob("*.safetensors"))
    again = mlp(seed=5)  # other weights: the checkpoint must overwrite them
    Trainer(again, mse_step, regression_data(), cfg(6), tmp_path / "b", quiet=True).fit(resume=True)
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), again.state_dict().values()))

    # a checkpoint lacking what this run trains says so, naming the parameters
    bigger = torch.nn.Sequential(*mlp(), torch.nn.Linear(1, 1))
    trainer = Trainer(bigger, mse_step, regression_data(), cfg(6), tmp_path / "c", quiet=True)
    trainer._groups = dict(zip(("model", "disc"), trainer._setup_groups()))
    with pytest.raises(ShardedCheckpointError, match=r"does not hold what this run trains \(.*4\.weight"):
        load_sharded_checkpoint(latest_checkpoint(tmp_path / "a" / "checkpoints"), trainer._parts())


def test_a_sharded_checkpoint_whose_metadata_names_code_is_refused(tmp_path):
    Trainer(
        mlp(),
        mse_step,
        regression_data(),
        TrainerConfig(steps=1, batch_size=8, parallelism={"strategy": "fsdp"}),
        tmp_path,
        quiet=True,
    ).fit()
    folder = latest_checkpoint(tmp_path / "checkpoints")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    (folder / "dcp" / ".metadata").write_bytes(pickle.dumps(Evil()))
    trainer = Trainer(
        mlp(),
        mse_step,
        regression_data(),
        TrainerConfig(steps=2, batch_size=8, parallelism={"strategy": "fsdp"}),
        tmp_path,
        quiet=True,
    )
    with pytest.raises(
        ShardedCheckpointError, match=r"\.metadata: not a checkpoint's metadata \(names (posix|os)\.system"
    ):
        trainer.fit(resume=True)
    assert not (tmp_path / "pwned").exists()


def test_blocks_are_the_units_components_name():
    from illume_kit.core.recipe import load_recipe
    from illume_kit.model.compose import compose

    model = compose(load_recipe(RECIPE))
    found = P.blocks(model)
    names = [n for n, _ in found]
    assert "backbone.model.model.layers.0" in names and "backbone.model.model.layers.1" in names
    kinds = {type(b).__name__ for _, b in found}
    assert {"Qwen2DecoderLayer", "Qwen2VLVisionBlock", "ResnetBlock", "AttnBlock"} <= kinds
    assert not any(a != b and b.startswith(a + ".") for a in names for b in names)  # never nested
    # in the unified model only the backbone's trained blocks run once on every rank every step
    for name, block in found:
        params = set(block.parameters())
        assert P.runs_every_step(name, None, params) == name.startswith("backbone.")
        assert P.runs_every_step(name, "tokenizer", params)


def test_activation_checkpointing_recomputes_the_same_gradients():
    from illume_kit.core.recipe import load_recipe
    from illume_kit.core.schema import Parallelism
    from illume_kit.model.compose import compose

    def grads(checkpointing: bool):
        model = compose(load_recipe(RECIPE))
        backbone = model.backbone.model
        if checkpointing:
            P.prepare_blocks(model, Parallelism(activation_checkpointing=["backbone"]), None)
        ids = torch.arange(1, 33).reshape(2, 16)
        backbone(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None}

    plain, recomputed = grads(False), grads(True)
    assert plain.keys() == recomputed.keys()
    for k in plain:
        torch.testing.assert_close(recomputed[k], plain[k], rtol=1e-5, atol=1e-7, msg=k)


@pytest.mark.parametrize(
    "override, message",
    [
        ("parallelism.strategy=zero3", r"parallelism\.strategy.*'ddp' or 'fsdp'"),
        ("parallelism.precision=bf32", r"parallelism\.precision.*'bf16-mixed'"),
        ("parallelism.cpu_offload=true", r"cpu_offload needs strategy: fsdp"),
        ("parallelism.precision=bf16-true", r"bf16-true casts the LLM alone to bf16.*use bf16-mixed"),
        ("train.stages.0.grad_accum_steps=0", r"grad_accum_steps"),
        ("train.stages.0.grad_accum_steps=3", r"global_batch_size 8 is not a multiple of grad_accum_steps 3"),
    ],
)
def test_bad_parallel_setups_are_refused_by_validate(override, message):
    extra = ["parallelism.strategy=ddp"] if "cpu_offload" in override else []
    r = cli("validate", RECIPE, *extra, override)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    import re

    assert re.search(message, r.stderr, re.S), r.stderr


def test_a_world_size_that_does_not_divide_the_global_batch_stops_before_loading(tmp_path):
    r = cli("train", RECIPE, f"run.output_dir={tmp_path}", env={"WORLD_SIZE": "3"})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "train.stages.0.global_batch_size" in r.stderr and "do not split over 3 processes" in r.stderr
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_an_unsharded_checkpoint_is_not_resumed_sharded(tmp_path):
    out = tmp_path / "run"
    r = cli("train", RECIPE, f"run.output_dir={out}", "parallelism.strategy=ddp", "--until", "1", "--quiet")
    assert r.returncode == 0, r.stderr
    r = cli("train", RECIPE, f"run.output_dir={out}", "--resume", env={"WORLD_SIZE": "2"})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "parallelism.strategy: fsdp cannot resume" in r.stderr and "written unsharded (strategy ddp)" in r.stderr


def test_cpu_offload_without_a_gpu_stops_before_loading(tmp_path):
    r = cli("train", RECIPE, f"run.output_dir={tmp_path}", "parallelism.cpu_offload=true", "run.device=cpu")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "parallelism.cpu_offload" in r.stderr and "needs CUDA devices" in r.stderr


@pytest.mark.slow
def test_compiled_blocks_compute_what_eager_blocks_do():
    import shutil

    if shutil.which("cc") is None:
        pytest.skip("torch.compile on the CPU needs a C compiler")
    from illume_kit.core.recipe import load_recipe
    from illume_kit.core.schema import Parallelism
    from illume_kit.model.compose import compose

    def run(compiled: bool):
        model = compose(load_recipe(RECIPE))
        backbone = model.backbone.model
        if compiled:
            P.prepare_blocks(model, Parallelism(compile=True), None)
        ids = torch.arange(1, 33).reshape(2, 16)
        loss = backbone(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), backbone.model.layers[0].mlp.up_proj.weight.grad

    (eager_loss, eager_grad), (loss, grad) = run(False), run(True)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, eager_grad, rtol=1e-4, atol=1e-6)
