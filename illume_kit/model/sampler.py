"""The structured sampler: exact image grids, classifier-free guidance in one batched forward.

Not transformers' ``generate``. ILLUME+ decodes with ``generate`` plus a logits processor that
tracks the image state of batch row 0 only, runs the unconditional branch as a second forward with
its own cache, and lets ``generate``'s own warpers apply temperature/top-p a second time
(reference §3.4). Here every row carries its own state, so one batch may mix prompts and image
sizes:

- an image is a per-row *template*: ``<height_H><width_W><start_of_image>``, per level
  ``<start_of_level{i}>``, rows of ``w_i`` slots "any code of codebook i" each closed by a forced
  ``<end_of_line>``, ``<end_of_level{i}>``, then ``<end_of_image>``. The grid comes from the
  requested size through ``tokenizer.grid``, so every image has exactly that shape. Forced tokens are
  fed without sampling; the forced head of the template (tags, SOI, first level start) joins the
  prompt's prefill;
- outside images only text tokens (which include eos) are legal, plus the start of an image where a
  row may begin one: the model's choice is its probability of the requested ``<height_H>`` tag, the
  first token of an image in the training format; the rest of the template follows;
- the hard mask of a row is one id range ``[lo, hi)`` plus one extra id, so the masks of a whole
  batch are three integer vectors;
- guidance: conditional and unconditional rows run as ONE batch of 2B rows with one KV cache; the
  unconditional rows are fed the same generated tokens. Inside images the log-probs mix as
  ``s * (logp_c - logp_u) + logp_u``; elsewhere the conditional ones are used as they are;
- temperature, top-k and top-p are per level (``text`` and each codebook), applied once;
  temperature 0 is greedy. All randomness comes from one seeded ``torch.Generator``, or, with one
  seed per row, from each row's own stream (:class:`RowDraws`), so that a row's sample does not depend
  on the other rows of its batch (batch generation over prompt files draws the same images at any
  batch size).

``generate_images`` / ``edit_images`` with ``sampling="official"`` (recipe ``eval.options.sampling``)
decode with ``illume_kit.model.official_sampling`` instead: the official pipeline's token stream,
one prompt at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from illume_kit.core.protocols import IncrementalCache
from illume_kit.model.image_tokens import parse_image_ids
from illume_kit.model.prompts import style_of
from illume_kit.model.sampling_ops import (
    advance_rows,
    filter_logits,
    guided_logprobs,
    inverse_cdf,
    legal_ids,
    row_uniforms,
)
from illume_kit.model.sequence import Ids, Part, Sample, Tag, assemble, join_text, text_ids_fn


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_k: int | None = None  # None or 0: off
    top_p: float = 1.0


def sampling_table(
    model: Any,
    temperature: float | Mapping[str, float] = 1.0,
    top_k: int | None | Mapping[str, int | None] = None,
    top_p: float | Mapping[str, float] = 1.0,
) -> list[Sampling]:
    """Per-level settings: index 0 = text, 1 + i = codebook i. Each option is a number for every
    level or a mapping keyed by ``text`` / codebook name (missing levels use the default)."""
    levels = ["text"] + [cb.name for cb in model.layout.codebooks]

    def pick(opt, default, key):
        if isinstance(opt, Mapping):
            bad = set(opt) - set(levels)
            if bad:
                raise KeyError(f"unknown sampling levels {sorted(bad)}; levels are {', '.join(levels)}")
            return opt.get(key, default)
        return opt

    table = [
        Sampling(float(pick(temperature, 1.0, k)), pick(top_k, None, k), float(pick(top_p, 1.0, k))) for k in levels
    ]
    for s in table:
        if s.temperature < 0 or not 0 < s.top_p <= 1 or (s.top_k is not None and s.top_k < 0):
            raise ValueError(f"invalid sampling {s}: need temperature >= 0, 0 < top_p <= 1, top_k >= 0")
    return table


def image_template(model: Any, size: tuple[int, int], eos: int | None) -> list[int]:
    """Ids of an image of this pixel size; a negative entry -(i + 1) is a slot for a code of level i."""
    lay = model.layout
    grids = model.tokenizer.grid(*size)
    out = [*lay.resolution_ids(*size), lay.soi]
    for i, cb in enumerate(lay.codebooks):
        h, w = grids[cb.name]
        out.append(lay.level_start(i))
        out += ([-(i + 1)] * w + [lay.eol]) * h
        out.append(lay.level_end(i))
    out.append(lay.eoi)
    return out + ([eos] if eos is not None else [])


def max_positions(model: Any) -> int | None:
    """The most positions the backbone serves (its config's ``max_position_embeddings``, GPT-2's
    ``n_positions``); None when it declares none."""
    config = getattr(getattr(model.backbone, "model", None), "config", None)
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(getattr(model.backbone, "params", None), "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None


def sequence_length(model: Any, prompt: Sequence[Part], answer: int) -> int:
    """Positions one exchange takes: the user turn (``prompt`` in the model's prompt style) as assembled
    for the model, plus ``answer`` tokens (a generated image's template, or the longest text answer)."""
    text_ids = text_ids_fn(model.backbone.text_tokenizer)
    style = style_of(model)
    parts = style.user_turn(prompt, 0)
    n = answer
    for part in join_text(parts) if style.join_text else parts:
        if isinstance(part, str):
            n += len(text_ids(part))
        elif isinstance(part, Tag):
            n += 2
        elif isinstance(part, Ids):
            n += len(part.ids)
        else:  # an image the model reads (a tensor or InputImage): its block, without tags
            image = part if isinstance(part, torch.Tensor) else part.image
            n += model.layout.image_length(model.tokenizer.grid(*image.shape[-2:]), with_tags=False)
    return n


class _Rows:
    """Per-row decoding state, all rows at once: template position, image start, budget, done."""

    def __init__(
        self,
        model: Any,
        tmpls: list[list[int]],
        heads: list[list[int]],
        from_text: list[bool],
        max_new_tokens: int,
        pad: int,
        eos: int,
        dev: torch.device,
    ) -> None:
        lay = model.layout
        B, L = len(tmpls), max(1, max(len(t) for t in tmpls))
        self.tmpl = torch.full((B, L), pad, dtype=torch.long, device=dev)
        for r, t in enumerate(tmpls):
            if t:
                self.tmpl[r, : len(t)] = torch.tensor(t, device=dev)
        self.tlen = torch.tensor([len(t) for t in tmpls], device=dev)
        # pos: index into the row's template, -1 = text; starts: id that opens the template from text
        self.pos = torch.tensor(
            [len(h) if (t and not ft) else -1 for h, t, ft in zip(heads, tmpls, from_text)], device=dev
        )
        self.starts = torch.tensor([t[0] if (t and ft) else -1 for t, ft in zip(tmpls, from_text)], device=dev)
        self.budget = torch.tensor(
            [
                len(t) - len(h) if (t and not ft) else max_new_tokens + (len(t) if ft else 0)
                for h, t, ft in zip(heads, tmpls, from_text)
            ],
            device=dev,
        )
        self.done = self.budget <= 0
        self.cb_lo = torch.tensor([cb.start for cb in lay.codebooks], device=dev)
        self.cb_hi = torch.tensor([cb.stop for cb in lay.codebooks], device=dev)
        self.n_text, self.pad, self.eos = lay.text_vocab_size, pad, eos
        # (codebook index, row, col) of each template slot, -1 elsewhere: image position embeddings
        self.grid = self._slot_grid(tmpls, L, lay.eol).to(dev) if getattr(model, "image_positions", 0) else None
        # output_positions: next: a fed token carries the position of the slot it predicts, as in training
        self.shifted = self.grid is not None and getattr(model, "output_positions", "slot") == "next"
        if self.shifted:
            self.grid = torch.cat([self.grid[:, :, 1:], torch.full_like(self.grid[:, :, :1], -1)], 2)

    @staticmethod
    def _slot_grid(tmpls: list[list[int]], L: int, eol: int) -> torch.Tensor:
        grid = [[[-1] * L for _ in tmpls] for _ in range(3)]
        for b, t in enumerate(tmpls):
            level, r, c = -1, 0, 0
            for j, v in enumerate(t):
                if v < 0:
                    if -v - 1 != level:
                        level, r, c = -v - 1, 0, 0
                    grid[0][b][j], grid[1][b][j], grid[2][b][j] = level, r, c
                    c += 1
                elif v == eol and level >= 0:
                    r, c = r + 1, 0
        return torch.tensor(grid, dtype=torch.long)

    def grid_at(self, pos: torch.Tensor) -> torch.Tensor:
        """(3, B, k) codebook index / row / col of the template positions ``pos`` (B, k); -1 = not a code."""
        g = self.grid.gather(2, pos.clamp(min=0)[None].expand(3, -1, -1))
        return torch.where(pos[None] >= 0, g, torch.full_like(g, -1))

    def legal(self):
        """(lo, hi, extra, level, slot, forced): legal ids are [lo, hi) plus ``extra`` (-1: none);
        level 0 = text, 1 + i = codebook i; ``slot`` rows sample a code; ``forced`` rows have one id (lo)."""
        return legal_ids(self.tmpl, self.pos, self.starts, self.done, self.cb_lo, self.cb_hi, self.n_text, self.pad)

    def advance(self, tok: torch.Tensor) -> torch.Tensor:
        """Consume one token per row; returns what the row produced (pad for finished rows)."""
        out, self.pos, self.starts, self.budget, self.done = advance_rows(
            self.tlen, self.pos, self.starts, self.budget, self.done, tok, self.pad, self.eos
        )
        return out


class RowDraws:
    """One random stream per row: row ``r`` draws its tokens by inverse CDF from uniforms of a CPU
    generator seeded ``seeds[r]``, one uniform per draw, whatever the other rows do (a CPU stream is
    the same on every device)."""

    def __init__(self, seeds: Sequence[int], draws: int, dev: torch.device) -> None:
        self.u = row_uniforms(seeds, draws, dev)
        self.used = torch.zeros(len(seeds), dtype=torch.long, device=dev)

    def draw(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """One index per row of ``x`` (filtered logits of the rows ``rows``), drawn from softmax(x)."""
        u = self.u[rows, self.used[rows].clamp(max=self.u.shape[1] - 1)]
        self.used[rows] += 1
        return inverse_cdf(x, u)


CACHES = ("dynamic", "static")


class StructuredSampler:
    """Decodes a batch of prompts, each row following its own template / text state."""

    def __init__(
        self,
        model: Any,
        sampling: Sequence[Sampling] | None = None,
        cfg: float = 1.0,
        seed: int | Sequence[int] = 0,
        skip_unit_guidance: bool = True,
        cache: str = "dynamic",
        compile: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """``seed``: one seed for the batch, or one per prompt (each row then draws from its own
        stream, :class:`RowDraws`). ``cache``: ``dynamic`` (a growing KV cache, forced tokens folded
        into the next forward) or ``static`` (``illume_kit.model.static_loop``: a preallocated cache,
        one fixed-shape step per token); ``compile``: the static step through ``torch.compile``.
        ``progress(tokens, budget)``: called as the batch decodes (about every 1% of the longest
        row's budget, and at the end), from the host, with no device sync of its own."""
        if cache not in CACHES:
            raise ValueError(f"unknown sampler cache {cache!r}; caches are {', '.join(CACHES)}")
        if compile and cache != "static":
            raise ValueError("sampler compile: true needs cache: static (the dynamic loop's shapes change every step)")
        self.cache, self.compile = cache, bool(compile)
        self.progress = progress
        self.model, self.cfg = model, float(cfg)
        self.sampling = list(sampling) if sampling is not None else sampling_table(model)
        self.seed, self.skip_unit_guidance = seed, skip_unit_guidance
        # host-side flags: no device sync needed to know whether a filter or a draw can apply
        self._max_k = max(s.top_k or 0 for s in self.sampling)
        self._use_top_p = any(s.top_p < 1 for s in self.sampling)
        self._every_top_k = all((s.top_k or 0) > 0 for s in self.sampling)
        self._draws = any(s.temperature > 0 for s in self.sampling)
        tok = model.backbone.text_tokenizer
        self.eos = int(style_of(model).stop_id(tok))  # what ends an answer in the model's prompt style
        self.pad = int(tok.pad_token_id if tok.pad_token_id is not None else self.eos)

    @torch.inference_mode()
    def run(
        self,
        prompts: Sequence[Sequence[Part]],
        templates: Sequence[Sequence[int] | None],
        uncond: Sequence[Sequence[Part]] | None = None,
        max_new_tokens: int = 64,
        image_from_text: Sequence[bool] | None = None,
    ) -> list[list[int]]:
        """Generate one answer per prompt; returns the answer ids (forced prefix included).

        A row with a template and ``image_from_text`` False starts inside its image and stops after
        the template (which ends with eos). Otherwise the row starts in text, may start its template
        image once (when it has one and ``image_from_text``), and stops at eos or ``max_new_tokens``.
        """
        B = len(prompts)
        if len(templates) != B or (uncond is not None and len(uncond) != B):
            raise ValueError("prompts, templates and uncond prompts must have the same length")
        if not isinstance(self.seed, int) and len(self.seed) != B:
            raise ValueError(f"got {len(self.seed)} seeds for {B} prompts")
        from_text = list(image_from_text) if image_from_text is not None else [False] * B
        guide = uncond is not None and not (self.skip_unit_guidance and self.cfg == 1.0)
        # forced heads of templates that start right away go into the prefill
        heads, tmpls = [], []
        for t, ft in zip(templates, from_text):
            t = list(t) if t is not None else []
            k = 0 if ft or not t else next((j for j, v in enumerate(t) if v < 0), len(t))
            heads.append(t[:k])
            tmpls.append(t)
        rows = [Sample(list(p), [Ids(tuple(h))], eos=False) for p, h in zip(prompts, heads)]
        if guide:
            rows += [Sample(list(p), [Ids(tuple(h))], eos=False) for p, h in zip(uncond, heads)]
        batch = assemble(self.model, rows, padding_side="left")
        state = _Rows(
            self.model, tmpls, heads, from_text, max_new_tokens, self.pad, self.eos, batch.inputs_embeds.device
        )
        if state.shifted:
            self._head_positions(batch, state, heads, B)
        backbone = self.model.backbone
        was_training = backbone.training
        backbone.eval()
        try:
            if self.cache == "static":
                from illume_kit.model.static_loop import static_loop

                produced = static_loop(self, batch, state, guide, tmpls, heads, from_text)
            else:
                produced = self._loop(batch, state, guide)
        finally:
            backbone.train(was_training)
        if self.progress is not None and produced.numel():
            self.progress(produced.shape[1], produced.shape[1])  # rows that end early end the loop early
        out = []
        for r in range(B):
            ids = produced[r].tolist() if produced.numel() else []
            if self.pad != self.eos:
                ids = [t for t in ids if t != self.pad]  # pads only fill finished rows
            elif self.eos in ids:
                ids = ids[: ids.index(self.eos) + 1]
            out.append(list(heads[r]) + ids)
        return out

    def _reporter(self, budget: int) -> Callable[[int], None]:
        """``report(tokens)`` for a loop of at most ``budget`` steps: calls ``progress`` every 1%."""
        if self.progress is None:
            return lambda tokens: None
        every, last = max(1, budget // 100), [0]

        def report(tokens: int) -> None:
            if tokens - last[0] >= every or tokens >= budget:
                last[0] = tokens
                self.progress(min(tokens, budget), budget)

        return report

    def _head_positions(self, batch: Any, state: _Rows, heads: list[list[int]], B: int) -> None:
        """``output_positions: next``: the last forced head token of a prefilled image (its level start)
        predicts the first code, so it carries that code's position, as in training."""
        embeds = batch.inputs_embeds
        for r, h in enumerate(heads):
            if not h:
                continue
            g = state.grid[:, r, len(h) - 1]
            if int(g[0]) < 0:
                continue
            pos = self.model.projectors[self.model.layout.codebooks[int(g[0])].name].positions(g[1:2], g[2:3])[0]
            for row in range(r, embeds.shape[0], B):  # the conditional row and its unconditional twin
                embeds[row, -1] = embeds[row, -1] + pos.to(embeds.dtype)

    def _loop(self, batch: Any, state: _Rows, guide: bool) -> torch.Tensor:
        """Sample, then feed the sampled token together with every forced token that follows it in
        all rows (end-of-line, level changes, ...), so aligned rows need one forward per code."""
        backbone = self.model.backbone
        B = state.tmpl.shape[0]
        dev = state.tmpl.device
        N, T0 = batch.attention_mask.shape
        mask = torch.ones((N, T0 + int(state.budget.max())), dtype=batch.attention_mask.dtype, device=dev)
        mask[:, :T0] = batch.attention_mask
        next_pos, cur = batch.attention_mask.sum(1), T0
        if isinstance(self.seed, int):
            gen = torch.Generator(device=dev).manual_seed(self.seed)
        else:  # a row draws at most once per token of its budget
            gen = RowDraws(self.seed, max(1, int(state.budget.max())), dev)
        table = torch.tensor([[s.temperature, s.top_k or 0, s.top_p] for s in self.sampling], device=dev)
        cache = backbone.new_cache() if isinstance(backbone, IncrementalCache) else None
        out = backbone(
            batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            past_key_values=cache,
            position_ids=batch.position_ids,
            use_cache=True,
        )
        logits, cache = out.logits[:, -1], out.past_key_values
        produced: list[torch.Tensor] = []
        report = self._reporter(int(state.budget.max()))
        positions = state.grid is not None  # model.image_positions: track the template position of each fed token
        while not bool(state.done.all()):
            lo, hi, extra, level, slot, forced = state.legal()
            tok = lo.clone()
            free = ~forced
            if bool(free.any()):
                tok[free] = self._sample(
                    logits[:B], logits[B:] if guide else None, free, slot, lo, hi, extra, level, table, gen
                )
            feed, at = [tok], [state.pos.clone()] if positions else []
            produced.append(state.advance(tok))
            report(len(produced))
            while not bool(state.done.all()):  # fold the forced tokens every row has next
                lo, _, _, _, _, forced = state.legal()
                if not bool(forced.all()):
                    break
                feed.append(lo)
                if positions:
                    at.append(state.pos.clone())
                produced.append(state.advance(lo))
            if bool(state.done.all()):
                break
            k = len(feed)
            ids = torch.stack(feed, 1)
            embeds = self._embed(ids, state.grid_at(torch.stack(at, 1)) if positions else None)
            embeds = torch.cat([embeds, embeds]) if guide else embeds
            out = backbone(
                embeds,
                attention_mask=mask[:, : cur + k],
                past_key_values=cache,
                position_ids=next_pos[:, None] + torch.arange(k, device=dev),
                use_cache=True,
            )
            next_pos, cur = next_pos + k, cur + k
            logits, cache = out.logits[:, -1], out.past_key_values
        return torch.stack(produced, 1) if produced else torch.zeros((B, 0), dtype=torch.long, device=dev)

    def _embed(self, ids: torch.Tensor, grid: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings of fed ids (B, k), plus the image position embeddings of code tokens
        (``grid``: codebook index / row / col per token, as in training's ``assemble``; None: off)."""
        embeds = self.model.backbone.embed(ids)
        if grid is not None:
            for i, cb in enumerate(self.model.layout.codebooks):
                hit = grid[0] == i
                if bool(hit.any()):
                    pos = self.model.projectors[cb.name].positions(grid[1][hit], grid[2][hit])
                    embeds[hit] = embeds[hit] + pos.to(embeds.dtype)
        return embeds

    def _sample(self, logits_c, logits_u, free, slot, lo, hi, extra, level, table, gen) -> torch.Tensor:
        """Next ids of the rows in ``free`` (not forced): mask, guide, filter, sample."""
        lo, hi, extra, level, slot = lo[free], hi[free], extra[free], level[free], slot[free]
        has_extra = extra >= 0
        wlo, whi = torch.stack(
            [
                torch.minimum(lo, torch.where(has_extra, extra, lo)).min(),
                torch.maximum(hi, torch.where(has_extra, extra + 1, hi)).max(),
            ]
        ).tolist()
        ids = torch.arange(wlo, whi, device=lo.device)
        allowed = ((ids >= lo[:, None]) & (ids < hi[:, None])) | (ids == extra[:, None])
        neg = float("-inf")
        x = logits_c[free, wlo:whi].float().masked_fill(~allowed, neg)
        if logits_u is not None:
            xu = logits_u[free, wlo:whi].float().masked_fill(~allowed, neg)
            x = torch.where(slot[:, None], guided_logprobs(x, xu, self.cfg), x).masked_fill(~allowed, neg)
        t, k, p = table[level].unbind(1)
        x = filter_logits(x, t, k.long(), p, self._max_k, self._use_top_p, self._every_top_k)
        pick = x.argmax(-1)
        if self._draws and isinstance(gen, RowDraws):
            drawn = gen.draw(x, free.nonzero()[:, 0])
            pick = torch.where(t > 0, drawn, pick)
        elif self._draws:
            drawn = torch.multinomial(torch.softmax(x, -1), 1, generator=gen)[:, 0]
            pick = torch.where(t > 0, drawn, pick)
        return pick + wlo


# ---------------------------------------------------------------- task-level API


def _sizes(sizes, n: int) -> list[tuple[int, int]]:
    if isinstance(sizes, tuple) and len(sizes) == 2 and all(isinstance(s, int) for s in sizes):
        return [sizes] * n
    sizes = [tuple(s) for s in sizes]
    if len(sizes) != n:
        raise ValueError(f"got {len(sizes)} sizes for {n} prompts")
    return sizes


def _codes(model, answers, sizes) -> list[dict[str, torch.Tensor]]:
    out = []
    for ids, size in zip(answers, sizes):
        out.append(parse_image_ids(model.layout, ids[:-1], model.tokenizer.grid(*size)).codes)
    return out


def sample_images(
    model: Any,
    prompts: Sequence[Sequence[Part]],
    uncond: Sequence[Sequence[Part]] | None,
    sizes,
    cfg: float = 1.0,
    seed: int | Sequence[int] = 0,
    temperature=1.0,
    top_k=None,
    top_p=1.0,
    skip_unit_guidance: bool = True,
    cache: str = "dynamic",
    compile: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Images for arbitrary prompt parts (with matching unconditional prompts when ``cfg != 1``);
    ``seed``: one for the batch or one per prompt; ``cache`` / ``compile``: the decode loop,
    ``progress(tokens, budget)`` a callback as it runs (:class:`StructuredSampler`)."""
    sizes = _sizes(sizes, len(prompts))
    if cfg != 1.0 and uncond is None:
        raise ValueError("guidance (cfg != 1) needs unconditional prompts")
    table = sampling_table(model, temperature, top_k, top_p)
    sampler = StructuredSampler(
        model, table, cfg, seed, skip_unit_guidance, cache=cache, compile=compile, progress=progress
    )
    templates = [image_template(model, s, sampler.eos) for s in sizes]
    answers = sampler.run(prompts, templates, uncond)
    return _codes(model, answers, sizes)


SAMPLING_MODES = ("structured", "official")


def _official(model, task, cond, unc, sizes, cfg, seed, temperature, top_k, top_p, **kw):
    """The official sampling mode (``illume_kit.model.official_sampling``), one prompt at a time."""
    from illume_kit.model.official_sampling import official_images, official_settings

    settings = official_settings(model, task, cfg, temperature, top_k, top_p, **kw)
    return official_images(model, cond, unc if settings.cfg != 1 else None, sizes, settings, seed)


def _structured(temperature, top_k, top_p, sampling: str) -> tuple:
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"unknown sampling mode {sampling!r}; modes are {', '.join(SAMPLING_MODES)}")
    return (1.0 if temperature is None else temperature), top_k, (1.0 if top_p is None else top_p)


def generate_images(
    model: Any,
    prompts: Sequence[str],
    sizes,
    cfg: float = 2.0,
    seed: int | Sequence[int] = 0,
    temperature=None,
    top_k=None,
    top_p=None,
    sampling: str = "structured",
    **kw,
) -> list[dict[str, torch.Tensor]]:
    """Text-to-image: captions -> per-codebook code grids (LongTensor (h, w)) of the requested sizes.

    ``sizes`` is one (H, W) for all or one per prompt; the unconditional branch is the unconditional
    text-to-image prompt at the same size. ``sampling``: ``structured`` (this module's sampler;
    temperature / top_k / top_p None: 1 / off / 1; ``kw``: ``skip_unit_guidance``, ``cache``,
    ``compile``, ``progress``) or ``official``
    (``illume_kit.model.official_sampling``: None takes the official recommendation; ``kw``:
    ``rewarp``, ``repetition_penalty``, ``max_new_tokens``).
    """
    sizes = _sizes(sizes, len(prompts))
    style = style_of(model)
    cond = [style.t2i_prompt(p, s) for p, s in zip(prompts, sizes)]
    unc = [style.t2i_prompt(None, s) for s in sizes]
    if sampling == "official":
        return _official(model, "generate", cond, unc, sizes, cfg, seed, temperature, top_k, top_p, **kw)
    temperature, top_k, top_p = _structured(temperature, top_k, top_p, sampling)
    return sample_images(model, cond, unc, sizes, cfg, seed, temperature, top_k, top_p, **kw)


def edit_images(
    model: Any,
    images: Sequence[torch.Tensor] | torch.Tensor,
    instructions: Sequence[str],
    cfg: float = 1.5,
    seed: int | Sequence[int] = 0,
    temperature=None,
    top_k=None,
    top_p=None,
    sampling: str = "structured",
    **kw,
) -> list[dict[str, torch.Tensor]]:
    """Editing: (source image, instruction) -> codes at the source size; the unconditional branch
    is the same image with the instruction dropped. ``sampling`` and the settings as in
    ``generate_images``."""
    images = list(images)
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    order = getattr(model, "edit_order", "image_first")  # as the model was trained
    style = style_of(model)
    cond = [style.edit_prompt(im, ins, order=order) for im, ins in zip(images, instructions)]
    unc = [style.edit_prompt(im, None, order=order) for im in images]
    if sampling == "official":
        return _official(model, "edit", cond, unc, sizes, cfg, seed, temperature, top_k, top_p, **kw)
    temperature, top_k, top_p = _structured(temperature, top_k, top_p, sampling)
    return sample_images(model, cond, unc, sizes, cfg, seed, temperature, top_k, top_p, **kw)


def answer(
    model: Any, images: Sequence[torch.Tensor] | torch.Tensor, questions: Sequence[str], max_new_tokens: int = 32
) -> list[str]:
    """Understanding, greedy: (image, question) -> answer text (up to eos)."""
    sampler = StructuredSampler(model, sampling_table(model, temperature=0.0))
    prompts = [style_of(model).und_prompt(im, q) for im, q in zip(list(images), questions)]
    outs = sampler.run(prompts, [None] * len(prompts), max_new_tokens=max_new_tokens)
    tok = model.backbone.text_tokenizer
    return [tok.decode([t for t in ids if t != sampler.eos], skip_special_tokens=True).strip() for ids in outs]


@torch.no_grad()
def decode_images(model: Any, codes: Sequence[Mapping[str, torch.Tensor]], **sampling: Any) -> list[torch.Tensor]:
    """Per-image code grids -> images (3, H, W) in [0, 1] through ``model.detokenizer``, batched by grid."""
    if model.detokenizer is None:
        raise ValueError("this model has no detokenizer: compose it with one to decode images")
    out: list[torch.Tensor | None] = [None] * len(codes)
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(codes):
        groups.setdefault(tuple((k, tuple(v.shape)) for k, v in sorted(c.items())), []).append(i)
    dev = next(model.backbone.parameters()).device
    for idx in groups.values():
        stacked = {k: torch.stack([codes[i][k] for i in idx]).to(dev) for k in codes[idx[0]]}
        imgs = model.detokenizer.decode(stacked, **sampling)
        for j, i in enumerate(idx):
            out[i] = imgs[j]
    return out  # type: ignore[return-value]
