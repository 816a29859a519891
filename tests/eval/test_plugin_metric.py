"""A third-party metric: registered by an in-test plugin, named in eval.metrics, computed by `illume-kit eval`."""

import json

import pytest
import torch

from illume_kit import hookimpl
from illume_kit.core.params import ComponentParams
from illume_kit.core.recipe import RecipeError, load_recipe
from illume_kit.core.registry import ComponentSpec
from illume_kit.testing import conformance, registered

RECIPE = "recipes/tokenizers/vqgan_tiny.yaml"
OVERRIDES = ["data.params.num_samples=16", "eval.num_samples=4", "eval.metrics=[rec/psnr,brightness/original]"]


class BrightnessParams(ComponentParams):
    scale: float = 1.0


class Brightness:
    """Mean pixel value of the originals and of their reconstructions (lower is better, for the test)."""

    Params = BrightnessParams
    goal = "min"

    def __init__(self, params: BrightnessParams) -> None:
        self.params = params

    @torch.no_grad()
    def compute(self, ctx):
        x = torch.stack([ctx.dataset[i]["image"] for i in range(min(ctx.num_samples, len(ctx.dataset)))])
        rec = ctx.model.detokenizer.decode(ctx.model.tokenizer.encode(x).codes)
        s = self.params.scale
        return {"brightness/original": s * float(x.mean()), "brightness/reconstruction": s * float(rec.mean())}


class MetricPlugin:
    @hookimpl
    def illume_kit_components(self):
        return [
            ComponentSpec(
                "metric",
                "brightness",
                target=Brightness,
                params=BrightnessParams,
                summary="mean pixel value of originals and reconstructions",
            )
        ]


@pytest.fixture()
def plugin():
    with registered(MetricPlugin(), name="brightness-plugin", dist="illume-kit-brightness") as reg:
        yield reg


def test_listed_and_validated(plugin):
    from illume_kit.cli.main import main

    assert plugin.get("metric", "brightness").dist == "illume-kit-brightness"
    assert {"rec", "code", "sem", "und", "gen", "edit", "probe"} <= set(plugin.names("metric"))
    conformance.metric_contract(lambda: Brightness(BrightnessParams()))
    assert main(["validate", RECIPE, *OVERRIDES]) == 0


def test_unknown_metric_family_is_reported_with_did_you_mean():
    with pytest.raises(RecipeError) as e:
        load_recipe(RECIPE, ["eval.metrics=[rec/psnr,brightnes/original]"])
    assert "eval.metrics.1: unknown metric family 'brightnes'" in str(e.value)
    with pytest.raises(RecipeError, match=r"Did you mean rec/psnr, rec1x/psnr\?"):
        load_recipe(RECIPE, ["eval.metrics=[recc/psnr]"])


def test_computed_by_illume_kit_eval(plugin, tmp_path, capsys, monkeypatch):
    from illume_kit.cli.main import main
    from illume_kit.data.build import build_dataset
    from illume_kit.model.checkpoint import save_checkpoint
    from illume_kit.model.compose import compose

    monkeypatch.setenv("COLUMNS", "200")
    resolved = load_recipe(RECIPE, OVERRIDES)
    ckpt = save_checkpoint(compose(resolved), resolved, tmp_path / "ckpt")
    assert main(["eval", str(ckpt), "-o", str(tmp_path / "eval"), "--quiet"]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if "brightness/original" in line)
    assert "lower" in row  # the metric's own goal
    assert "rec/psnr" in table and "brightness/reconstruction" in table
    result = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    m = result["metrics"]
    ds = build_dataset(resolved, "val")
    truth = float(torch.stack([ds[i]["image"] for i in range(4)]).mean())
    assert m["brightness/original"] == pytest.approx(truth, abs=1e-6)
    assert 0.0 < m["brightness/reconstruction"] < 1.0 and "rec/psnr" in m and "code/usage/pixel" in m
    assert result["goals"] == {"brightness/original": "min", "brightness/reconstruction": "min"}
    conformance.check_metric_result({k: v for k, v in m.items() if k.startswith("brightness/")}, "brightness")


def test_builtin_task_families_share_one_task_evaluation(monkeypatch):
    import illume_kit.eval.tasks as tasks
    from illume_kit.core.protocols import EvalContext
    from illume_kit.eval.evaluate import compute_metrics

    calls = []

    def fake_tasks(model, resolved, wanted, n, **kw):
        calls.append(list(wanted))
        return {"und/accuracy": 0.5, "probe/accuracy": 1.0, "gen/accuracy": 0.25, "edit/accuracy": 0.125}

    monkeypatch.setattr(tasks, "evaluate_tasks", fake_tasks)
    names = ("rec/psnr", "gen/accuracy", "und/accuracy", "edit/accuracy")
    ctx = EvalContext(None, None, None, 4, metrics=names)
    ctx.cache["reconstruction"] = {"rec/psnr": 20.0, "code/usage/pixel": 0.5}  # the pass, already run
    metrics, goals = compute_metrics(ctx)
    assert calls == [["gen/accuracy", "und/accuracy", "edit/accuracy"]] and goals == {}
    assert list(metrics) == [
        "rec/psnr",
        "code/usage/pixel",
        "und/accuracy",
        "probe/accuracy",
        "gen/accuracy",
        "edit/accuracy",
    ]
    ctx.cache.pop("tasks")
    assert list(compute_metrics(ctx, tasks=False)[0]) == ["rec/psnr", "code/usage/pixel"]
