"""The structured sampler's static decode loop (``cache: static``, optionally ``compile: true``).

The dynamic loop's decoding (:meth:`StructuredSampler._loop`), at fixed shapes so that one step can be
compiled (and on CUDA captured as a CUDA graph, ``mode="reduce-overhead"``):

- the KV cache is preallocated for the longest structured sequence of the batch (the backbone's
  ``new_static_cache``), conditional and unconditional rows in one batch;
- every step feeds exactly one token per row, forced ones included; its attention mask is a 4D
  window over the cache, the filled positions rounded up to ``WINDOW`` (the backbone then reads only
  that much of the cache), marked dynamic for the compiler so that every window length runs one graph;
- dynamo checks its guards on a window's first step only: the later ones run the same graph on the
  same model, shapes and types (``skip_guard_eval_unsafe``);
- on the CPU the compiled step's linear layers multiply by oneDNN-packed copies of the weights,
  packed once per loop (``illume_kit.model.packed_linear``): a GEMM of a few rows otherwise repacks
  its weight every call;
- the per-row structure (template position, image start, budget, done) lives in tensors, and the
  sampling math (hard masks, guidance, per-level temperature / top-k / top-p, the draw) runs over one
  id window fixed for the batch, inside the step: nothing in a step reads a tensor on the host;
- randomness is the dynamic loop's, draw for draw: per-row seeds read their rows' uniforms
  (``illume_kit.model.sampler.RowDraws``); one seed reproduces ``torch.multinomial``'s draws (an
  argmax of ``p / q`` with ``q ~ Exp(1)`` of the same shape, from the same generator) from the
  host-side schedule of which rows sample at which step, known ahead when every row follows its
  image template. A row that samples text with one seed for the batch has no schedule known ahead:
  its draws come from a stream of this loop (same distribution, other samples than the dynamic loop).

Tokens equal the dynamic loop's up to float rounding (single-token forwards instead of folded forced
tokens, softmax over a wider window): a draw that falls within rounding of a boundary may differ.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import torch

from illume_kit.core.protocols import StaticKVCache
from illume_kit.model import packed_linear
from illume_kit.model.sampling_ops import (
    advance_rows,
    filter_logits,
    guided_logprobs,
    inverse_cdf,
    legal_ids,
    row_uniforms,
)

# a batch with text rows checks for the end this often (one host sync per CHECK_EVERY tokens)
CHECK_EVERY = 64
# attention reads the filled cache rounded up to a multiple of this many positions: short on the CPU,
# where the step reads its cache from memory; long on CUDA, each length a CUDA graph of its own
WINDOW = {"cuda": 128}
# on the CPU, a compiled step's linear layers multiply by oneDNN-packed weights (model/packed_linear.py)
PACK_LINEARS = True
_COMPILED: dict[str, Any] = {}


def compiled_step(device: torch.device):
    """The compiled step: CUDA graphs on CUDA (``reduce-overhead``), inductor's default elsewhere."""
    mode = "reduce-overhead" if device.type == "cuda" else "default"
    if mode not in _COMPILED:
        _COMPILED[mode] = torch.compile(static_step, mode=mode)
    return _COMPILED[mode]


def static_step(backbone, logits, pos, starts, budget, done, used, noise, mask, next_pos, cache, consts, spec):
    """Sample one token per row from ``logits`` (conditional rows, then unconditional ones), advance
    the rows and feed the tokens: (produced, pos, starts, budget, done, used, logits, next_pos, live)."""
    tmpl, tlen, cb_lo, cb_hi, table, grid, tables, u = consts
    n_text, pad, eos, w0, w1, guide, cfg, max_k, use_top_p, every_k, draw, pack = spec
    B = pos.shape[0]
    lo, hi, extra, level, slot, forced = legal_ids(tmpl, pos, starts, done, cb_lo, cb_hi, n_text, pad)
    ids = torch.arange(w0, w1, device=logits.device)
    allowed = ((ids >= lo[:, None]) & (ids < hi[:, None])) | (ids == extra[:, None])
    allowed = allowed | forced[:, None]  # a forced row's pick is not used: keep its row finite
    neg = float("-inf")
    x = logits[:B, w0:w1].float().masked_fill(~allowed, neg)
    if guide:
        xu = logits[B:, w0:w1].float().masked_fill(~allowed, neg)
        x = torch.where(slot[:, None], guided_logprobs(x, xu, cfg), x).masked_fill(~allowed, neg)
    t, k, p = table[level].unbind(1)
    x = filter_logits(x, t, k.long(), p, max_k, use_top_p, every_k)
    pick = x.argmax(-1)
    if draw == "rows":
        drawn = inverse_cdf(x, u[torch.arange(B, device=u.device), used.clamp(max=u.shape[1] - 1)])
        pick = torch.where(t > 0, drawn, pick)
        used = used + (~forced).long()
    elif draw == "exp":
        drawn = (torch.softmax(x, -1) / noise).argmax(-1)
        pick = torch.where(t > 0, drawn, pick)
    tok = torch.where(forced, lo, pick + w0)
    live = (~done).any()
    produced, new_pos, starts, budget, done = advance_rows(tlen, pos, starts, budget, done, tok, pad, eos)
    embeds = backbone.embed(tok[:, None])
    if grid is not None:  # image position embeddings of the fed code tokens, at their template position
        g = grid.gather(2, pos.clamp(min=0)[None, :, None].expand(3, -1, 1))[:, :, 0]
        g = torch.where(pos[None] >= 0, g, torch.full_like(g, -1))
        for i, (rows, cols) in enumerate(tables):
            e = rows[g[1].clamp(min=0)] + cols[g[2].clamp(min=0)]
            hit = (g[0] == i)[:, None, None]
            embeds = torch.where(hit, embeds + e[:, None].to(embeds.dtype), embeds)
    if guide:
        embeds = torch.cat([embeds, embeds])
    with packed_linear.packed_linears(pack):
        out = backbone(
            embeds, attention_mask=mask, past_key_values=cache, position_ids=next_pos[:, None], use_cache=True
        )
    return produced, new_pos, starts, budget, done, used, out.logits[:, -1], next_pos + 1, live


def _window(model: Any, tmpls: list[list[int]], text_rows: list[bool]) -> tuple[int, int]:
    """The ids any row may sample: the codebooks its template names, text (and the id that starts a
    template) for rows in text."""
    lay = model.layout
    lo, hi = [], []
    for t, text in zip(tmpls, text_rows):
        for v in t:
            if v < 0:
                cb = lay.codebooks[-v - 1]
                lo.append(cb.start)
                hi.append(cb.stop)
        if text:
            lo.append(0)
            hi.append(max(lay.text_vocab_size, (t[0] + 1) if t else 0))
    return (min(lo), max(hi)) if lo else (0, 1)


def _schedule(model: Any, tmpls: list[list[int]], heads: list[list[int]], steps: int):
    """Per step, the rows that sample and their id window ``(rows, lo, hi)`` (None: no row samples):
    every row follows its template, so the dynamic loop's draws are known ahead."""
    cbs = model.layout.codebooks
    out = []
    for s in range(steps):
        rows, lo, hi = [], [], []
        for r, (t, h) in enumerate(zip(tmpls, heads)):
            j = len(h) + s
            if j < len(t) and t[j] < 0:
                rows.append(r)
                lo.append(cbs[-t[j] - 1].start)
                hi.append(cbs[-t[j] - 1].stop)
        out.append((tuple(rows), min(lo), max(hi)) if rows else None)
    return out


def static_loop(sampler: Any, batch: Any, state: Any, guide: bool, tmpls, heads, from_text) -> torch.Tensor:
    """Decode with a preallocated KV cache, one (optionally compiled) step per token; returns the
    produced ids (B, steps) as :meth:`StructuredSampler._loop` does."""
    model = sampler.model
    backbone = model.backbone
    if not isinstance(backbone, StaticKVCache):
        raise ValueError(
            f"cache: static needs a backbone with a preallocated KV cache (new_static_cache); "
            f"{type(backbone).__name__} has none: use cache: dynamic"
        )
    B = state.tmpl.shape[0]
    dev = state.tmpl.device
    N, T0 = batch.attention_mask.shape
    steps = int(state.budget.max()) if B else 0
    if steps <= 0:
        return torch.zeros((B, 0), dtype=torch.long, device=dev)
    width = WINDOW.get(dev.type, 16)
    full = -(-(T0 + steps) // width) * width
    # one position more than any window: no window is the whole cache or mask, so every window's
    # key, value and mask views have the same contiguity and a compiled step stays one graph
    mask = torch.zeros((N, full + 1), dtype=torch.bool, device=dev)
    mask[:, :T0] = batch.attention_mask.bool()
    cache = backbone.new_static_cache(N, full + 1)
    out = backbone(
        batch.inputs_embeds,
        attention_mask=batch.attention_mask,
        past_key_values=cache,
        position_ids=batch.position_ids,
        use_cache=True,
    )
    # contiguous as every step's own logits are, so the compiled step sees one layout (no recompile)
    logits, next_pos = out.logits[:, -1].contiguous(), batch.attention_mask.sum(1)
    text_rows = [not t or ft for t, ft in zip(tmpls, from_text)]
    known = not any(text_rows)  # every row follows its template: the whole schedule is known ahead
    w0, w1 = _window(model, tmpls, text_rows)
    table = torch.tensor([[s.temperature, s.top_k or 0, s.top_p] for s in sampler.sampling], device=dev)
    used = torch.zeros(B, dtype=torch.long, device=dev)
    u, gen, schedule = None, None, None
    if not sampler._draws:
        draw = ""
    elif isinstance(sampler.seed, int):
        draw, gen = "exp", torch.Generator(device=dev).manual_seed(sampler.seed)
        schedule = _schedule(model, tmpls, heads, steps) if known else None
    else:
        draw, u = "rows", row_uniforms(sampler.seed, steps, dev)
    grid, tables = state.grid, ()
    if grid is not None:
        tables = tuple(
            (model.projectors[cb.name].row_embed, model.projectors[cb.name].col_embed) for cb in model.layout.codebooks
        )
        for i, cb in enumerate(model.layout.codebooks):  # the projector's own check of the grid sides, once
            hit = grid[0] == i
            model.projectors[cb.name].positions(grid[1][hit], grid[2][hit])
    consts = (state.tmpl, state.tlen, state.cb_lo, state.cb_hi, table, grid, tables, u)
    # eager, the routing's Python dispatch per linear costs more than the packing saves; for a
    # single row the CPU's GEMV beats the packed GEMM (bench/packed_linear.py)
    pack = PACK_LINEARS and sampler.compile and N > 1 and dev.type == "cpu" and packed_linear.available()
    spec = (
        state.n_text,
        state.pad,
        state.eos,
        w0,
        w1,
        guide,
        sampler.cfg,
        sampler._max_k,
        sampler._use_top_p,
        sampler._every_top_k,
        draw,
        pack,
    )
    step = compiled_step(dev) if sampler.compile else static_step
    graphs = sampler.compile and dev.type == "cuda"
    pos, starts, budget, done = state.pos, state.starts, state.budget, state.done
    ones = torch.ones((B, w1 - w0), device=dev)
    row_index: dict[tuple[int, ...], torch.Tensor] = {}
    windows: dict[int, torch.Tensor] = {}
    guarded: set[torch.Tensor] = set()

    def window(s: int) -> torch.Tensor:
        """Step s's mask: the filled cache positions rounded up to ``width``, a 4D (N, 1, 1, L) view."""
        n = -(-(T0 + s + 1) // width) * width
        if n not in windows:
            windows[n] = mask[:, None, None, :n]
            if sampler.compile:  # one graph for every window length
                torch._dynamo.maybe_mark_dynamic(windows[n], 3)
        return windows[n]

    produced, lives = [], []
    # dynamo's stance without guard checks, entered after a window's first step (which checks them
    # and compiles if it must): the later steps run the same graph on the same model, shapes and
    # types, and the check costs as much as a small step's kernels. Entered once per window, as
    # entering costs about as much again.
    report = sampler._reporter(steps)
    unguarded = ExitStack()
    with packed_linear.packing_store(), unguarded:
        for s in range(steps):
            noise = ones
            if draw == "exp" and schedule is None:
                noise = torch.empty((B, w1 - w0), device=dev).exponential_(1, generator=gen)
            elif draw == "exp" and schedule[s] is not None:  # the dynamic loop's multinomial draw of this step
                rows, a, b = schedule[s]
                if rows not in row_index:
                    row_index[rows] = torch.tensor(rows, device=dev)
                noise = ones.clone()
                noise[row_index[rows], a - w0 : b - w0] = torch.empty((len(rows), b - a), device=dev).exponential_(
                    1, generator=gen
                )
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            m = window(s)
            first = sampler.compile and m not in guarded
            if first:
                unguarded.close()
            mask[:, T0 + s] = True  # the position this step fills: a window shows no unfilled one
            res = step(backbone, logits, pos, starts, budget, done, used, noise, m, next_pos, cache, consts, spec)
            if first:
                guarded.add(m)
                unguarded.enter_context(torch.compiler.set_stance("default", skip_guard_eval_unsafe=True))
            if graphs:  # a replay overwrites its outputs: keep copies
                res = tuple(r.clone() for r in res)
            tok, pos, starts, budget, done, used, logits, next_pos, live = res
            produced.append(tok)
            lives.append(live)
            report(s + 1)
            if not known and (s + 1) % CHECK_EVERY == 0 and bool(done.all()):
                break
    n = steps if known else int(torch.stack(lives).sum())
    return torch.stack(produced, 1)[:, :n]
