"""Image tokens per second: the structured sampler's decode loops vs a reference-style ``generate`` baseline.

    python bench/generation.py [--sizes 256 512] [--batches 1 8] [--loops dynamic static compiled unpacked]
                               [--repeat 3] [--device cpu] [--threads 1]

Every row decodes the same text-to-image prompts with the same model (FSQ example tokenizer + a
Qwen2 of hidden 256 / 4 layers, random init), classifier-free guidance 2.0 and the same per-level
top-k / top-p. The baseline is built the way ILLUME+ does it (reference §3.4): transformers'
``generate`` on the underlying HF model, with a logits processor that runs the unconditional branch
as a second forward with its own KV cache and applies the hard masks and the per-level filters
(HF's own warpers are left as no-ops so nothing is applied twice, unlike the reference). The
structured sampler runs both branches as one batched forward, with one of its decode loops:

- ``dynamic``: a growing KV cache, forced tokens folded into the next forward (the default);
- ``static``: a KV cache preallocated for the batch, one fixed-shape step per token, no host sync
  (``cache="static"``);
- ``compiled``: that step through ``torch.compile`` (CUDA graphs on CUDA, ``mode="reduce-overhead"``;
  compiling happens in the warm-up round);
- ``unpacked`` (only when named): the compiled step with the CPU's linear layers on the plain weights
  instead of oneDNN-packed ones (``illume_kit.model.packed_linear``), the packing's ablation.

Each row's grid is checked. The table shows the median over ``--repeat`` interleaved runs after one
warm-up round, and each row's speed-up against the baseline of the same size and batch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from transformers import LogitsProcessor, LogitsProcessorList

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from illume_kit.core.schema import ModelOptions  # noqa: E402
from illume_kit.model import static_loop  # noqa: E402
from illume_kit.model.compose import assemble as compose_assemble  # noqa: E402
from illume_kit.model.image_tokens import parse_image_ids  # noqa: E402
from illume_kit.model.sampler import filter_logits, generate_images, guided_logprobs, image_template, sampling_table  # noqa: E402
from illume_kit.model.sequence import Ids, Sample, assemble  # noqa: E402
from illume_kit.model.tasks import t2i_prompt  # noqa: E402
from illume_kit.plugins.backbones.hf import Qwen2Backbone  # noqa: E402
from illume_kit.plugins.decoders.vq import VQDetokenizer  # noqa: E402

CFG, TOP_K, TOP_P = 2.0, 100, 0.95
PROMPTS = [
    "a small red circle at the top left",
    "a large blue square at the center and a small green star",
    "a purple diamond at the bottom right",
    "two yellow triangles",
    "an orange star at the top center",
    "a small green circle at the middle left and a large red square at the bottom left",
    "a blue triangle",
    "a large purple circle at the center",
]


def build_model(device: str):
    from illume_kit_fsq.model import FSQTokenizer
    from illume_kit_fsq.params import PRESETS

    torch.manual_seed(0)
    tok = FSQTokenizer(FSQTokenizer.Params(**PRESETS["tiny"]))
    bb = Qwen2Backbone(
        Qwen2Backbone.Params(
            hidden_size=256,
            num_layers=4,
            num_heads=4,
            num_kv_heads=2,
            intermediate_size=1024,
            vocab_size=512,
            new_rows_init="normal",
        )
    )
    return compose_assemble(tok, bb, VQDetokenizer(), ModelOptions()).to(device).eval()


class ReferenceStyleProcessor(LogitsProcessor):
    """Unconditional branch as a second forward with its own cache + hard masks + per-level filters."""

    def __init__(self, model, uncond_ids, uncond_mask, templates, prompt_len, cfg, table):
        self.hf, self.lay, self.cfg = model.backbone.model, model.layout, cfg
        self.u_ids, self.u_mask, self.prompt_len = uncond_ids, uncond_mask, prompt_len
        self.tmpl, self.cache = templates, None
        self.cache_kw = model.backbone._cache_kw  # "cache" in transformers >= 5.x, else "past_key_values"
        dev = uncond_ids.device
        self.temp = torch.tensor([s.temperature for s in table], device=dev)
        self.topk = torch.tensor([s.top_k or 0 for s in table], device=dev)
        self.topp = torch.tensor([s.top_p for s in table], device=dev)
        self.cb_lo = torch.tensor([c.start for c in self.lay.codebooks], device=dev)
        self.cb_hi = torch.tensor([c.stop for c in self.lay.codebooks], device=dev)

    def _uncond_logits(self, input_ids):
        if self.cache is None:
            pos = (self.u_mask.cumsum(1) - 1).clamp(min=0)
            out = self.hf(input_ids=self.u_ids, attention_mask=self.u_mask, position_ids=pos, use_cache=True)
        else:
            self.u_mask = torch.cat([self.u_mask, torch.ones_like(self.u_mask[:, :1])], 1)
            pos = self.u_mask.sum(1, keepdim=True) - 1
            out = self.hf(
                input_ids=input_ids[:, -1:],
                attention_mask=self.u_mask,
                position_ids=pos,
                use_cache=True,
                **{self.cache_kw: self.cache},
            )
        self.cache = getattr(out, self.cache_kw)
        return out.logits[:, -1]

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_len
        v = self.tmpl[:, min(step, self.tmpl.shape[1] - 1)]
        slot = v < 0
        cb = (-v - 1).clamp(min=0)
        lo = torch.where(slot, self.cb_lo[cb], v)
        hi = torch.where(slot, self.cb_hi[cb], v + 1)
        ids = torch.arange(scores.shape[1], device=scores.device)
        allowed = (ids >= lo[:, None]) & (ids < hi[:, None])
        uncond = self._uncond_logits(input_ids)
        neg = float("-inf")
        x = scores.float().masked_fill(~allowed, neg)
        if bool(slot.any()):
            mixed = guided_logprobs(x, uncond.float().masked_fill(~allowed, neg), self.cfg)
            x = torch.where(slot[:, None], mixed, x).masked_fill(~allowed, neg)
        level = torch.where(slot, -v, torch.zeros_like(v))
        return filter_logits(x, self.temp[level], self.topk[level], self.topp[level])


def baseline(model, prompts, size, seed):
    torch.manual_seed(seed)
    tok = model.backbone.text_tokenizer
    templates = [image_template(model, size, tok.eos_token_id) for _ in prompts]
    head = templates[0][: next(j for j, v in enumerate(templates[0]) if v < 0)]
    cond = assemble(model, [Sample(t2i_prompt(p, size), [Ids(tuple(head))], eos=False) for p in prompts], "left")
    unc = assemble(model, [Sample(t2i_prompt(None, size), [Ids(tuple(head))], eos=False) for _ in prompts], "left")
    rest = torch.tensor([t[len(head) :] for t in templates], device=cond.input_ids.device)
    proc = ReferenceStyleProcessor(
        model,
        unc.input_ids,
        unc.attention_mask,
        rest,
        cond.input_ids.shape[1],
        CFG,
        sampling_table(model, 1.0, TOP_K, TOP_P),
    )
    with torch.inference_mode():
        out = model.backbone.model.generate(
            input_ids=cond.input_ids,
            attention_mask=cond.attention_mask,
            logits_processor=LogitsProcessorList([proc]),
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=rest.shape[1],
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    grids = model.tokenizer.grid(*size)
    return [
        parse_image_ids(model.layout, head + row[cond.input_ids.shape[1] :].tolist()[:-1], grids).codes for row in out
    ]


def _structured(model, prompts, size, seed, **loop):
    return generate_images(model, prompts, size, cfg=CFG, seed=seed, temperature=1.0, top_k=TOP_K, top_p=TOP_P, **loop)


def dynamic(model, prompts, size, seed):
    return _structured(model, prompts, size, seed)


def static(model, prompts, size, seed):
    return _structured(model, prompts, size, seed, cache="static")


def compiled(model, prompts, size, seed):
    return _structured(model, prompts, size, seed, cache="static", compile=True)


def unpacked(model, prompts, size, seed):
    packing, static_loop.PACK_LINEARS = static_loop.PACK_LINEARS, False
    try:
        return compiled(model, prompts, size, seed)
    finally:
        static_loop.PACK_LINEARS = packing


LOOPS = {
    "dynamic": (dynamic, "dynamic cache"),
    "static": (static, "static cache"),
    "compiled": (compiled, "static cache, compiled"),
    "unpacked": (unpacked, "compiled, weights not packed"),
}
DEFAULT_LOOPS = ["dynamic", "static", "compiled"]


def timed(fns, model, prompts, size, repeat):
    """Median seconds per call of each fn; repeats are interleaved so machine load drifts hit both."""
    grids = model.tokenizer.grid(*size)
    times = [[] for _ in fns]
    for r in range(repeat + 1):  # the first round is a warm-up
        for i, fn in enumerate(fns):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t = time.perf_counter()
            codes = fn(model, prompts, size, r)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if r:
                times[i].append(time.perf_counter() - t)
            assert all(tuple(c[k].shape) == grids[k] for c in codes for k in grids), f"{fn.__name__}: wrong grid"
    return [statistics.median(t) for t in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--sizes", "--size", type=int, nargs="+", default=[256], help="square image sides in pixels (FSQ stride 16)"
    )
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument(
        "--loops",
        nargs="+",
        choices=list(LOOPS),
        default=DEFAULT_LOOPS,
        help="decode loops to time (unpacked: an ablation)",
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the dev box is shared)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model(args.device)
    table = Table(title=f"text-to-image decoding, cfg {CFG}, top-k {TOP_K}, top-p {TOP_P}, {args.device}")
    for col in ("size", "tokens / image", "batch", "decode", "image tok/s", "vs reference"):
        table.add_column(col, justify="left" if col == "decode" else "right")
    for side in args.sizes:
        size = (side, side)
        per_image = sum(h * w for h, w in model.tokenizer.grid(*size).values())
        for b in args.batches:
            prompts = (PROMPTS * (b // len(PROMPTS) + 1))[:b]
            fns = [baseline] + [LOOPS[name][0] for name in args.loops]
            times = timed(fns, model, prompts, size, args.repeat)
            n = per_image * b
            names = ["reference generate"] + [LOOPS[name][1] for name in args.loops]
            for j, (name, t) in enumerate(zip(names, times)):
                speed = "1.00x" if j == 0 else f"[bold]{times[0] / t:.2f}x[/]"
                table.add_row(f"{side}²", str(per_image), str(b), name, f"{n / t:,.0f}", speed)
            table.add_section()
    Console().print(table)


if __name__ == "__main__":
    main()
