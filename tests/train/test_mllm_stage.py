"""The ``mllm`` stage set-up: its options are checked first, and it keeps tokenizer outputs on request."""

import pytest
import torch


def test_plain_dict_options_are_checked_before_training():
    """A recipe's stage options are typed when it is loaded; a caller's plain dict is checked the same way."""
    from types import SimpleNamespace

    from pydantic import ValidationError

    from illume_kit.train.mllm_stage import stage_setup

    runner = SimpleNamespace(model=None)
    with pytest.raises(ValidationError, match=r"loss_average\n  Input should be 'token' or 'sample'"):
        stage_setup(runner, SimpleNamespace(name="mllm", options={"loss_average": "tokens"}))
    with pytest.raises(ValidationError, match=r"qa_turn\n  Extra inputs are not permitted"):
        stage_setup(runner, SimpleNamespace(name="mllm", options={"qa_turn": 6}))


def test_mllm_stage_keeps_tokenizer_outputs_unless_told_not_to(tmp_path):
    pytest.importorskip("illume_kit_fsq")
    from types import SimpleNamespace

    from illume_kit.core.recipe import load_recipe
    from illume_kit.data.params import ShapesParams
    from illume_kit.data.shapes import ShapesDataset
    from illume_kit.model.compose import compose
    from illume_kit.model.sequence import EncodeCache
    from illume_kit.train.mllm_stage import stage_setup

    model = compose(load_recipe("recipes/examples/fsq_qwen2_tiny.yaml"))
    ds = ShapesDataset(ShapesParams(image_size=64, num_samples=4, supersample=1))
    items = [ds[i] for i in range(4)]

    def setup(**options):
        stage = SimpleNamespace(
            name="mllm", target="mllm", trainable=None, options={"retrain_text_tokenizer": False, **options}
        )
        runner = SimpleNamespace(
            model=model,
            images=lambda s: items,
            note_trained=lambda texts, sizes: None,
            recipe=SimpleNamespace(train=SimpleNamespace(stages=[stage]), run=SimpleNamespace(seed=0)),
        )
        return stage_setup(runner, stage)

    _, step_fn, _, _ = setup()
    cache = model.encode_cache
    assert isinstance(cache, EncodeCache) and cache.keep_features == (model.image_input != "discrete")
    first = step_fn(model, items, 0)["loss"]
    assert cache.hits == 0 and cache.misses > 0
    again = step_fn(model, items, 0)["loss"]  # the same tasks on the same items: all from the cache
    assert cache.hits == cache.misses and torch.equal(first, again)
    setup(cache_codes=False)
    assert model.encode_cache is None


# a from-scratch backbone, so the first mllm stage fits its text tokenizer on the task texts
RESUMED = [
    "train",
    "recipes/dualvitok_qwen2_tiny.yaml",
    "data.params.num_samples=6",
    "train.stages=[{name: mllm, target: mllm, trainable: [all], steps: 3, batch_size: 2, grad_accum_steps: 2,"
    " lr: 1.0e-3, options: {text_corpus_items: 6, qa_turns: 3, cfg_dropout: 0.3}}]",
]


def test_an_mllm_stage_stopped_and_resumed_ends_bitwise_as_one_run(tmp_path):
    from safetensors.torch import load_file

    from illume_kit.cli.main import main

    def final(out):
        weights = load_file(out / "stages" / "mllm" / "checkpoints" / "step_00000003" / "model.safetensors")
        tokenizer = (out / "checkpoint" / "backbone" / "text_tokenizer" / "tokenizer.json").read_text()
        return weights, tokenizer

    assert main([*RESUMED, f"run.output_dir={tmp_path / 'one'}", "--quiet"]) == 0
    out = tmp_path / "two"
    assert main([*RESUMED, f"run.output_dir={out}", "--quiet", "--until", "1"]) == 0
    assert main([*RESUMED, f"run.output_dir={out}", "--quiet", "--resume"]) == 0
    (one, one_tok), (two, two_tok) = final(tmp_path / "one"), final(out)
    assert one.keys() == two.keys()
    assert [k for k in one if not torch.equal(one[k], two[k])] == []
    assert two_tok == one_tok  # the saved model reads text with the tokenizer its embeddings trained on


def test_max_seq_len_within_every_sequence_trains_the_same_weights_and_a_tight_one_drops(tmp_path):
    from illume_kit.core.recipe import load_recipe
    from illume_kit.train.stages import StageRunner

    def run(out, *options):
        stage = (
            "train.stages=[{name: mllm, target: mllm, trainable: [all], steps: 2, batch_size: 4, lr: 1.0e-3,"
            f" options: {{text_corpus_items: 8{''.join(', ' + o for o in options)}}}}}]"
        )
        over = ["data.params.num_samples=8", f"run.output_dir={tmp_path / out}", stage]
        runner = StageRunner(load_recipe("recipes/dualvitok_qwen2_tiny.yaml", over), quiet=True)
        result = runner.run(resume=False)["mllm"]
        return result, runner.model.state_dict()

    plain, weights = run("plain")
    roomy, same = run("roomy", "max_seq_len: 100000")
    assert roomy["dropped"] == 0.0 and roomy["loss"] == plain["loss"] and "dropped" not in plain
    assert all(torch.equal(same[k], v) for k, v in weights.items())
    # these two steps draw edits (answers from ~125 tokens on) and text-to-image (from ~46): the edits go
    with pytest.warns(UserWarning, match=r"max_seq_len 120: \d+ sample\(s\) dropped"):
        tight, cut = run("tight", "max_seq_len: 120")
    assert tight["dropped"] > 0.0
    assert not all(torch.equal(cut[k], v) for k, v in weights.items())
