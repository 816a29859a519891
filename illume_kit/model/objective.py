"""The MLLM training objective and the parameter groups each training stage trains.

The loss is by default the reference's: plain next-token cross-entropy over every labelled token
(answer text, resolution tags, structure and image tokens alike), no per-modality weighting
(reference §3.3). In a batch mixing tasks an image sample then outweighs a one-word answer ~50 to 1,
so ``average="sample"`` (stage option ``loss_average: sample``) takes each sample's mean CE first and
then the mean over samples, as InternVL 2.5 weighs its data ("sample averaging"): every sample,
short answer or long image, counts the same.
``und`` and ``gen`` report the same CE restricted to understanding samples and to generation
samples (text-to-image and editing) for logging; they are present only when the batch has such
samples. The tokenizer is frozen and runs without gradients: its features (or, with
``model.input_encoder: separate``, the input encoder's) feed the projectors, its codes are the targets.
With ``max_seq_len`` each sequence keeps its first that many tokens (``assemble``'s ``max_len``).

Stages pick what trains with ``trainable_parameters(model, groups)``:

- ``projectors``: the per-codebook input MLPs;
- ``new_embeddings``: only the rows the vocab layout added (structure tokens, tags, codes) of the
  input embedding and LM head. As the reference does (``unfreeze_vision_embedding``), the whole
  matrices require grad and a gradient hook zeroes the text rows. Note that decoupled weight decay
  would still shrink the text rows: use ``weight_decay=0`` in such a stage (the recipe default);
- ``backbone``: the whole language model (embeddings included, unmasked);
- ``input_encoder``: the LLM's own copy of the tokenizer's encoders (``model.input_encoder:
  separate``; ILLUME+ stages 2 and 3 train this vision tower), through the features it gives the
  projectors. ``all`` leaves it out: name it. A stage's ``param_groups`` give it its own lr, or train
  only its blocks from layer N (a later ``{match: input_encoder, freeze: true}`` keeps the rest frozen);
- ``all``: backbone + projectors. The tokenizer and the detokenizer never train here.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any, get_args

import torch
import torch.nn.functional as F
from torch import nn

from illume_kit.core.options import LossAverage
from illume_kit.model.sequence import IGNORE, Batch, Sample, assemble

GROUPS = ("projectors", "new_embeddings", "backbone", "input_encoder", "all")
GEN_TASKS = ("t2i", "edit")


AVERAGES = get_args(LossAverage)


def mllm_loss(
    model: Any, batch: Sequence[Sample] | Batch, average: str = "token", max_seq_len: int | None = None
) -> dict[str, torch.Tensor]:
    """Next-token CE over the labels of an assembled batch (or of samples, assembled here), averaged
    over all labelled tokens (``token``) or per sample first (``sample``).

    ``max_seq_len`` cuts each sequence of samples assembled here to that many tokens (``assemble``'s
    ``max_len``); samples it leaves without a labelled token are dropped, and the result then holds
    ``dropped``, the share of the batch's samples dropped (logged, so a limit that bites shows).
    """
    if average not in AVERAGES:
        raise ValueError(f"loss average must be one of {', '.join(AVERAGES)}, got {average!r}")
    if not isinstance(batch, Batch):
        batch = assemble(model, batch, padding_side="right", max_len=max_seq_len)
    out = model.backbone(
        batch.inputs_embeds, attention_mask=batch.attention_mask, position_ids=batch.position_ids, use_cache=False
    )
    labels = batch.labels[:, 1:]
    keep = labels != IGNORE
    if not keep.any():
        raise ValueError("the batch has no labelled tokens (every sample needs an answer)")
    logits = out.logits[:, :-1][keep]  # CE only where there is a label
    ce = F.cross_entropy(logits.float(), labels[keep], reduction="none")
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)[keep]
    # loss_weight: what the loss averages over, so accumulated micro-batches average over the whole step
    if average == "token":
        result = {"loss": ce.mean(), "loss_weight": keep.sum()}
    else:
        per_row = torch.zeros(labels.shape[0], device=ce.device).index_add_(0, rows, ce)
        counts = keep.sum(1)
        result = {"loss": (per_row[counts > 0] / counts[counts > 0]).mean(), "loss_weight": (counts > 0).sum()}
    for name, tasks in (("und", ("und",)), ("gen", GEN_TASKS)):
        sel = torch.tensor([t in tasks for t in batch.tasks], device=labels.device)[rows]
        if sel.any():
            result[name] = ce[sel].detach().mean()
    if max_seq_len is not None:
        result["dropped"] = torch.tensor(batch.dropped / (batch.dropped + len(batch.tasks)))
    return result


def mllm_step_fn(mixer: Any, average: str = "token", max_seq_len: int | None = None):
    """A trainer ``step_fn(model, batch, step)``: dataset batch -> task samples -> ``mllm_loss``.

    A sample draws its task by its place among the optimizer step's samples: the trainer's step
    carries the micro-batch's first place as ``step.offset`` (0 for a plain int), so a global batch
    draws the same tasks however it is split into micro-batches and processes.
    Samples ``max_seq_len`` drops are counted over the stage, with a warning at the 1st, 2nd, 4th, 8th...
    """
    dropped = 0

    def step_fn(model: Any, batch: Any, step: int) -> dict[str, torch.Tensor]:
        nonlocal dropped
        samples = mixer.samples(batch, int(step), getattr(step, "offset", 0))
        out = mllm_loss(model, samples, average, max_seq_len=max_seq_len)
        if max_seq_len is not None and float(out["dropped"]) > 0:
            before = dropped
            dropped += round(float(out["dropped"]) * len(samples))
            if dropped.bit_length() > before.bit_length():  # a new power of two reached
                warnings.warn(
                    f"mllm option max_seq_len {max_seq_len}: {dropped} sample(s) dropped so far in this stage, "
                    "their prompt alone filling the limit (nothing of their answer would be trained; the log's "
                    "`dropped` is the share per batch); raise max_seq_len to keep them",
                    stacklevel=2,
                )
        return out

    return step_fn


# ---------------------------------------------------------------- trainable groups


def _embedding_weights(backbone: Any) -> list[nn.Parameter]:
    hf = backbone.model
    out = [hf.get_input_embeddings().weight]
    head = hf.get_output_embeddings()
    if head is not None and head.weight is not out[0]:
        out.append(head.weight)
    return out


def _clear_row_masks(model: Any) -> None:
    for h in getattr(model, "_row_mask_hooks", []):
        h.remove()
    model._row_mask_hooks = []
    for p in model.parameters():
        if hasattr(p, "_illume_frozen_rows"):
            del p._illume_frozen_rows


def _mask_old_rows(model: Any, weight: nn.Parameter, first_new: int) -> None:
    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:first_new] = 0
        return grad

    weight.requires_grad_(True)
    model._row_mask_hooks.append(weight.register_hook(hook))
    # a sharded (FSDP) copy of the weight carries no tensor hook: the trainer masks its gradient by this mark
    weight._illume_frozen_rows = first_new


def trainable_parameters(model: Any, groups: Iterable[str]) -> list[nn.Parameter]:
    """Freeze everything, then unfreeze ``groups``; return the trainable parameters (each once).

    Calling it again for the next stage replaces the previous choice (row-mask hooks included).
    """
    groups = list(groups)
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups:
        raise ValueError(
            f"unknown trainable groups {unknown}; choose from {', '.join(GROUPS)}"
            if unknown
            else f"no trainable groups given; choose from {', '.join(GROUPS)}"
        )
    if "input_encoder" in groups and getattr(model, "input_encoder", None) is None:
        raise ValueError(
            "trainable group input_encoder needs model.input_encoder: separate (the LLM's own copy of the "
            "tokenizer's encoders); with shared the features come from the frozen tokenizer"
        )
    if "input_encoder" in groups and getattr(model, "image_input", "continuous") == "discrete":
        raise ValueError(
            "trainable group input_encoder: with model.image_input discrete the LLM reads code ids, not the input "
            "encoder's features, so it would not train; drop the group or use image_input continuous"
        )
    _clear_row_masks(model)
    for p in model.parameters():
        p.requires_grad_(False)
    chosen: list[nn.Parameter] = []
    if "input_encoder" in groups:
        chosen += list(model.input_encoder.parameters())
    if "all" in groups or "projectors" in groups:
        chosen += list(model.projectors.parameters())
    if "all" in groups or "backbone" in groups:
        chosen += list(model.backbone.parameters())
    elif "new_embeddings" in groups:
        for w in _embedding_weights(model.backbone):
            chosen.append(w)
            _mask_old_rows(model, w, model.layout.text_vocab_size)
    seen: set[int] = set()
    unique = []
    for p in chosen:
        if id(p) not in seen:
            seen.add(id(p))
            p.requires_grad_(True)
            unique.append(p)
    return unique
