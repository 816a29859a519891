"""An output folder belongs to one recipe: no stale weights or done-markers from another run are reused."""

from illume_kit.cli.main import main

RECIPE = "recipes/tokenizers/vqgan_tiny.yaml"
SMALL = [
    "train.stages.0.steps=2",
    "train.stages.0.batch_size=2",
    "train.stages.0.warmup_steps=0",
    "data.params.num_samples=8",
    "data.params.supersample=1",
]


def train(out, overrides=(), flags=()):
    return main(["train", RECIPE, *SMALL, f"run.output_dir={out}", *overrides, "--quiet", *flags])


def test_another_recipe_never_reuses_a_run(tmp_path, capsys):
    from illume_kit.model.checkpoint import load_checkpoint

    out = tmp_path / "run"
    assert train(out) == 0
    stride16 = "tokenizer.params.channel_mult=[1,2,2]"  # another architecture in the same folder
    capsys.readouterr()
    for flags in (["--resume"], ["--stage", "tokenizer"]):
        assert train(out, [stride16], flags) == 2
        err = capsys.readouterr().err
        assert "different recipe" in err and "tokenizer.params.channel_mult" in err and "run.output_dir" in err
    assert not list(tmp_path.glob("run.replaced-*"))  # refusing touched nothing
    # a plain run starts over: the old run is moved aside, the new checkpoint is the new architecture
    assert train(out, [stride16]) == 0
    moved = list(tmp_path.glob("run.replaced-*"))
    assert len(moved) == 1 and (moved[0] / "checkpoint" / "illume_kit.json").is_file()
    model, _ = load_checkpoint(out / "checkpoint")
    assert model.tokenizer.grid(64, 64) == {"pixel": (4, 4)}
    old, _ = load_checkpoint(moved[0] / "checkpoint")
    assert old.tokenizer.grid(64, 64) == {"pixel": (8, 8)}
    # what may change between attempts: evaluation settings
    assert train(out, [stride16, "eval.num_samples=3"], ["--resume"]) == 0
