"""Task accuracies: plumbing on a tiny random model, and scoring with stand-ins that know the answer."""

import pytest
import torch

import illume_kit.eval.tasks as tasks
from illume_kit.eval.tasks import edit_kind, evaluate_tasks, normalise, question_kind

RECIPE = "recipes/examples/fsq_qwen2_tiny.yaml"
OVERRIDES = ["eval.options.batch_size=3", "eval.options.max_answer_tokens=3", "data.params.num_samples=50"]


@pytest.fixture(scope="module")
def tiny():
    from illume_kit.core.recipe import load_recipe
    from illume_kit.model.compose import compose

    resolved = load_recipe(RECIPE, OVERRIDES)
    return compose(resolved), resolved


def test_random_model_reports_every_metric_in_range(tiny, tmp_path):
    model, resolved = tiny
    model.train()
    m = evaluate_tasks(
        model, resolved, ["und/accuracy", "gen/accuracy", "edit/accuracy", "rec/psnr"], 4, out_dir=tmp_path, quiet=True
    )
    for k in (
        "und/accuracy",
        "gen/accuracy",
        "gen/accuracy_nocfg",
        "gen/shape",
        "gen/colour",
        "gen/position",
        "gen/count",
        "gen/attributes",
        "gen/attributes_nocfg",
        "edit/accuracy",
        "probe/accuracy",
    ):
        assert k in m, (k, sorted(m))
    assert all(0.0 <= v <= 1.0 for v in m.values()), m
    assert not any(k.startswith("rec/") for k in m)
    assert m["probe/accuracy"] >= 0.75  # ground truth reads right even when the model is noise
    assert (tmp_path / "generations.png").is_file() and (tmp_path / "edits.png").is_file()
    assert (tmp_path / "task_samples.json").is_file()
    assert model.training  # the caller's mode is restored


def test_only_wanted_families_run(tiny):
    model, resolved = tiny
    assert evaluate_tasks(model, resolved, ["rec/psnr"], 2, quiet=True) == {}
    m = evaluate_tasks(model, resolved, ["probe/accuracy"], 3, quiet=True)
    assert set(m) == {"probe/accuracy"}


def test_generation_is_seeded(tiny):
    from illume_kit.data.build import build_dataset
    from illume_kit.eval.probe import load_probe

    model, resolved = tiny
    ds = build_dataset(resolved, "val")
    items = [ds[i] for i in range(2)]
    _, a, _ = tasks.generation(model, items, load_probe(), cfg=2.0, seed=5, batch_size=2)
    _, b, _ = tasks.generation(model, items, load_probe(), cfg=2.0, seed=5, batch_size=2)
    _, c, _ = tasks.generation(model, items, load_probe(), cfg=2.0, seed=6, batch_size=2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_a_model_that_draws_the_truth_scores_high_and_one_that_copies_scores_zero(tiny, monkeypatch):
    model, resolved = tiny
    from illume_kit.data.build import build_dataset

    ds = build_dataset(resolved, "val")
    items = [ds[i] for i in range(12)]

    def truth_draw(make_codes, model, n, bs, seed, decode, progress, label):
        key = "edit" if label.startswith("edit") else "gen"
        return [it["edit"]["image"] if key == "edit" else it["image"] for it in items[:n]]

    def answers(model, images, questions, max_new_tokens=8):
        truth = {(id(it["image"]), q): a for it in items for q, a in it["qa"]}
        return [f"  {truth[id(im), q].upper()} " for im, q in zip(images, questions)]

    monkeypatch.setattr(tasks, "_draw", truth_draw)
    monkeypatch.setattr("illume_kit.model.sampler.answer", answers)
    m = evaluate_tasks(
        model, resolved, ["und/accuracy", "gen/accuracy", "edit/accuracy"], 12, quiet=True, dataset=items
    )
    assert m["und/accuracy"] == 1.0 and m["und/accuracy/count"] == 1.0
    assert m["gen/accuracy"] >= 0.9 and m["gen/accuracy_nocfg"] >= 0.9 and m["edit/accuracy"] >= 0.9, m
    assert m["gen/attributes"] >= 0.9 and m["gen/attributes_nocfg"] >= 0.9, m

    def copy_draw(make_codes, model, n, bs, seed, decode, progress, label):
        return [it["image"] for it in items[:n]]  # "edit" = give the source back unchanged

    monkeypatch.setattr(tasks, "_draw", copy_draw)
    m = evaluate_tasks(model, resolved, ["edit/accuracy"], 12, quiet=True, dataset=items)
    assert m["edit/accuracy"] <= 0.1, m


def test_reconstruction_ceiling_reads_what_the_detokenizer_draws(tiny, monkeypatch):
    model, resolved = tiny
    from illume_kit.data.build import build_dataset

    items = [build_dataset(resolved, "val")[i] for i in range(8)]
    noise = evaluate_tasks(model, resolved, ["probe/reconstruction"], 8, quiet=True, dataset=items)
    assert set(noise) == {"probe/accuracy", "probe/reconstruction", "probe/reconstruction_attributes"}
    assert noise["probe/reconstruction"] <= 0.25 < noise["probe/accuracy"]  # random tokenizer: nothing survives
    assert noise["probe/reconstruction_attributes"] < 0.5
    by_id = {id(it["image"]): it["image"] for it in items}
    seen = []

    def exact_decode(model, codes, **kw):  # a perfect tokenizer + detokenizer: codes decode to the input
        return [by_id[seen.pop(0)] for _ in codes]

    import illume_kit.model.sequence as sequence

    real_encode = sequence.encode_images

    def tracking_encode(model, images):
        seen.extend(id(im) for im in images)
        return real_encode(model, images)

    monkeypatch.setattr("illume_kit.model.sampler.decode_images", exact_decode)
    monkeypatch.setattr("illume_kit.model.sequence.encode_images", tracking_encode)
    m = evaluate_tasks(model, resolved, ["probe/reconstruction"], 8, quiet=True, dataset=items)
    assert m["probe/reconstruction"] == m["probe/accuracy"] >= 0.75
    assert m["probe/reconstruction_attributes"] >= 0.9


def test_text_helpers():
    assert normalise("  Top   Left ") == "top left"
    assert question_kind("how many shapes are there?") == "count"
    assert question_kind("what color is the shape at the center?") == "colour"
    assert question_kind("where is the red star?") == "position"
    assert question_kind("is there a circle?") == "exists"
    assert edit_kind("make the star at the center blue") == "colour"
    assert edit_kind("move the star at the center to the top left") == "move"
    assert edit_kind("remove the star at the center") == "remove"


def test_metric_specs_cover_every_reported_name():
    from illume_kit.eval.specs import metric_spec

    for name in (
        "gen/accuracy_nocfg",
        "gen/shape",
        "gen/colour",
        "gen/size",
        "gen/position",
        "gen/count",
        "gen/attributes",
        "gen/attributes_nocfg",
        "probe/reconstruction_attributes",
        "probe/accuracy",
        "und/accuracy/count",
        "edit/accuracy/move",
    ):
        assert metric_spec(name).goal == "max"


def test_sampling_official_reaches_each_task_with_its_own_settings(tiny, monkeypatch):
    """eval.options.sampling official: generation and editing each get the official mode with that
    task's recommended settings (editing 0.7 / 512 / 0.8), and the recipe's official keys."""
    from illume_kit.core.recipe import load_recipe

    model, _ = tiny
    resolved = load_recipe(RECIPE, [*OVERRIDES, "eval.options.sampling=official", "eval.options.rewarp=false"])
    calls = []

    def record(task):
        def fake(model, inputs, *args, cfg, seed, **kw):
            calls.append((task, cfg, kw))
            return [{cb.name: torch.zeros(model.tokenizer.grid(64, 64)[cb.name], dtype=torch.long)
                     for cb in model.layout.codebooks} for _ in inputs]  # fmt: skip

        return fake

    monkeypatch.setattr("illume_kit.model.sampler.generate_images", record("generate"))
    monkeypatch.setattr("illume_kit.model.sampler.edit_images", record("edit"))
    evaluate_tasks(model, resolved, ["gen/accuracy", "edit/accuracy"], 3, quiet=True)
    official = {"sampling": "official", "rewarp": False, "repetition_penalty": 1.05}
    assert ("generate", 2.0, {"temperature": 1.0, "top_k": 2048, "top_p": 1.0, **official}) in calls
    assert ("generate", 1.0, {"temperature": 1.0, "top_k": 2048, "top_p": 1.0, **official}) in calls  # nocfg
    assert ("edit", 1.5, {"temperature": 0.7, "top_k": 512, "top_p": 0.8, **official}) in calls
