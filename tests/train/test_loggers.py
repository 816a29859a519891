"""Experiment loggers (``run.loggers``): TensorBoard event files read back, a wandb offline run, errors."""

from __future__ import annotations

import builtins
import importlib
import json
from pathlib import Path

import numpy as np
import pytest
from train_toys import mlp, mse_step, regression_data

from illume_kit.core.extras import MissingExtra
from illume_kit.train import loggers as L
from illume_kit.train.config import TrainerConfig
from illume_kit.train.trainer import Trainer


def cfg(**kw):
    base = dict(steps=6, batch_size=8, lr=1e-2, log_every=2, seed=3)
    return TrainerConfig(**(base | kw))


def read_tb(folder):
    ea_mod = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea_mod.EventAccumulator(str(folder), size_guidance={ea_mod.SCALARS: 0, ea_mod.IMAGES: 0})
    acc.Reload()
    return acc


def test_tensorboard_event_files_hold_every_logged_row(tmp_path):
    pytest.importorskip("tensorboard")

    def eval_fn(model, step):
        grid = np.zeros((8, 12, 3), dtype=np.uint8)
        grid[:, :6] = 255
        return {"val/mse": 0.5, "samples": grid}

    c = cfg(loggers=["jsonl", "tensorboard"], eval_every=3)
    Trainer(mlp(), mse_step, regression_data(), c, tmp_path, quiet=True, eval_fn=eval_fn).fit()
    assert list((tmp_path / L.TB_DIR).glob("events.out.tfevents.*"))
    acc = read_tb(tmp_path / L.TB_DIR)
    tags = acc.Tags()
    assert {"loss", "mse", "lr", "grad_norm", "val/mse"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("loss")] == [2, 4, 6]
    assert [e.step for e in acc.Scalars("val/mse")] == [3, 6]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r for r in rows if "loss" in r}
    for e in acc.Scalars("loss"):
        assert e.value == pytest.approx(by_step[e.step]["loss"], rel=1e-6)
    assert tags["images"] == ["samples"]
    imgs = acc.Images("samples")
    assert [i.step for i in imgs] == [3, 6] and (imgs[0].width, imgs[0].height) == (12, 8)
    assert all("samples" not in r for r in rows)  # images go to the loggers, not into the rows


def test_tensorboard_resume_drops_the_events_it_logs_again(tmp_path):
    pytest.importorskip("tensorboard")
    c = cfg(loggers=["tensorboard"], checkpoint_every=2)
    Trainer(mlp(), mse_step, regression_data(), c, tmp_path, quiet=True).fit(until=5)  # checkpoint at 5
    Trainer(mlp(), mse_step, regression_data(), c.model_copy(update={"steps": 8}), tmp_path, quiet=True).fit(
        resume=True
    )
    steps = [e.step for e in read_tb(tmp_path / L.TB_DIR).Scalars("loss")]
    assert steps == [2, 4, 5, 6, 8]  # logged once each


def test_wandb_offline_run_is_written_under_the_output_folder(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    Trainer(mlp(), mse_step, regression_data(), cfg(steps=2, loggers=["wandb"]), tmp_path, quiet=True).fit()
    runs = list((tmp_path / L.WANDB_DIR / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb"))  # the run's records, for `wandb sync`


def test_missing_tensorboard_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "tensorboard" or name.startswith("tensorboard."):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    monkeypatch.setattr(importlib, "import_module", lambda n, *a: no_tensorboard(n))
    with pytest.raises(
        MissingExtra, match=r"run.loggers: tensorboard needs the 'tensorboard' package.*illume-kit\[loggers\]"
    ):
        L.ensure_available(["jsonl", "tensorboard"])


RECIPE = Path(__file__).parents[2] / "recipes" / "tokenizers" / "vqgan_tiny.yaml"


def test_unknown_logger_is_a_recipe_error_naming_the_valid_ones():
    from illume_kit.core.recipe import RecipeError, load_recipe

    with pytest.raises(RecipeError, match=r"unknown logger 'mlflow' \(valid: jsonl, tensorboard, wandb\)"):
        load_recipe(RECIPE, ["run.loggers=[jsonl, mlflow]"])
    with pytest.raises(ValueError, match="unknown logger"):
        TrainerConfig(loggers=["tb"])
    resolved = load_recipe(RECIPE, ["run.loggers=[tensorboard]"])
    assert resolved.recipe.run.loggers == ["tensorboard"]
    assert "loggers" not in load_recipe(RECIPE).to_yaml()  # default: dumped as before


def test_eval_cli_sends_metrics_and_grids_to_tensorboard(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from illume_kit.cli.main import main

    ckpt = Path(__file__).parents[2] / "checkpoints" / "dualvitok_qwen2_mllm_tiny"
    out = tmp_path / "ev"
    assert main(["eval", str(ckpt), "-n", "2", "-o", str(out), "--loggers", "tensorboard", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    acc = read_tb(out / L.TB_DIR)
    name = next(k for k, v in metrics.items() if isinstance(v, float))
    assert [e.value for e in acc.Scalars(f"eval/{name}")] == [pytest.approx(metrics[name], rel=1e-6)]
    assert "eval/reconstructions" in acc.Tags()["images"]
    assert main(["eval", str(ckpt), "--loggers", "tensorboard,mlflow"]) == 2
    assert "--loggers: unknown logger 'mlflow' (valid: jsonl, tensorboard, wandb)" in capsys.readouterr().err
