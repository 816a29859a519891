"""The ``mllm`` training stage: the unified model on the task mix, training the groups the stage names.

Everything here goes through the runner's public API (its model, its training images, whether the
stage's trainer has a checkpoint); the loss and the parameter groups are ``illume_kit.model.objective``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from illume_kit.core.options import TASKS, MllmOptions
from illume_kit.core.protocols import RetrainsTextTokenizer
from illume_kit.core.schema import Stage
from illume_kit.data.mixture import served_tasks
from illume_kit.model.code_store import CodeStore
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


def _count(n: int | None, first: bool) -> str:
    if n is None:
        return "streamed"
    return f"{n:,} items" if first else f"{n:,}"


def task_report(
    stage: str, data: Any, weights: Mapping[str, float], name: str, items: Sequence[Mapping[str, Any]] = ()
) -> tuple[str, list[str]]:
    """(the line saying which tasks the stage trains from which data, warnings for weighted tasks no
    source serves). ValueError when no weighted task is served.

    The sources come from the dataset (``ServesTasks``, or its task kind); a dataset that says neither
    is judged by ``items`` (the first ones, which the stage reads anyway)."""
    sources = served_tasks(data, name)
    if not sources:
        probe = {
            "und": sum(bool(it.get("qa")) for it in items),
            "t2i": sum(bool(it.get("caption")) for it in items),
            "edit": sum(it.get("edit") is not None for it in items),
        }
        sources = {name: {t: k for t, k in probe.items() if k}}
        judged = f" (by its first {len(items)} items)"
    else:
        judged = ""
    weighted = [t for t in TASKS if weights.get(t, 0) > 0]
    trains, unserved, first = [], [], True
    for task in weighted:
        servers = [(src, counts[task]) for src, counts in sources.items() if task in counts and counts[task] != 0]
        if not servers:
            unserved.append(task)
            continue
        parts = []
        for src, n in servers:
            parts.append(f"{src} ({_count(n, first)})")
            first = False
        trains.append(f"{task} from {' + '.join(parts)}")
    data_names = ", ".join(sources)
    shown = ", ".join(f"{t} {weights[t]:g}" for t in weighted)
    if not trains:
        raise ValueError(
            f"stage {stage!r}: no weighted task ({shown}) is served by its data ({data_names}{judged}): "
            "und needs conversations (qa), t2i captions, edit edit pairs; set options.tasks or the data"
        )
    notes = [
        f"stage {stage!r}: task {task} is weighted {weights[task]:g} but no item of {data_names} serves it, "
        f"so it is not trained (set options.tasks.{task}: 0, or add data that serves it)"
        for task in unserved
    ]
    return f"stage {stage!r}: trains {', '.join(trains)}{judged}; weights {shown}", notes


def report_tasks(runner: StageRunner, stage: Stage, data: Any) -> None:
    """Say which tasks the stage trains from which data (``task_report``): one line, a warning per
    weighted task no data serves; ValueError when none is served."""
    opts = MllmOptions.model_validate(stage.options)
    rc = runner.resolved.components.get("data")
    items: list = []
    if not served_tasks(data, "data") and hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        items = [data[i] for i in range(min(len(data), opts.text_corpus_items))]
    line, notes = task_report(stage.name, data, opts.tasks, rc.spec.name if rc else "data", items)
    runner.callback.message(line)
    for note in notes:
        warnings.warn(note, stacklevel=2)


def stage_setup(runner: StageRunner, stage: Stage):
    """What ``illume-kit train`` needs for an ``mllm`` stage: (module, step_fn, data, trainer extras).

    The stage's options are ``illume_kit.core.options.MllmOptions``; ``loss_average`` is explained at
    ``mllm_loss``, ``edit_target`` at ``TaskMixer``, ``cache_codes`` at ``EncodeCache`` (its budget at ``code_cache``), ``max_seq_len`` at
    ``illume_kit.model.sequence.truncate``, ``codes`` at ``open_codes``.

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
    model.encode_cache = model.code_store = None
    store = open_codes(runner, stage, opts.codes, keep_features) if opts.codes else None
    if opts.cache_codes:
        cache, notice = code_cache(model, data, keep_features, opts.cache_codes_mb, f"stage {stage.name!r}")
        if notice:
            runner.callback.message(notice)
        model.encode_cache = cache
    model.code_store = store
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
    if model.code_store is not None:
        step_fn = _counting_store(runner, stage, step_fn, model.code_store)
    return model, step_fn, data, {"collate_fn": _keep_items, "config": {"trainable": []}}


def open_codes(runner: StageRunner, stage: Stage, folder: str, keep_features: bool) -> CodeStore:
    """The stage option ``codes``: the store at ``folder``, checked against the model's weights
    (``CodeStore.check``: codes of another tokenizer are refused), with a line saying what it holds."""
    store = CodeStore(folder)
    store.check(runner.model, features=keep_features)
    m = store.manifest
    held = f"{len(store)} images" + (f" with {store.features} features" if store.features else " (codes only)")
    note = ""
    if keep_features and not store.features:
        note = "; the model reads continuous features, which the store lacks, so every image is encoded as usual"
    elif not m.get("complete"):
        note = "; the store is incomplete (its encode did not finish): the images it lacks are encoded as usual"
    runner.callback.message(
        f"stage {stage.name!r}: codes from {folder}: {held} of {m.get('tokenizer', {}).get('name')!r} "
        f"(weights sha256 {store.tokenizer_sha256[:12]}){note}"
    )
    return store


def _counting_store(runner: StageRunner, stage: Stage, step_fn, store: CodeStore):
    """``step_fn`` that says, after the first step it runs and after the stage's last, how many images came
    from the store and how many it lacked (encoded on the fly)."""
    said: list[int] = []
    last = int(getattr(stage, "steps", 0) or 0)
    micros = int(getattr(stage, "grad_accum_steps", 1) or 1)

    def step(model, batch, s):
        out = step_fn(model, batch, s)
        n = int(s) + 1
        if getattr(s, "micro", 0) == micros - 1 and (not said or n == last) and n not in said:
            said.append(n)
            runner.callback.message(
                f"stage {stage.name!r} step {n}: {store.hits} images read from codes {store.folder}, "
                f"{store.misses} not in it (encoded on the fly)"
            )
        return out

    return step
