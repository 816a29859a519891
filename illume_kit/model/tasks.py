"""MLLM training samples from dataset items: understanding, text-to-image, editing, and their mix.

The prompt templates follow ILLUME+ (reference §3.3, ``data_utils.py::ROLE_TEMPLATES``) and are the
single source for both training and the sampler, so an inference prompt is always one the model
was trained on:

- understanding: ``<image>\\n{question}`` -> ``{answer}``;
- text-to-image: ``Generate an image of {tag}, the content of image is {caption}`` -> image tokens;
  with probability ``cfg_dropout`` (0.1 in the reference) the prompt is the unconditional
  ``Generate a random image of {tag}``: that is what classifier-free guidance subtracts;
- editing: ``{tag}<image>\\nPlease edit the image according to the instruction: {instruction}`` ->
  target image tokens; with probability ``cfg_dropout`` the instruction is dropped and the sample
  becomes the reference's reconstruction sample (``Reconstruct the image according to the given
  image``, target = source), which is the unconditional branch for editing guidance.

Dataset items are dicts as the shapes world serves them: ``image`` (3, H, W), ``caption``, ``qa``
[(question, answer)], ``edit`` {instruction, image}. Every random choice for a sample (its task,
the cfg dropout, the questions it asks) comes from a stream of its own keyed by (seed, step, its
position among the step's samples), so a resumed run draws the same, and so does the same global
batch split over other micro-batches or processes.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, get_args

import torch

from illume_kit.core.options import EditTarget, Task
from illume_kit.core.schema import ModelOptions
from illume_kit.model.sequence import ASSISTANT_PREFIX, USER_PREFIX, Part, Sample, Tag, TargetImage

TASKS = get_args(Task)
T2I_PREFIX = "Generate an image of "
T2I_CONTENT = ", the content of image is "
T2I_UNCOND = "Generate a random image of "
EDIT_INSTRUCTION = "\nPlease edit the image according to the instruction: "
EDIT_UNCOND = "\nReconstruct the image according to the given image"
EDIT_TARGETS = get_args(EditTarget)  # the mllm stage option edit_target
EDIT_ORDERS = get_args(ModelOptions.model_fields["edit_order"].annotation)  # the recipe schema's choices


def _size(image: torch.Tensor) -> tuple[int, int]:
    return int(image.shape[-2]), int(image.shape[-1])


def und_prompt(image: torch.Tensor, question: str) -> list[Part]:
    return [image, "\n" + question]


def t2i_prompt(caption: str | None, size: tuple[int, int]) -> list[Part]:
    """The text-to-image prompt; ``caption=None`` gives the unconditional one."""
    if caption is None:
        return [T2I_UNCOND, Tag(*size)]
    return [T2I_PREFIX, Tag(*size), T2I_CONTENT + caption]


def check_edit_order(order: str) -> None:
    if order not in EDIT_ORDERS:
        raise ValueError(f"edit order must be one of {', '.join(EDIT_ORDERS)}, got {order!r}")


def edit_prompt(
    image: torch.Tensor, instruction: str | None, size: tuple[int, int] | None = None, order: str = "image_first"
) -> list[Part]:
    """The editing prompt; ``instruction=None`` gives the unconditional (reconstruction) one.

    ``order`` (recipe ``model.edit_order``): ``image_first`` is ILLUME+'s ``{tag}<image>\\n{instruction}``;
    ``instruction_first`` puts the instruction before the image, so the source image always sits the
    same number of tokens before the target, whatever the instruction's length.
    """
    check_edit_order(order)
    tag = Tag(*(size or _size(image)))
    text = EDIT_UNCOND if instruction is None else EDIT_INSTRUCTION + instruction
    if order == "image_first":
        return [tag, image, text]
    return [text.lstrip("\n") + "\n", tag, image]


def und_sample(
    image: torch.Tensor, question: str, answer: str, more: Sequence[tuple[str, str]] = (), style: Any = None
) -> Sample:
    """``image + question -> answer``; ``more`` (question, answer) pairs follow as further turns.
    ``style``: a ``illume_kit.model.prompts.PromptStyle`` giving the task texts (None: plain)."""
    prompt = style.und_prompt(image, question) if style is not None else und_prompt(image, question)
    return Sample(prompt, [answer], task="und", turns=[([q], [a]) for q, a in more])


def t2i_sample(image: torch.Tensor, caption: str | None, style: Any = None) -> Sample:
    size = _size(image)
    prompt = style.t2i_prompt(caption, size) if style is not None else t2i_prompt(caption, size)
    return Sample(prompt, [TargetImage(image)], task="t2i")


def edit_sample(
    source: torch.Tensor,
    instruction: str | None,
    target: torch.Tensor,
    order: str = "image_first",
    copy_unchanged: bool = False,
    style: Any = None,
) -> Sample:
    """``copy_unchanged``: the target's tokens over unchanged pixels take the source's codes
    (``illume_kit.model.sequence.copy_unchanged``), so the untouched part of an edit is a copy."""
    out = TargetImage(target, copy_from=source if copy_unchanged else None)
    prompt = (
        style.edit_prompt(source, instruction, order=order)
        if style is not None
        else edit_prompt(source, instruction, order=order)
    )
    return Sample(prompt, [out], task="edit")


def uncollate(batch: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A batch from ``illume_kit.data.batching.collate`` (or a list of items) -> list of items."""
    if not isinstance(batch, Mapping):
        return [dict(b) for b in batch]
    n = len(batch["image"])
    cols = {k: uncollate(v) if isinstance(v, Mapping) else v for k, v in batch.items()}
    return [{k: v[i] for k, v in cols.items()} for i in range(n)]


class TaskMixer:
    """Turns dataset items into training ``Sample``s, one task per item drawn with ``weights``.

    ``qa_turns`` > 1 makes an understanding sample a multi-turn conversation about its image (up to
    that many of the item's question/answer pairs, in random order), as LLaVA-style instruction data
    is: a one-word answer is otherwise ~1% of a batch's labelled tokens next to image targets.

    ``edit_target``: ``encoded`` (ILLUME+) trains an edit on the tokenizer's codes of the edited
    image; ``copy_unchanged`` replaces those of its unchanged pixels by the source's
    (``edit_sample``), so that what the edit leaves alone is an exact copy.

    A task an item cannot serve (no ``qa``, ``caption`` or ``edit``) is not drawn for it.

    ``style``: the model's prompt style (``illume_kit.model.prompts``; None: plain) gives the task texts.
    """

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        cfg_dropout: float = 0.1,
        edit_uncond_target: str = "source",
        seed: int = 0,
        qa_turns: int = 1,
        edit_order: str = "image_first",
        edit_target: str = "encoded",
        style: Any = None,
    ) -> None:
        weights = dict(weights) if weights is not None else {t: 1.0 for t in TASKS}
        unknown = set(weights) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown tasks {sorted(unknown)}; tasks are {', '.join(TASKS)}")
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"task weights must be >= 0 with a positive sum, got {weights}")
        if not 0.0 <= cfg_dropout <= 1.0:
            raise ValueError(f"cfg_dropout must be in [0, 1], got {cfg_dropout}")
        if edit_uncond_target not in ("source", "target"):
            raise ValueError("edit_uncond_target must be 'source' (reconstruction, as ILLUME+) or 'target'")
        if qa_turns < 1:
            raise ValueError(f"qa_turns must be >= 1, got {qa_turns}")
        self.weights, self.cfg_dropout, self.edit_uncond_target, self.seed = (
            weights,
            cfg_dropout,
            edit_uncond_target,
            seed,
        )
        self.qa_turns = qa_turns
        check_edit_order(edit_order)  # now, not mid-run
        self.edit_order = edit_order
        if edit_target not in EDIT_TARGETS:
            raise ValueError(f"edit_target must be one of {', '.join(EDIT_TARGETS)}, got {edit_target!r}")
        self.edit_target = edit_target
        self.style = style

    def _tasks_for(self, item: Mapping[str, Any]) -> list[str]:
        ok = {"und": bool(item.get("qa")), "t2i": bool(item.get("caption")), "edit": item.get("edit") is not None}
        return [t for t in TASKS if ok[t] and self.weights.get(t, 0) > 0]

    def sample(self, item: Mapping[str, Any], rng: random.Random, task: str | None = None) -> Sample:
        tasks = self._tasks_for(item)
        if task is None:
            if not tasks:
                raise ValueError(f"item (keys {sorted(item)}) serves none of the weighted tasks {self.weights}")
            task = rng.choices(tasks, weights=[self.weights[t] for t in tasks])[0]
        elif task not in tasks and task in TASKS:
            raise ValueError(f"item (keys {sorted(item)}) cannot serve task {task!r}")
        image = item["image"]
        drop = rng.random() < self.cfg_dropout
        if task == "und":
            qa = list(item["qa"])
            if self.qa_turns == 1:
                q, a = rng.choice(qa)
                return und_sample(image, q, a, style=self.style)
            picked = rng.sample(qa, min(self.qa_turns, len(qa)))
            return und_sample(image, *picked[0], more=picked[1:], style=self.style)
        if task == "t2i":
            return t2i_sample(image, None if drop else item["caption"], style=self.style)
        if task == "edit":
            edit = item["edit"]
            if drop:
                return edit_sample(
                    image,
                    None,
                    image if self.edit_uncond_target == "source" else edit["image"],
                    self.edit_order,
                    style=self.style,
                )
            return edit_sample(
                image,
                edit["instruction"],
                edit["image"],
                self.edit_order,
                copy_unchanged=self.edit_target == "copy_unchanged",
                style=self.style,
            )
        raise ValueError(f"unknown task {task!r}; tasks are {', '.join(TASKS)}")

    def rng(self, step: int, position: int) -> random.Random:
        """The random stream of the sample at ``position`` among the samples of optimizer step ``step``."""
        return random.Random(f"{self.seed}/{int(step)}/{int(position)}")

    def samples(
        self, batch: Mapping[str, Any] | Sequence[Mapping[str, Any]], step: int = 0, offset: int = 0
    ) -> list[Sample]:
        """Samples for a (collated) batch of optimizer step ``step`` whose first item sits at ``offset``
        among the step's samples (over micro-batches and processes; the trainer's ``StepIndex.offset``).

        The i-th item draws from ``rng(step, offset + i)`` alone: resuming redraws the same samples,
        and one batch of 8 draws what two batches of 4 at offsets 0 and 4 draw.
        """
        return [self.sample(item, self.rng(step, offset + i)) for i, item in enumerate(uncollate(batch))]


def task_texts(items: Iterable[Mapping[str, Any]]) -> set[str]:
    """Every text string the tasks can put into a sequence: train the text BPE tokenizer on these."""
    texts = {USER_PREFIX, ASSISTANT_PREFIX, T2I_PREFIX, T2I_UNCOND, EDIT_UNCOND}
    for item in items:
        if item.get("caption"):
            texts.add(T2I_CONTENT + item["caption"])
        for q, a in item.get("qa") or ():
            texts.update(("\n" + q, a))
        if item.get("edit") is not None:
            texts.add(EDIT_INSTRUCTION + item["edit"]["instruction"])
    return texts
