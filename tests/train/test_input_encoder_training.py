"""An mllm stage that trains the LLM's own vision tower (group ``input_encoder``, ``model.input_encoder:
separate``), with per-group learning rates and ``freeze`` for the blocks below a layer."""

import torch

from illume_kit.core.recipe import load_recipe
from illume_kit.train.stages import StageRunner

RECIPE = "recipes/dualvitok_qwen2_tiny.yaml"


def train(tmp_path, param_groups: str):
    resolved = load_recipe(
        RECIPE,
        [
            "model.input_encoder=separate",
            "data.params.num_samples=8",
            f"run.output_dir={tmp_path}",
            "train.stages=[{name: mllm, target: mllm, trainable: [all, input_encoder], steps: 2, batch_size: 2,"
            f" lr: 1.0e-3, weight_decay: 0.1, param_groups: {param_groups},"
            " options: {text_corpus_items: 8, tasks: {und: 1.0}}}]",
        ],
    )
    runner = StageRunner(resolved, quiet=True)
    before = {k: v.clone() for k, v in runner.model.state_dict().items()}
    runner.run(resume=False)
    return runner.model, before


def changed(model, before, prefix):
    after = model.state_dict()
    keys = [k for k in after if k.startswith(prefix) and after[k].is_floating_point()]
    assert keys, prefix
    return {k: not torch.equal(after[k], before[k]) for k in keys}


def test_vit_at_lr_zero_stays_bitwise_while_the_backbone_and_pixel_encoder_move(tmp_path):
    model, before = train(tmp_path, "[{match: input_encoder.semantic, lr: 0}]")
    assert not any(changed(model, before, "input_encoder.semantic.").values())
    assert any(changed(model, before, "backbone.model.model.layers.").values())
    assert any(changed(model, before, "input_encoder.pixel.").values())  # the rest of the tower trains at lr
    assert not any(changed(model, before, "tokenizer.").values())  # the output tokenizer stays frozen


def test_blocks_from_a_layer_train_and_a_frozen_group_keeps_the_rest_without_gradients(tmp_path):
    groups = "[{match: input_encoder.semantic.blocks, from_layer: 1, lr: 2.0e-3}, {match: input_encoder, freeze: true}]"
    model, before = train(tmp_path, groups)
    moved = changed(model, before, "input_encoder.")
    trains = {k for k in moved if k.startswith("input_encoder.semantic.blocks.") and k.split(".")[3] != "0"}
    assert trains and all(moved[k] for k in trains if k.endswith("weight"))
    assert not any(v for k, v in moved.items() if k not in trains)
    params = dict(model.named_parameters())
    assert all(params[k].requires_grad for k in trains)
    assert not any(params[k].requires_grad for k in moved if k not in trains)
    assert not any(changed(model, before, "tokenizer.").values())
