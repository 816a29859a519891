"""The ``mllm`` training stage: the unified model on the task mix, training the groups the stage names.

Everything here goes through the runner's public API (its model, its training images, whether the
stage's trainer has a checkpoint); the loss and the parameter groups are ``illume_kit.model.objective``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from illume_kit.core.schema import Stage
from illume_kit.model.objective import AVERAGES, mllm_step_fn, trainable_parameters
from illume_kit.model.sequence import EncodeCache
from illume_kit.model.tasks import TaskMixer, task_texts

if TYPE_CHECKING:
    from illume_kit.train.stages import StageRunner


def _keep_items(items: list) -> list:
    return items  # dataset items stay a list of dicts: tasks draw from each item separately


def stage_setup(runner: StageRunner, stage: Stage):
    """What ``illume-kit train`` needs for an ``mllm`` stage: (module, step_fn, data, trainer extras).

    Stage options: ``tasks`` (task -> weight, default all), ``cfg_dropout`` (default 0.1), ``qa_turns``
    (question/answer pairs per understanding sample, as a multi-turn conversation; default 1),
    ``loss_average`` (``token``, the reference's, or ``sample``; see ``mllm_loss``), ``cache_codes``
    (default true: keep each image's tokenizer output for the rest of the run, ``EncodeCache``),
    ``edit_target`` (``encoded``, the reference's, or ``copy_unchanged``: see ``TaskMixer``),
    ``retrain_text_tokenizer`` (default true for a from-scratch backbone: a byte-level BPE on the task
    texts, done once, at the start of the recipe's first mllm stage).
    """
    model = runner.model
    opts = dict(stage.options)
    valid = ("tasks", "cfg_dropout", "qa_turns", "retrain_text_tokenizer", "image_size", "text_corpus_items",
             "cache_data", "loss_average", "cache_codes", "edit_target")
    unknown = set(opts) - set(valid)
    if unknown:
        raise ValueError(f"stage {stage.name!r}: unknown options {sorted(unknown)} (valid: {', '.join(valid)})")
    average = str(opts.get("loss_average", "token"))
    if average not in AVERAGES:
        raise ValueError(f"stage {stage.name!r}: options.loss_average must be one of {', '.join(AVERAGES)}, "
                         f"got {average!r}")
    data = runner.images(stage)
    first_mllm = next(s for s in runner.recipe.train.stages if s.target == "mllm").name == stage.name
    started = runner.stage_started(stage)
    if (opts.get("retrain_text_tokenizer", True) and first_mllm and not started
            and not getattr(model.backbone.params, "pretrained", None)):
        n = min(len(data), int(opts.get("text_corpus_items", 400)))
        model.backbone.retrain_text_tokenizer(sorted(task_texts(data[i] for i in range(n))))
    groups = stage.trainable or ["all"]
    trainable_parameters(model, groups)
    model.encode_cache = (EncodeCache(keep_features=model.image_input != "discrete")
                          if opts.get("cache_codes", True) else None)
    mixer = TaskMixer(opts.get("tasks"), float(opts.get("cfg_dropout", 0.1)), seed=runner.recipe.run.seed,
                      qa_turns=int(opts.get("qa_turns", 1)), edit_order=getattr(model, "edit_order", "image_first"),
                      edit_target=str(opts.get("edit_target", "encoded")))
    # groups are applied here through requires_grad; the trainer then takes whatever requires grad
    return model, mllm_step_fn(mixer, average), data, {"collate_fn": _keep_items, "config": {"trainable": []}}
