"""The official sampling mode: the token stream of ILLUME+'s own image decoding, reproduced.

ILLUME+ decodes with transformers' ``generate()`` and its ``InterleavedLogitsProcessor``
(``generation_eval/models/inference_utils.py``). This module reproduces what that pipeline does to
every step's logits, token for token, on illume-kit's ``UnifiedModel`` (tests/model/
test_official_sampling.py checks it against tokens recorded from the official code):

- the prompt is fed as embeddings, so everything that looks at "the ids so far" sees the generated
  tokens only (none at the first step). The prompt ends with the size tags after the assistant
  prefix; the model has to write ``<start_of_image>`` itself;
- ``generate()``'s own processors come first: the repetition penalty of the released
  ``generation_config.json`` (1.05, from Qwen2.5-Instruct) over the generated tokens, on the
  conditional logits (transformers' ``RepetitionPenaltyLogitsProcessor``);
- then the official processor: its state follows the last generated token. Outside an image every
  token is allowed except codes, level starts/ends and end-of-line. From ``<start_of_image>`` to
  ``<end_of_image>``: classifier-free guidance on the full-vocabulary log-softmax,
  ``s * (logp_c - logp_u) + logp_u``, the unconditional prompt running as a second forward with its
  own KV cache (started at the first image step, with the last generated tokens appended as the
  official code decides), the forced structure (level starts and ends, ``<end_of_line>`` after ``w``
  codes, ``h`` rows), and per-level temperature / top-k / top-p (the official top-p: tokens after the
  first whose cumulative probability exceeds p are dropped);
- then, when sampling, ``generate()``'s own warpers with the text-level settings again (transformers'
  ``TemperatureLogitsWarper``, ``TopKLogitsWarper``, ``TopPLogitsWarper``): the double warping,
  ``rewarp`` here; and one ``torch.multinomial`` draw over the whole vocabulary per step, forced steps
  included, from a generator seeded with ``seed`` (the official ``set_seed``). ``do_sample`` false
  takes the argmax instead.

A model trained with image position embeddings (``model.image_positions``, an illume-kit option)
gets them on the generated codes it is fed, as in training; ILLUME+ has none, so this changes nothing
there.

One prompt at a time: the official state machine reads batch row 0 only, so it supports batch
size 1, and so does this mode (``official_images`` loops over prompts, prompt ``j`` seeded with
``seed + j``). The logits width must be the official model's (its embedding rows): a draw consumes
one random number per vocabulary entry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from illume_kit.core.options import OFFICIAL_REPETITION_PENALTY as REPETITION_PENALTY
from illume_kit.core.options import OFFICIAL_SAMPLING_DEFAULTS as OFFICIAL_DEFAULTS
from illume_kit.model.image_tokens import ImageSequenceError, parse_image_ids
from illume_kit.model.prompts import style_of
from illume_kit.model.sequence import Ids, Part, Sample, assemble

# generation_eval/models/illume.py InferenceConfig: a finer level's top-k is this times the coarser one's
FINER_TOP_K = 3


class OfficialSamplingError(ValueError):
    """Settings the official sampling mode cannot take, or a generation without an image."""


@dataclass(frozen=True)
class LevelSampling:
    temperature: float
    top_k: int  # 0: off
    top_p: float


@dataclass(frozen=True)
class OfficialSettings:
    """What the official ``generate()`` call is given.

    ``text``: the processor's default settings (outside images and on structure steps) and the
    settings of ``generate()``'s own warpers; ``levels``: the processor's settings inside each
    codebook level, in level order. ``rewarp`` applies the warpers after the processor (the
    official double warping); ``do_sample`` false decodes greedily. ``max_new_tokens`` None: the
    official budget (the image plus 6 tokens).
    """

    text: LevelSampling = LevelSampling(1.0, 2048, 1.0)
    levels: tuple[LevelSampling, ...] = (LevelSampling(1.0, 2048, 1.0), LevelSampling(1.0, 6144, 1.0))
    cfg: float = 2.0
    do_sample: bool = True
    rewarp: bool = True
    repetition_penalty: float = REPETITION_PENALTY
    max_new_tokens: int | None = None
    stop_ids: tuple[int, ...] | None = None  # None: the model's end-of-turn ids (``stop_ids``)


def _check(key: str, value: Any, ok: bool, want: str) -> None:
    if not ok:
        raise OfficialSamplingError(f"sampling official: {key} is {value!r}, valid: {want}")


def _number(key: str, value: Any) -> float:
    _check(key, value, isinstance(value, (int, float)) and not isinstance(value, bool), "a number")
    return float(value)


def official_settings(
    model: Any,
    task: str = "generate",
    cfg: float | None = None,
    temperature: float | Mapping[str, float] | None = None,
    top_k: int | Mapping[str, int | None] | None = None,
    top_p: float | Mapping[str, float] | None = None,
    rewarp: bool = True,
    repetition_penalty: float = REPETITION_PENALTY,
    max_new_tokens: int | None = None,
) -> OfficialSettings:
    """Settings from eval-style options, with the official defaults for what is not given.

    ``temperature`` / ``top_k`` / ``top_p``: one number is the official argument of that name (the
    text level and ``generate()``'s warpers), which the levels follow: the first level takes it, a
    finer level the coarser level's, its top-k times 3 (``InferenceConfig``); or a mapping from
    ``text`` or a codebook's name to its setting, the levels left out following the same rule. None
    (and ``text`` left out of a mapping) takes the task's recommended value (``OFFICIAL_DEFAULTS``);
    top-k 0 is off. A text temperature of 0 decodes greedily (``do_sample`` false, as ILLUME's demo
    does; levels at 0 then leave their scores unscaled, which the argmax does not see); a level
    temperature of 0 while sampling is refused (the official processor divides by it). ``cfg`` None:
    2.0 for ``generate``, 1.5 for ``edit``.
    """
    if task not in OFFICIAL_DEFAULTS:
        raise OfficialSamplingError(f"sampling official: unknown task {task!r}; tasks are generate, edit")
    names = [cb.name for cb in model.layout.codebooks]
    levels = ["text", *names]

    def split(key: str, opt: Any, default: Any) -> tuple[Any, dict[str, Any]]:
        if not isinstance(opt, Mapping):
            return (default if opt is None else opt), {}
        bad = sorted(str(k) for k in set(opt) - set(levels))
        if bad:
            raise OfficialSamplingError(
                f"sampling official: {key} names unknown levels {bad}; levels are {', '.join(levels)}"
            )
        given = {str(k): v for k, v in opt.items()}
        text = given.pop("text", default)
        return (default if text is None else text), given

    def valid(where: str, t: Any, k: Any, p: Any) -> LevelSampling:
        k = 0 if k is None else k
        t, p = _number(f"temperature{where}", t), _number(f"top_p{where}", p)
        _check(f"temperature{where}", t, t >= 0, "a number >= 0 (0: greedy)")
        _check(
            f"top_k{where}", k, isinstance(k, int) and not isinstance(k, bool) and k >= 0, "an integer >= 0 (0: off)"
        )
        _check(f"top_p{where}", p, 0 < p <= 1, "a number in (0, 1]")
        return LevelSampling(t, int(k), p)

    t0, k0, p0 = OFFICIAL_DEFAULTS[task]
    (tt, temps), (tk, ks), (tp, ps) = (
        split("temperature", temperature, t0),
        split("top_k", top_k, k0),
        split("top_p", top_p, p0),
    )
    text = valid("", tt, tk, tp)
    out: list[LevelSampling] = []
    for i, name in enumerate(names):
        prev = out[-1] if out else text
        k_default = prev.top_k * FINER_TOP_K if i else prev.top_k
        out.append(
            valid(f".{name}", temps.get(name, prev.temperature), ks.get(name, k_default), ps.get(name, prev.top_p))
        )
    for name, lv in zip(names, out):
        if text.temperature > 0 and lv.temperature == 0:
            raise OfficialSamplingError(
                f"sampling official: temperature.{name} is 0 while the text level samples at "
                f"{text.temperature:g}; valid: a level temperature > 0 (the official processor divides by it), "
                "or text temperature 0 for greedy decoding"
            )
    cfg = (2.0 if task == "generate" else 1.5) if cfg is None else _number("cfg", cfg)
    _check("cfg", cfg, cfg >= 0, "a number >= 0 (1: off)")
    _check("rewarp", rewarp, isinstance(rewarp, bool), "true or false")
    penalty = _number("repetition_penalty", repetition_penalty)
    _check("repetition_penalty", penalty, penalty > 0, "a number > 0 (1: off)")
    if max_new_tokens is not None:
        _check(
            "max_new_tokens",
            max_new_tokens,
            isinstance(max_new_tokens, int) and not isinstance(max_new_tokens, bool) and max_new_tokens >= 1,
            "an integer >= 1, or null for the official budget",
        )
    return OfficialSettings(
        text=text,
        levels=tuple(out),
        cfg=cfg,
        do_sample=text.temperature > 0,
        rewarp=rewarp,
        repetition_penalty=penalty,
        max_new_tokens=max_new_tokens,
    )


def official_budget(grids: Sequence[tuple[int, int]]) -> int:
    """``max_new_tokens`` of the official inference: each level's rows with their end-of-line and its
    start/end, plus 6 (``calculate_image_token_num`` in generation_eval/models/illume.py)."""
    return sum(h * (w + 1) + 2 for h, w in grids) + 6


def uncond_tail(uncond_ids: Sequence[int], generated: Sequence[int]) -> list[int]:
    """What the official processor appends to the unconditional prompt when an image starts: nothing
    when the prompt already ends with the last generated token; the last token when the two before it
    are the prompt's last two (its size tags); else the last three generated tokens."""
    if list(uncond_ids[-1:]) == list(generated[-1:]):
        return []
    if len(generated) >= 3 and len(uncond_ids) >= 2 and list(uncond_ids[-2:]) == list(generated[-3:-1]):
        return list(generated[-1:])
    return list(generated[-3:])


class _Processor:
    """The official processor's state machine, guidance and per-level warping for one prompt."""

    def __init__(self, model: Any, settings: OfficialSettings, grids, uncond, tags, end_of_text: int) -> None:
        lay = model.layout
        self.model, self.settings, self.grids, self.uncond, self.tags = model, settings, grids, uncond, tags
        self.eot = end_of_text
        self.soi, self.eoi, self.eol = lay.soi, lay.eoi, lay.eol
        n = len(lay.codebooks)
        self.starts = [lay.level_start(i) for i in range(n)]
        self.ends = [lay.level_end(i) for i in range(n)]
        self.ranges = [(cb.start, cb.stop) for cb in lay.codebooks]
        self.image = False
        self.level: int | None = None  # the level whose codes are being written
        self.mode: int | None = None  # the level whose sampling settings apply
        self.in_row = self.rows = 0
        self.cache = None  # the unconditional branch's KV cache, from the first image step
        self.next_pos = 0
        # model.image_positions (an illume-kit option; 0 in ILLUME+): the row/column embedding the last
        # generated token carries when fed, as training's assemble gives it
        self.positioned = bool(getattr(model, "image_positions", 0))
        self.shifted = getattr(model, "output_positions", "slot") == "next"
        self.fed_position: torch.Tensor | None = None

    def advance(self, last: int) -> None:
        """Take the token just generated: the state the next step reads, and its position embedding."""
        self._update(last)
        self.fed_position = self._position(last) if self.positioned else None

    def _position(self, last: int) -> torch.Tensor | None:
        if not self.image or self.level is None:
            return None
        h, w = self.grids[self.level]
        if self.shifted:  # the token carries the position of the code it predicts
            if self.rows >= h or self.in_row >= w:
                return None
            r, c = self.rows, self.in_row
        else:  # a code carries its own
            lo, hi = self.ranges[self.level]
            if not lo <= last < hi:
                return None
            r, c = self.rows, self.in_row - 1
        name = self.model.layout.codebooks[self.level].name
        return self.model.projectors[name].positions(torch.tensor([r]), torch.tensor([c]))[0]

    def embed(self, token: int, dev) -> torch.Tensor:
        """(1, 1, hidden) input of the token just generated."""
        embeds = self.model.backbone.embed(torch.tensor([[token]], device=dev))
        if self.fed_position is not None:
            embeds = embeds + self.fed_position.to(device=dev, dtype=embeds.dtype)
        return embeds

    def _update(self, last: int) -> None:
        if last == self.soi:
            self.image, self.level, self.mode, self.in_row, self.rows = True, None, None, 0, 0
        elif last in self.starts:
            i = self.starts.index(last)
            self.level, self.mode, self.in_row, self.rows = i, i, 0, 0
        elif last in self.ends:
            self.level, self.mode = None, None
        elif last == self.eoi:
            self.image, self.level, self.mode, self.in_row, self.rows = False, None, None, 0, 0
        elif last == self.eol and self.image:
            self.in_row, self.rows = 0, self.rows + 1
        elif self.image and self.level is not None:
            lo, hi = self.ranges[self.level]
            if lo <= last < hi:
                self.in_row += 1

    def _guide(self, generated: list[int], scores: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(scores, dim=-1)
        if self.settings.cfg == 1:
            return logp
        backbone = self.model.backbone
        if self.cache is None:
            # the unconditional prompt ends with the size tags: the official rule compares its last two ids
            tail = uncond_tail(self.tags, generated)
            batch = assemble(self.model, [Sample(list(self.uncond), [Ids(tuple(self.tags + tail))], eos=False)], "left")
            cache = backbone.new_cache() if hasattr(backbone, "new_cache") else None
            out = backbone(
                batch.inputs_embeds,
                attention_mask=batch.attention_mask,
                past_key_values=cache,
                position_ids=batch.position_ids,
                use_cache=True,
            )
            self.next_pos = int(batch.attention_mask.sum())
        else:
            dev = scores.device
            out = backbone(
                self.embed(generated[-1], dev),
                past_key_values=self.cache,
                position_ids=torch.tensor([[self.next_pos]], device=dev),
                use_cache=True,
            )
            self.next_pos += 1
        self.cache = out.past_key_values
        logp_u = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        return self.settings.cfg * (logp - logp_u) + logp_u

    def _allowed(self, last: int | None, generated: list[int], width: int, dev) -> torch.Tensor:
        mask = torch.zeros(width, dtype=torch.bool, device=dev)
        if self.image:
            if self.level is not None:
                h, w = self.grids[self.level]
                if self.rows == h:
                    mask[self.ends[self.level]] = True
                elif self.in_row == w:
                    mask[self.eol] = True
                else:
                    lo, hi = self.ranges[self.level]
                    mask[lo:hi] = True
            elif last == self.soi:
                mask[self.starts[0]] = True
            elif last in self.ends:
                i = self.ends.index(last)
                mask[self.starts[i + 1] if i + 1 < len(self.starts) else self.eoi] = True
            elif not generated:
                mask[self.soi] = True
            else:
                mask[self.starts] = True
                mask[self.eoi] = True
        else:
            mask[:] = True
            for lo, hi in self.ranges:
                mask[lo:hi] = False
            mask[self.starts + self.ends + [self.eol]] = False
            mask[self.eot] = True
            mask[self.soi] = True
        return mask

    def __call__(self, generated: list[int], scores: torch.Tensor) -> torch.Tensor:
        last = generated[-1] if generated else None
        if self.image:
            scores = self._guide(generated, scores)
        else:
            self.cache = None
        allowed = self._allowed(last, generated, scores.shape[-1], scores.device)
        scores = scores.masked_fill(~allowed, float("-inf"))
        if not bool((scores > float("-inf")).any(dim=-1).all()):
            scores = torch.full_like(scores, float("-inf"))
            scores[:, self.eot] = 0
        s = self.settings.text if self.mode is None else self.settings.levels[self.mode]
        return _warp(scores, s)


def _warp(scores: torch.Tensor, s: LevelSampling) -> torch.Tensor:
    """The official processor's temperature, top-k (ties with the k-th kept) and top-p (the first
    token past p kept)."""
    if s.temperature > 0:
        scores = scores / s.temperature
    if s.top_k > 0:
        kth = torch.topk(scores, min(s.top_k, scores.shape[-1])).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if s.top_p < 1.0:
        ordered, order = torch.sort(scores, descending=True)
        past = torch.cumsum(torch.softmax(ordered, dim=-1), dim=-1) > s.top_p
        drop = torch.zeros_like(past)
        drop[:, 1:] = past[:, :-1]
        scores = scores.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), float("-inf"))
    return scores


def _generate_warpers(settings: OfficialSettings) -> LogitsProcessorList:
    """``generate()``'s own sampling warpers for these settings, as transformers picks them."""
    t = settings.text
    warpers = LogitsProcessorList()
    if t.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(t.temperature))
    if t.top_k != 0:
        warpers.append(TopKLogitsWarper(top_k=t.top_k, min_tokens_to_keep=1))
    if t.top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=t.top_p, min_tokens_to_keep=1))
    return warpers


def stop_ids(model: Any) -> tuple[int, ...]:
    """Ids that end an official generation: the prompt style's end of turn, plus the eos ids of the
    backbone's generation config (Qwen2.5-Instruct: ``<|im_end|>`` and ``<|endoftext|>``)."""
    tok = model.backbone.text_tokenizer
    ids = [int(style_of(model).stop_id(tok))]
    config = getattr(getattr(model.backbone, "model", None), "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    for t in [eos] if isinstance(eos, int) else list(eos or []):
        if int(t) not in ids:
            ids.append(int(t))
    return tuple(ids)


def level_grids(model: Any, size: tuple[int, int]) -> list[tuple[int, int]]:
    """(rows, codes per row) of each level, in level order, for an image of ``size`` (H, W)."""
    grids = model.tokenizer.grid(*size)
    return [tuple(grids[cb.name]) for cb in model.layout.codebooks]


@torch.inference_mode()
def official_generate(
    model: Any,
    prompt: Sequence[Part],
    uncond: Sequence[Part] | None,
    size: tuple[int, int],
    settings: OfficialSettings | None = None,
    seed: int = 0,
) -> list[int]:
    """The ids the official ``generate()`` writes for one prompt (eos included when it stops on one).

    ``prompt`` / ``uncond``: the user turn's parts (as the prompt style's ``t2i_prompt`` /
    ``edit_prompt`` give them); the style wraps them in its turns and the size tags of ``size`` follow
    the assistant prefix. ``uncond`` may be None only when ``settings.cfg`` is 1.
    """
    settings = settings or OfficialSettings()
    lay = model.layout
    grids = level_grids(model, size)
    if len(settings.levels) != len(grids):
        raise OfficialSamplingError(
            f"sampling official: settings for {len(settings.levels)} levels, the model has {len(grids)}"
        )
    if settings.cfg != 1 and uncond is None:
        raise OfficialSamplingError("sampling official: guidance (cfg != 1) needs an unconditional prompt")
    tags = list(lay.resolution_ids(*size))
    tok = model.backbone.text_tokenizer
    end_of_text = int(style_of(model).stop_id(tok))
    stops = set(settings.stop_ids if settings.stop_ids is not None else stop_ids(model))
    budget = settings.max_new_tokens or official_budget(grids)
    proc = _Processor(model, settings, grids, list(uncond or []), tags, end_of_text)
    penalty = (
        RepetitionPenaltyLogitsProcessor(settings.repetition_penalty) if settings.repetition_penalty != 1 else None
    )
    warpers = _generate_warpers(settings) if settings.do_sample and settings.rewarp else LogitsProcessorList()
    backbone = model.backbone
    was_training = backbone.training
    backbone.eval()
    try:
        batch = assemble(model, [Sample(list(prompt), [Ids(tuple(tags))], eos=False)], "left")
        dev = batch.inputs_embeds.device
        gen = torch.Generator(device=dev).manual_seed(int(seed))
        out = backbone(
            batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            past_key_values=backbone.new_cache() if hasattr(backbone, "new_cache") else None,
            position_ids=batch.position_ids,
            use_cache=True,
        )
        cache, pos = out.past_key_values, int(batch.attention_mask.sum())
        logits = out.logits[:, -1].float()
        ids = torch.zeros((1, budget), dtype=torch.long, device=dev)
        generated: list[int] = []
        while True:
            so_far = ids[:, : len(generated)]
            scores = logits.clone()
            if penalty is not None:
                scores = penalty(so_far, scores)
            scores = proc(generated, scores)
            if settings.do_sample:
                scores = warpers(so_far, scores)
                token = int(torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=gen)[0, 0])
            else:
                token = int(torch.argmax(scores, dim=-1)[0])
            ids[0, len(generated)] = token
            generated.append(token)
            if token in stops or len(generated) >= budget:
                return generated
            proc.advance(token)
            out = backbone(
                proc.embed(token, dev),
                past_key_values=cache,
                position_ids=torch.tensor([[pos]], device=dev),
                use_cache=True,
            )
            cache, pos = out.past_key_values, pos + 1
            logits = out.logits[:, -1].float()
    finally:
        backbone.train(was_training)


def first_image(model: Any, ids: Sequence[int], size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The codes of the first image block in generated ids; OfficialSamplingError when there is none."""
    lay = model.layout
    ids = list(ids)
    if lay.soi not in ids or lay.eoi not in ids[ids.index(lay.soi) :]:
        shown = ", ".join(str(t) for t in ids[:12]) + (", ..." if len(ids) > 12 else "")
        raise OfficialSamplingError(
            f"sampling official: the model wrote no complete image in {len(ids)} tokens (ids {shown}); "
            "the official mode lets the model choose to start the image after the size tags"
        )
    start = ids.index(lay.soi)
    stop = ids.index(lay.eoi, start)
    grids = model.tokenizer.grid(*size)
    try:
        return parse_image_ids(lay, ids[start : stop + 1], grids).codes
    except ImageSequenceError as exc:  # the processor forces the structure: not expected
        raise OfficialSamplingError(f"sampling official: malformed image block: {exc}") from None


def official_images(
    model: Any,
    prompts: Sequence[Sequence[Part]],
    uncond: Sequence[Sequence[Part]] | None,
    sizes: Sequence[tuple[int, int]],
    settings: OfficialSettings,
    seed: int | Sequence[int] = 0,
) -> list[dict[str, torch.Tensor]]:
    """Code grids of one image per prompt, each prompt decoded alone (batch size 1, as the official
    processor supports), prompt ``j`` seeded with ``seed + j`` (or ``seed[j]``, given one per prompt)."""
    out = []
    for j, (prompt, size) in enumerate(zip(prompts, sizes)):
        s = seed + j if isinstance(seed, int) else seed[j]
        ids = official_generate(model, prompt, uncond[j] if uncond is not None else None, size, settings, s)
        out.append(first_image(model, ids, size))
    return out
