"""The structured sampler's per-token math on tensors: legal ids and the advance of each row's
template state, classifier-free guidance, per-row filters, draws. Shared by the dynamic loop
(``illume_kit.model.sampler``) and the static one (``illume_kit.model.static_loop``); nothing here
reads a tensor on the host unless a caller leaves a host-side flag out."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def guided_logprobs(logits_c: torch.Tensor, logits_u: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance in log space: ``s * (logp_c - logp_u) + logp_u``."""
    lc, lu = torch.log_softmax(logits_c.float(), -1), torch.log_softmax(logits_u.float(), -1)
    return scale * (lc - lu) + lu


def filter_logits(
    x: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    max_k: int | None = None,
    use_top_p: bool | None = None,
    every_row_top_k: bool = False,
) -> torch.Tensor:
    """Per-row temperature (0 = keep as is, the caller takes the argmax), top-k (0 = off), top-p.

    ``max_k`` (largest k of any row, 0 = no top-k) and ``use_top_p`` let a caller that knows them on
    the host skip a device sync each; ``every_row_top_k`` (every row has a k) lets top-p run over the
    ``max_k`` largest logits, already sorted by top-k, instead of sorting the whole row."""
    x = x / torch.where(temperature > 0, temperature, torch.ones_like(temperature))[:, None]
    max_k = int(top_k.max()) if max_k is None else max_k
    if max_k > 0:
        kmax = min(max_k, x.shape[-1])
        vals, idx = x.topk(kmax, dim=-1)
        kth = vals.gather(1, (top_k.clamp(1, kmax) - 1)[:, None])
        x = x.masked_fill((x < kth) & (top_k > 0)[:, None], float("-inf"))
    if bool((top_p < 1).any()) if use_top_p is None else use_top_p:
        if max_k > 0 and every_row_top_k:  # what top-k kept is a prefix of its sorted values
            sx, order = vals.masked_fill(vals < kth, float("-inf")), idx
        else:
            sx, order = x.sort(dim=-1, descending=True)
        p = torch.softmax(sx, -1)
        drop = (p.cumsum(-1) - p) > top_p[:, None]  # keeps the smallest prefix with mass >= top_p
        x = x.masked_fill(torch.zeros_like(x, dtype=torch.bool).scatter(1, order, drop), float("-inf"))
    return x


def legal_ids(tmpl, pos, starts, done, cb_lo, cb_hi, n_text: int, pad: int):
    """The sampler's legal ids per row on the state tensors (tensor ops only: no host sync)."""
    in_tmpl = pos >= 0
    v = tmpl.gather(1, pos.clamp(min=0)[:, None])[:, 0]
    slot = in_tmpl & (v < 0)
    level = torch.where(slot, -v, torch.zeros_like(v))
    cb = (level - 1).clamp(min=0)
    lo = torch.where(slot, cb_lo[cb], torch.where(in_tmpl, v, torch.zeros_like(v)))
    hi = torch.where(slot, cb_hi[cb], torch.where(in_tmpl, v + 1, torch.full_like(v, n_text)))
    extra = torch.where(in_tmpl, torch.full_like(starts, -1), starts)
    lo = torch.where(done, torch.full_like(lo, pad), lo)
    return lo, hi, extra, level, slot, (in_tmpl & ~slot) | done


def advance_rows(tlen, pos, starts, budget, done, tok, pad: int, eos: int):
    """The sampler's row advance on the state tensors: (produced, pos, starts, budget, done)."""
    active = ~done
    in_tmpl = pos >= 0
    entered = active & ~in_tmpl & (starts >= 0) & (tok == starts)
    nxt = torch.where(in_tmpl, pos + 1, pos)
    nxt = torch.where(in_tmpl & (nxt >= tlen), torch.full_like(nxt, -1), nxt)
    pos = torch.where(entered, torch.ones_like(nxt), nxt)
    starts = torch.where(entered, torch.full_like(starts, -1), starts)
    budget = budget - active.long()
    done = done | (active & (tok == eos)) | (budget <= 0)
    return torch.where(active, tok, torch.full_like(tok, pad)), pos, starts, budget, done


def row_uniforms(seeds: Sequence[int], draws: int, dev: torch.device) -> torch.Tensor:
    """(rows, draws) float64 uniforms, row ``r`` from a CPU generator seeded ``seeds[r]`` (a CPU
    stream is the same on every device)."""
    streams = [torch.rand(draws, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64) for s in seeds]
    return torch.stack(streams).to(dev) if streams else torch.zeros((0, draws), dtype=torch.float64, device=dev)


def inverse_cdf(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One index per row of ``x`` (filtered logits) drawn from softmax(x) by the uniforms ``u``."""
    p = torch.softmax(x.double(), -1)
    cdf = p.cumsum(-1)
    pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    # u * total may round up to the total: take the last id with mass, never a masked one
    last = x.shape[-1] - 1 - (p > 0).flip(-1).long().argmax(-1)
    return torch.where(pick > last, last, pick)
