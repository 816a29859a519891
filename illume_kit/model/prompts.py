"""Prompt styles: how an exchange is laid out around its prompt and answer (recipe ``model.prompt_style``).

One place decides the text around every sequence, for training (``TaskMixer``) and inference
(``answer``, ``generate_images``, ``edit_images``, the CLI and the eval tasks) alike, so a model is
always prompted the way it was trained:

- ``plain``: ``USER: {prompt}\\nASSISTANT: {answer}<eos>``, the task texts of ``model.tasks``; for
  backbones trained from scratch with their own small BPE;
- ``chat_template``: the backbone tokenizer's own chat template (transformers'
  ``apply_chat_template``), rendered once around placeholder contents to find the text before a user
  turn, between the user and the assistant turn, and after an answer; images and resolution tags sit
  inside the user content, as the ``plain`` task texts place them;
- ``official``: ILLUME+'s released prompts, the Qwen2 chat turns
  ``<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n{prompt}<|im_end|>\\n
  <|im_start|>assistant\\n{answer}<|im_end|>\\n`` with its generation and editing texts (each ending in
  a newline; the resolution tag follows the assistant prefix, where an output image starts).

A style gives the parts of a user turn (``user_turn``), the ids that close an answer (``end_ids``,
labelled), the id that stops decoding (``stop_id``) and the task prompts. Styles other than ``plain``
join adjacent texts before tokenizing, so a turn tokenizes as its whole text would (``plain`` keeps
its pieces apart, as its models were trained).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, get_args

import torch

from illume_kit.core.options import PromptStyleName
from illume_kit.model import tasks
from illume_kit.model.sequence import ASSISTANT_PREFIX, USER_PREFIX, Part, Tag

STYLES: tuple[str, ...] = get_args(PromptStyleName)


class PromptStyleError(ValueError):
    """The backbone's text tokenizer cannot serve the chosen prompt style."""


class PromptStyle:
    """``plain``: today's ``USER:``/``ASSISTANT:`` turns and the ``model.tasks`` texts."""

    name = "plain"
    join_text = False

    def user_turn(self, prompt: Sequence[Part], turn: int) -> list[Part]:
        """The parts of user turn ``turn`` (0 = first) up to where the answer begins."""
        return [USER_PREFIX, *prompt, ASSISTANT_PREFIX]

    def end_ids(self, tokenizer: Any) -> list[int]:
        """Ids closing an answer (labelled: the model learns to end its turn)."""
        return [int(tokenizer.eos_token_id)]

    def stop_id(self, tokenizer: Any) -> int:
        """The id that ends a generated answer."""
        return self.end_ids(tokenizer)[0]

    def und_prompt(self, image: torch.Tensor, question: str) -> list[Part]:
        return tasks.und_prompt(image, question)

    def t2i_prompt(self, caption: str | None, size: tuple[int, int]) -> list[Part]:
        return tasks.t2i_prompt(caption, size)

    def edit_prompt(
        self,
        image: torch.Tensor,
        instruction: str | None,
        size: tuple[int, int] | None = None,
        order: str = "image_first",
    ) -> list[Part]:
        return tasks.edit_prompt(image, instruction, size, order)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


class _TurnStyle(PromptStyle):
    """A style given by texts: ``first`` opens the first user turn, ``next`` a later one, ``close``
    ends the user turn and opens the assistant's, ``end`` closes an answer."""

    join_text = True
    first = next = close = end = ""

    def user_turn(self, prompt: Sequence[Part], turn: int) -> list[Part]:
        return [self.first if turn == 0 else self.next, *prompt, self.close]

    def end_ids(self, tokenizer: Any) -> list[int]:
        return _ids(tokenizer, self.end) if self.end else [int(tokenizer.eos_token_id)]


# ILLUME+'s Qwen2 conversation (``conv_qwen2``) and its inference prompts
# (``generation_eval/models/illume.py``, ``app_hf.py``); checked against tests/fixtures/official/prompts.json
OFFICIAL_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
OFFICIAL_USER = "<|im_start|>user\n"
OFFICIAL_ASSISTANT = "<|im_start|>assistant\n"
OFFICIAL_END = "<|im_end|>\n"
OFFICIAL_CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")


class OfficialStyle(_TurnStyle):
    name = "official"
    first = OFFICIAL_SYSTEM + OFFICIAL_USER
    next = OFFICIAL_USER
    close = OFFICIAL_END + OFFICIAL_ASSISTANT
    end = OFFICIAL_END

    def __init__(self, tokenizer: Any) -> None:
        vocab = tokenizer.get_vocab()
        missing = [t for t in OFFICIAL_CHAT_TOKENS if t not in vocab]
        split = [t for t in OFFICIAL_CHAT_TOKENS if t in vocab and len(_ids(tokenizer, t)) != 1]
        if missing or split:
            raise PromptStyleError(
                f"model.prompt_style 'official' needs {' and '.join(OFFICIAL_CHAT_TOKENS)} as single tokens of the "
                f"backbone's text tokenizer (a Qwen2 tokenizer has them); this one "
                f"{'lacks' if missing else 'splits'} {', '.join(missing or split)}: use prompt_style plain, or a "
                "pretrained backbone whose tokenizer has them"
            )

    def stop_id(self, tokenizer: Any) -> int:
        return _ids(tokenizer, "<|im_end|>")[0]

    def t2i_prompt(self, caption: str | None, size: tuple[int, int]) -> list[Part]:
        if caption is None:
            return [tasks.T2I_UNCOND, Tag(*size), "\n"]
        return [tasks.T2I_PREFIX, Tag(*size), tasks.T2I_CONTENT + caption + "\n"]

    def edit_prompt(
        self,
        image: torch.Tensor,
        instruction: str | None,
        size: tuple[int, int] | None = None,
        order: str = "image_first",
    ) -> list[Part]:
        if order != "image_first":
            raise PromptStyleError(
                "model.prompt_style 'official' puts the source image first: use edit_order image_first"
            )
        return [*tasks.edit_prompt(image, instruction, size, order), "\n"]


# placeholder contents: the chat template is rendered around them, then cut at them
_SLOTS = ("\x00user0\x00", "\x00answer0\x00", "\x00user1\x00", "\x00answer1\x00")


class ChatTemplateStyle(_TurnStyle):
    """The text tokenizer's own chat template; turn texts found by rendering placeholder contents."""

    name = "chat_template"

    def __init__(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise PromptStyleError(
                "model.prompt_style 'chat_template' needs a text tokenizer with a chat template; the backbone's "
                "tokenizer has none (a backbone built from scratch never does): use prompt_style plain, or a "
                "pretrained backbone whose tokenizer_config.json has a chat_template"
            )
        u0, a0, u1, a1 = _SLOTS
        msgs = [
            {"role": "user", "content": u0},
            {"role": "assistant", "content": a0},
            {"role": "user", "content": u1},
            {"role": "assistant", "content": a1},
        ]
        try:
            prompt = tokenizer.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
            full = tokenizer.apply_chat_template(msgs, tokenize=False)
        except Exception as e:  # a template is user code in jinja: any failure is the template's
            raise PromptStyleError(
                f"model.prompt_style 'chat_template': the tokenizer's chat template fails: {e}"
            ) from e
        if not all(s in full for s in _SLOTS) or u0 not in prompt or not full.startswith(prompt.split(u0)[0]):
            raise PromptStyleError(
                "model.prompt_style 'chat_template': the tokenizer's chat template does not render user and "
                "assistant contents as given, so images cannot be placed in it"
            )
        self.first, self.close = prompt.split(u0)
        if not full.split(a0)[0].endswith(self.close):
            raise PromptStyleError(
                "model.prompt_style 'chat_template': the template's generation prompt is not how it writes an "
                "assistant turn, so training and inference would differ"
            )
        # text after an answer: what closes the turn, up to the next turn's opening
        self.end, self.next = _split_end(full.split(a0)[1].split(u1)[0], full.split(a1)[1])

    def stop_id(self, tokenizer: Any) -> int:
        ids = self.end_ids(tokenizer)
        return ids[0]


def _split_end(between: str, tail: str) -> tuple[str, str]:
    """``between`` is the text from the end of an answer to the next user content; ``tail`` the text
    after the last answer. The answer's closing text is their common prefix; the rest opens a turn."""
    n = 0
    while n < min(len(between), len(tail)) and between[n] == tail[n]:
        n += 1
    return between[:n], between[n:]


def prompt_style(name: str, tokenizer: Any) -> PromptStyle:
    """The style called ``name`` for this text tokenizer (``PromptStyleError`` if it cannot serve it)."""
    if name == "plain":
        return PromptStyle()
    if name == "official":
        return OfficialStyle(tokenizer)
    if name == "chat_template":
        return ChatTemplateStyle(tokenizer)
    raise PromptStyleError(f"unknown model.prompt_style {name!r}; styles are {', '.join(STYLES)}")


def style_of(model: Any) -> PromptStyle:
    """The model's prompt style (``plain`` for a model without one)."""
    return getattr(model, "prompt_style", None) or PromptStyle()
