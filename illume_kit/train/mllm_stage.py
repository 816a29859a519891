"""The ``mllm`` training stage: the unified model on the task mix, training the groups the stage names.

Everything here goes through the runner's public API (its model, its training images, whether the
stage's trainer has a checkpoint); the loss and the parameter groups are ``illume_kit.model.objective``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from illume_kit.core.options import MllmOptions
from illume_kit.core.protocols import RetrainsTextTokenizer
from illume_kit.core.schema import Stage
from illume_kit.model.objective import mllm_step_fn, trainable_parameters
from illume_kit.model.sequence import input_encoder_trains
from illume_kit.model.tasks import TaskMixer, task_texts
from illume_kit.train.caches import code_cache
from illume_kit.train.data import first_items
from illume_kit.train.optim import freeze_groups

if TYPE_CHECKING:
    from illume_kit.train.stages import StageRunner


def _keep_items(items: list) -> list:
    return items  # dataset items stay a list of dicts: tasks draw from each item separately


def stage_setup(runner: StageRunner, stage: Stage):
    """What ``illume-kit train`` needs for an ``mllm`` stage: (module, step_fn, data, trainer extras).

    The stage's options are ``illume_kit.core.options.MllmOptions``; ``loss_average`` is explained at
    ``mllm_loss``, ``edit_target`` at ``TaskMixer``, ``cache_codes`` at ``EncodeCache`` (its budget at ``code_cache``), ``max_seq_len`` at
    ``illume_kit.model.sequence.truncate``.

    The text tokenizer of a from-scratch backbone is retrained on the task texts of the recipe's first
    mllm stage whenever that stage is set up, resumed or not: the BPE is a function of those texts
    alone, and the stage's trainer checkpoint holds weights only, so a resumed stage that kept the
    composed model's default tokenizer would feed its embeddings other token ids.
    """
    model = runner.model
    opts = MllmOptions.model_validate(stage.options)  # the recipe's are typed already; a plain dict is checked
    data = runner.images(stage)
    first_mllm = next(s for s in runner.recipe.train.stages if s.target == "mllm").name == stage.name
    # the text tokenizer's corpus is also what the checkpoint records as the words it trained on
    items = first_items(data, opts.text_corpus_items)  # a stream's first records, the same on every rank
    texts = sorted(task_texts(items))
    runner.note_trained(texts, {tuple(it["image"].shape[-2:]) for it in items if hasattr(it.get("image"), "shape")})
    if (
        opts.retrain_text_tokenizer
        and first_mllm
        and isinstance(model.backbone, RetrainsTextTokenizer)
        and not getattr(model.backbone.params, "pretrained", None)
    ):
        model.backbone.retrain_text_tokenizer(texts)
    groups = stage.trainable or ["all"]
    trainable_parameters(model, groups)
    # param_groups' freeze entries apply before the trainer wraps the model, so it never sees them train
    groups_of_lr = [g.model_dump() if hasattr(g, "model_dump") else dict(g) for g in getattr(stage, "param_groups", [])]
    freeze_groups(model.named_parameters(), groups_of_lr)
    trains_encoder = input_encoder_trains(model)
    if trains_encoder and opts.cache_codes and model.image_input != "discrete":
        runner.callback.message(
            f"stage {stage.name!r}: the input encoder trains, so cache_codes keeps the tokenizer's codes only; "
            "its features are computed every step"
        )
    keep_features = model.image_input != "discrete" and not trains_encoder
    model.encode_cache = None
    if opts.cache_codes:
        cache, notice = code_cache(model, data, keep_features, opts.cache_codes_mb, f"stage {stage.name!r}")
        if notice:
            runner.callback.message(notice)
        model.encode_cache = cache
    mixer = TaskMixer(
        opts.tasks,
        opts.cfg_dropout,
        seed=runner.recipe.run.seed,
        qa_turns=opts.qa_turns,
        edit_order=getattr(model, "edit_order", "image_first"),
        edit_target=opts.edit_target,
        style=getattr(model, "prompt_style", None),
    )
    # groups are applied here through requires_grad; the trainer then takes whatever requires grad
    step_fn = mllm_step_fn(mixer, opts.loss_average, opts.max_seq_len)
    return model, step_fn, data, {"collate_fn": _keep_items, "config": {"trainable": []}}
