"""The lmms-eval model ``illume_kit``: benchmarks of lmms-eval on an illume-kit checkpoint.

``lmms-eval --model illume_kit --model_args checkpoint=DIR --tasks mme,...`` loads the checkpoint once
(``illume_kit.model.checkpoint.load_checkpoint``) and answers through the model's understanding path,
the one ``illume-kit understand`` and the ``und`` eval task use: the prompt is the model's prompt
style (``style_of(model).und_prompt``: the image, a newline, the question), answers are decoded by the
structured sampler (text tokens only, stopping at the style's end of turn).

lmms-eval finds the model through the ``lmms_eval.models`` entry point that pyproject.toml declares
(``manifest``); ``pip install 'illume-kit[lmms]'`` installs both.

Requests (lmms-eval's ``Instance.args``):

- ``generate_until`` ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)``: greedy unless
  ``temperature`` > 0 (then ``top_p``), at most ``max_new_tokens`` (default the ``max_new_tokens``
  model arg), the text cut before the first ``until`` string;
- ``loglikelihood`` ``(context, continuation, doc_to_visual, doc_id, task, split)``: the continuation
  is the assistant's answer after the context's user turn; its token log-probs are read from one
  forward over the text vocabulary (the answers the sampler can write), and ``is_greedy`` says whether
  greedy decoding would write exactly those tokens. What the first number is comes from the ``score``
  model arg (lmms-eval's own scorers disagree, see ``SCORES``).

Images (PIL) are sized as ``illume-kit understand`` sizes them: ``preprocess plain`` center-crops to
the aspect of ``image_size`` (default the recipe's ``data.params.image_size``) and resizes;
``preprocess official`` keeps the image's aspect within the recipe's ``eval.options`` pixel bounds.
A context with as many ``<image>`` placeholders as images gets each image in its place; otherwise the
images come first, as the released ILLUME+ adapter puts them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from illume_kit.core.extras import require
from illume_kit.data.images import fit_image

_api = require("lmms_eval.api.model", "lmms", "the lmms-eval adapter")

MODEL_ID = "illume_kit"
IMAGE_PLACEHOLDER = "<image>"
# the backbone's and projectors' dtype (auto: as saved)
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PREPROCESS = ("plain", "official")
# what ``loglikelihood`` returns first: lmms-eval 0.7.3's multiple_choice scorer takes the argmin of it
# (and divides by the choice's length for acc_norm), its perplexity aggregation exp(-mean) of it
SCORES = {
    "nll": "minus the summed log-prob of the continuation (for multiple_choice: argmin = most likely choice)",
    "mean_nll": "minus the mean log-prob per continuation token (the released ILLUME+ and LLaVA adapters' loss)",
    "logprob": "the summed log-prob (for loglikelihood tasks' perplexity metric)",
}
DEFAULT_MAX_NEW_TOKENS = 1024  # the released adapter's default answer length
MODEL_ARGS = (
    "checkpoint",
    "device",
    "dtype",
    "batch_size",
    "preprocess",
    "image_size",
    "max_new_tokens",
    "score",
    "seed",
)


class Likelihood(str):
    """One ``loglikelihood`` answer: unpacks as the pair ``(value, is_greedy)`` lmms-eval scores.

    lmms-eval 0.7.3's evaluator passes every response through ``unwrap_generation_output``, which
    keeps a ``str`` and turns anything else into its ``str()``, then (its CLI's default
    ``--reasoning_tags``) through ``strip_reasoning_tags``, which ends in ``str.strip``; a plain
    ``(float, bool)`` tuple reaches its own multiple_choice scorer as text and fails to unpack there.
    A ``str`` that iterates as the pair, and that stripping leaves as it is (its text has no
    surrounding whitespace), passes both and unpacks as the scorer expects.
    """

    value: float
    greedy: bool

    def __new__(cls, value: float, greedy: bool) -> Likelihood:
        self = super().__new__(cls, f"({float(value)!r}, {bool(greedy)!r})")
        self.value, self.greedy = float(value), bool(greedy)
        return self

    def __iter__(self):
        return iter((self.value, self.greedy))

    def strip(self, chars: str | None = None) -> Likelihood:
        return self

    def __getnewargs__(self) -> tuple[float, bool]:  # copies and pickles rebuild the pair
        return (self.value, self.greedy)


def manifest():
    """The ``lmms_eval.models`` entry point: lmms-eval's registration of ``IllumeKitLMM`` as ``illume_kit``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.IllumeKitLMM")


# ---------------------------------------------------------------- the model side (no lmms-eval types)


def size_multiple(model: Any) -> int:
    """Sides of an image the model reads are multiples of this: tokenizer strides and resolution-tag step."""
    return math.lcm(*[cb.stride for cb in model.tokenizer.codebooks], model.layout.resolution_step)


def prompt_of(model: Any, context: str, images: Sequence[torch.Tensor]) -> list:
    """The user turn's parts for ``context`` and its images, in the model's prompt style."""
    from illume_kit.model.prompts import style_of

    if not images:
        return [context]
    pieces = context.split(IMAGE_PLACEHOLDER)
    if len(pieces) == len(images) + 1:  # the context places its images
        parts: list = [pieces[0]] if pieces[0] else []
        for image, text in zip(images, pieces[1:]):
            parts += [image, text] if text else [image]
        return parts
    if len(images) == 1:
        return style_of(model).und_prompt(images[0], context)
    return [*images, "\n" + context]


@torch.inference_mode()
def continuation_logprobs(
    model: Any, prompts: Sequence[list], continuations: Sequence[str]
) -> list[tuple[torch.Tensor, bool]]:
    """Per sample: the log-probs of the continuation's tokens as the answer to the user turn ``prompt``
    (over the text vocabulary), and whether each token is the text vocabulary's argmax (greedy)."""
    from illume_kit.model.sequence import IGNORE, Sample, assemble

    out: list[tuple[torch.Tensor, bool]] = [(torch.zeros(0), True)] * len(prompts)
    todo = [i for i, c in enumerate(continuations) if c]
    if not todo:
        return out
    samples = [Sample(list(prompts[i]), [continuations[i]], eos=False) for i in todo]
    batch = assemble(model, samples, padding_side="right")
    logits = model.backbone(
        batch.inputs_embeds, attention_mask=batch.attention_mask, position_ids=batch.position_ids, use_cache=False
    ).logits[:, :-1]
    labels = batch.labels[:, 1:]
    n_text = model.layout.text_vocab_size
    for row, i in enumerate(todo):
        keep = labels[row] != IGNORE
        tokens = labels[row][keep]
        x = logits[row][keep].float()
        x[:, n_text:] = float("-inf")  # an answer is text: the sampler never writes other ids there
        logp = torch.log_softmax(x, -1)
        out[i] = (logp.gather(1, tokens[:, None])[:, 0].cpu(), bool((x.argmax(-1) == tokens).all()))
    return out


def generate_answers(
    model: Any,
    prompts: Sequence[list],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> list[str]:
    """One answer per user turn ``prompt``, decoded as ``illume_kit.model.sampler.answer`` decodes
    (greedy at temperature 0), up to the end of turn or ``max_new_tokens``."""
    from illume_kit.model.sampler import StructuredSampler, sampling_table

    sampler = StructuredSampler(model, sampling_table(model, temperature=temperature, top_p=top_p), seed=seed)
    outs = sampler.run(list(prompts), [None] * len(prompts), max_new_tokens=max_new_tokens)
    tok = model.backbone.text_tokenizer
    return [tok.decode([t for t in ids if t != sampler.eos], skip_special_tokens=True).strip() for ids in outs]


def cut_at(text: str, until: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any of ``until``."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


def _recipe_sizing(checkpoint: Path) -> tuple[int, Any]:
    """(the recipe's image side, its eval options); defaults when the checkpoint has no recipe."""
    from illume_kit.core.manifest import CheckpointError, load_recipe_yaml
    from illume_kit.core.options import EvalOptions

    if not (checkpoint / "recipe.yaml").exists():
        return 64, EvalOptions()
    recipe = load_recipe_yaml(checkpoint)
    side = ((recipe.get("data") or {}).get("params") or {}).get("image_size") or 64
    if not isinstance(side, int) or isinstance(side, bool) or side < 1:
        raise CheckpointError(
            f"{checkpoint / 'recipe.yaml'}: data.params.image_size is {side!r:.60}, expected a positive integer"
        )
    opts = (recipe.get("eval") or {}).get("options") or {}
    return side, EvalOptions(**{k: v for k, v in opts.items() if k in EvalOptions.model_fields})


def _choice(name: str, value: Any, valid: Sequence[str]) -> str:
    value = str(value)
    if value not in valid:
        raise ValueError(f"illume_kit model arg {name}={value}: valid are {', '.join(valid)}")
    return value


def _number(name: str, value: Any, kind: Callable = int, low: float = 1) -> Any:
    try:
        out = kind(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"illume_kit model arg {name}={value}: expected {'an integer' if kind is int else 'a number'}"
        ) from None
    if out < low:
        raise ValueError(f"illume_kit model arg {name}={value}: expected at least {low}")
    return out


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"illume_kit model arg device={name}: CUDA is not available on this machine; use device=cpu or auto"
        )
    return name


# ---------------------------------------------------------------- the lmms-eval model


class IllumeKitLMM(_api.lmms):
    """lmms-eval's ``illume_kit`` model. ``model_args``: ``checkpoint`` (required), ``device`` (auto),
    ``dtype`` (auto = as saved), ``batch_size`` (1), ``preprocess`` and ``image_size`` (the recipe's),
    ``max_new_tokens`` (1024), ``score`` (nll), ``seed`` (0)."""

    is_simple = True

    def __init__(
        self,
        checkpoint: str | None = None,
        device: str | None = "auto",
        dtype: str = "auto",
        batch_size: int | str | None = 1,
        preprocess: str | None = None,
        image_size: int | str | None = None,
        max_new_tokens: int | str = DEFAULT_MAX_NEW_TOKENS,
        score: str = "nll",
        seed: int | str = 0,
        max_batch_size: int | str | None = None,  # lmms-eval passes it to every model; one fixed batch size here
        **unknown: Any,
    ) -> None:
        super().__init__()
        from illume_kit.model.checkpoint import load_checkpoint

        if not checkpoint:
            raise ValueError("illume_kit model arg checkpoint=DIR is required: an illume-kit checkpoint folder")
        if unknown:
            raise ValueError(
                f"illume_kit model arg {', '.join(sorted(unknown))}: unknown; valid are {', '.join(MODEL_ARGS)}"
            )
        folder = Path(str(checkpoint)).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"illume_kit model arg checkpoint={checkpoint}: no such folder")
        torch_dtype = DTYPES[_choice("dtype", dtype, list(DTYPES))]
        self.score = _choice("score", score, list(SCORES))
        self.batch_size_per_gpu = _number("batch_size", batch_size if batch_size not in (None, "") else 1)
        self.max_new_tokens = _number("max_new_tokens", max_new_tokens)
        self.seed = _number("seed", seed, low=0)
        side, opts = _recipe_sizing(folder)
        self.preprocess = _choice("preprocess", preprocess or opts.preprocess, PREPROCESS)
        self.image_size = _number("image_size", image_size) if image_size not in (None, "") else side
        self.min_pixels = opts.min_pixels
        self.max_pixels = opts.max_pixels or self.image_size**2
        self._device = torch.device(_device(str(device or "auto")))
        model, _ = load_checkpoint(folder)
        model = model.to(self._device)
        if torch_dtype is not None:  # the language model; the visual tokenizer reads float pixels as saved
            model.backbone.to(torch_dtype)
            model.projectors.to(torch_dtype)
        self._model = model.eval()
        self.checkpoint = folder

    # what lmms-eval's evaluator reads of a model
    @property
    def model(self):
        return self._model

    @property
    def device(self):
        return self._device

    @property
    def batch_size(self):
        return self.batch_size_per_gpu

    # ---------------------------------------------------------------- inputs

    def _images(self, doc_to_visual, doc_id, task, split) -> list[torch.Tensor]:
        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        flat, stack = [], [visuals]
        while stack:
            v = stack.pop(0)
            if isinstance(v, (list, tuple)):
                stack[:0] = list(v)
            elif v is not None:
                flat.append(v)
        return [self._image(v, task) for v in flat]

    def _image(self, visual, task: str) -> torch.Tensor:
        from PIL import Image

        if not isinstance(visual, Image.Image):
            raise ValueError(
                f"task {task}: the illume_kit model reads images (PIL), got a {type(visual).__name__} "
                "(video and audio tasks are not supported)"
            )
        if self.preprocess == "official":
            from illume_kit.data.aspect import native_resize
            from illume_kit.data.shapes import to_tensor

            img = visual.convert("RGB")
            return to_tensor(
                native_resize(img, min(self.min_pixels, self.max_pixels), self.max_pixels, size_multiple(self.model))
            )
        return fit_image(visual, (self.image_size, self.image_size))

    # ---------------------------------------------------------------- requests

    def _progress(self, n: int):
        from tqdm import tqdm  # what lmms-eval's own models show

        return tqdm(total=n, disable=self.rank != 0, desc="illume_kit answering")

    def loglikelihood(self, requests) -> list[Likelihood]:
        args = [req.args for req in requests]
        res: list[Likelihood] = []
        bar = self._progress(len(args))
        for lo in range(0, len(args), self.batch_size):
            prompts, conts = [], []
            for context, target, doc_to_visual, doc_id, task, split in args[lo : lo + self.batch_size]:
                cont = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
                prompts.append(prompt_of(self.model, context, self._images(doc_to_visual, doc_id, task, split)))
                conts.append(cont)
            for logp, greedy in continuation_logprobs(self.model, prompts, conts):
                total = float(logp.sum())
                value = {"nll": -total, "logprob": total, "mean_nll": -total / max(1, logp.numel())}[self.score]
                res.append(Likelihood(value, greedy))
            for a, cont, r in zip(args[lo : lo + self.batch_size], conts, res[lo:]):
                self.cache_hook.add_partial("loglikelihood", (a[0], cont), r)
            bar.update(len(prompts))
        bar.close()
        return res

    def generate_until(self, requests) -> list[str]:
        args = [req.args for req in requests]
        groups: dict[str, list[int]] = {}
        for i, a in enumerate(args):
            groups.setdefault(json.dumps(a[1] or {}, sort_keys=True, default=str), []).append(i)
        res: list[str] = [""] * len(args)
        batch_no = 0
        bar = self._progress(len(args))
        for idx in groups.values():
            kwargs = dict(args[idx[0]][1] or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            if int(kwargs.get("num_beams") or 1) != 1:
                raise ValueError(
                    f"generation_kwargs num_beams={kwargs['num_beams']}: the illume_kit model decodes one beam "
                    "(greedy, or sampling with temperature > 0)"
                )
            temperature = float(kwargs.get("temperature") or 0.0)
            top_p = float(kwargs.get("top_p") or 1.0) if temperature > 0 else 1.0
            budget = int(kwargs.get("max_new_tokens") or self.max_new_tokens)
            for lo in range(0, len(idx), self.batch_size):
                chunk = idx[lo : lo + self.batch_size]
                prompts = [prompt_of(self.model, args[i][0], self._images(*args[i][2:])) for i in chunk]
                n = self._room(prompts, budget)
                texts = generate_answers(self.model, prompts, n, temperature, top_p, seed=self.seed + batch_no)
                batch_no += 1
                for i, text in zip(chunk, texts):
                    res[i] = cut_at(text, until).strip()
                    self.cache_hook.add_partial("generate_until", (args[i][0], kwargs), res[i])
                bar.update(len(chunk))
        bar.close()
        return res

    def _room(self, prompts: Sequence[list], budget: int) -> int:
        """``budget`` new tokens, fewer where the longest prompt leaves less room in the backbone."""
        from illume_kit.model.sampler import max_positions, sequence_length

        limit = max_positions(self.model)
        if limit is None:
            return budget
        longest = max(sequence_length(self.model, p, 0) for p in prompts)
        if longest >= limit:
            raise ValueError(
                f"a prompt takes {longest} positions, the backbone serves {limit} (max_position_embeddings): "
                "use a smaller image_size or a task with shorter contexts"
            )
        return min(budget, limit - longest)

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("the illume_kit model answers single-round tasks (generate_until, loglikelihood)")


__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "IMAGE_PLACEHOLDER",
    "MODEL_ID",
    "SCORES",
    "IllumeKitLMM",
    "Likelihood",
    "continuation_logprobs",
    "cut_at",
    "generate_answers",
    "manifest",
    "prompt_of",
]
