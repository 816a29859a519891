"""Where a trained unified model on the shapes world falls short: nine measurements, one table.

    python bench/unified_diagnostics.py runs/dualvitok_qwen2_mllm_tiny/checkpoint [-n 160]

1. "where is the <colour> <shape>?" on one-object scenes, scored per word: is the row word right
   (top/bottom: its first token), is the column word right given the true row (teacher forced)?
2. the same with the row (or column) table of the image positions replaced by its mean at inference:
   if a score does not move, the model does not read that table (``model.image_positions`` only);
3. a linear probe (logistic regression on 60% of the scenes, scored on the rest) on the last hidden
   state at the answer position: is the column / row there at all?
4. code stability under an edit: the share of each level's codes that stay the same in the cells the
   edit leaves alone (a copyable level keeps ~all of them) and in the cells it changes;
5. cross-entropy per code of each level, teacher forced, text-to-image and editing: which level
   generation cannot predict;
6. reconstruction prompts (the edit prompt without an instruction): the share of codes of each level
   the model gives back, next to the share of the most common code (what drawing background scores);
7. which level carries the scene (tokenizer + detokenizer only, no LLM): edit targets decoded from
   one level of the target and the other level of the source, read by the shapes probe against the
   target. The level whose swap keeps the scene is the one a generator must get right first
   (``model.level_order``).
8. does the answer look where the question points? "what colour / shape is the shape at the <cell>?"
   about two-object scenes: per layer, the head whose attention from the answer position splits most
   towards the asked cell, as the asked cell's share of the attention on the two occupied cells
   (0.50: the position word does not steer the answer's attention at all). Discrete image input only
   (the input ids must hold the codes).

9. do edits copy what they leave alone? For held-out edits sampled as ``illume-kit eval`` does (cfg
   1.5), per level: the share of the tokens over unchanged pixels that the model gives back as the
   source's code, next to the share of those the tokenizer itself re-encodes unchanged (what an
   ``edit_target: encoded`` model is trained to write there).

Built for the 2x2 world of ``recipes/base/shapes_2x2.yaml`` (4x4 codes per cell on an 8x8 grid
generalise to any grid side divisible by the world's); questions and edits come from the
checkpoint's own recipe, held-out (``val``) split.
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from illume_kit.core.recipe import load_recipe
from illume_kit.data.build import build_dataset
from illume_kit.eval.probe import load_probe, read_scenes, score
from illume_kit.eval.tasks import question_kind
from illume_kit.model.checkpoint import load_checkpoint
from illume_kit.model.sampler import decode_images, edit_images
from illume_kit.model.sequence import IGNORE, assemble, encode_images, unchanged_tokens
from illume_kit.model.tasks import edit_sample, t2i_sample, und_sample


def _first_answer_index(batch, row: int) -> int:
    return int((batch.labels[row] != IGNORE).nonzero().flatten()[0])


def where_words(model, items, mean_table: str | None = None) -> tuple[float, float, list, list, list]:
    """Row / column word accuracy of "where is ..." on one-object scenes, and the answer-position
    hidden states with their (column, row) labels for the probe."""
    tok = model.backbone.text_tokenizer
    ids = {p: tok(p, add_special_tokens=False)["input_ids"] for p in ("top left", "top right", "bottom left")}
    row_ids = {"top": ids["top left"][0], "bottom": ids["bottom left"][0]}
    col_ids = {"left": ids["top left"][1], "right": ids["top right"][1]}
    saved = {}
    if mean_table:
        for name, p in model.projectors.items():
            table = getattr(p, f"{mean_table}_embed")
            saved[name] = table.detach().clone()
            with torch.no_grad():
                side = int(model.tokenizer.grid(*items[0]["image"].shape[-2:])[name][0])
                table[:side] = table[:side].mean(0)
    rows, cols, hidden, ycol, yrow = [], [], [], [], []
    try:
        for it in items:
            (o,) = it["attributes"]["objects"]
            b = assemble(model, [und_sample(it["image"], f"where is the {o['color']} {o['shape']}?", o["position"])])
            with torch.no_grad():
                out = model.backbone.model(
                    inputs_embeds=b.inputs_embeds,
                    attention_mask=b.attention_mask,
                    position_ids=b.position_ids,
                    output_hidden_states=True,
                )
            at = _first_answer_index(b, 0)
            lp = out.logits[0]
            want_row, want_col = o["position"].split()
            rows.append(max(row_ids, key=lambda w: lp[at - 1, row_ids[w]].item()) == want_row)
            cols.append(max(col_ids, key=lambda w: lp[at, col_ids[w]].item()) == want_col)
            hidden.append(out.hidden_states[-1][0, at - 1].detach())
            ycol.append(want_col == "right")
            yrow.append(want_row == "bottom")
    finally:
        with torch.no_grad():
            for name, table in saved.items():
                getattr(model.projectors[name], f"{mean_table}_embed").copy_(table)
    return sum(rows) / len(rows), sum(cols) / len(cols), hidden, ycol, yrow


def linear_probe(x: torch.Tensor, y: torch.Tensor, train: float = 0.6, steps: int = 300) -> float:
    """Held-out accuracy of an L2-regularised logistic regression on standardised features."""
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    n = int(len(y) * train)
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(x[:n] @ w + b, y[:n]) + 1e-2 * w.square().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (((x[n:] @ w + b) > 0).float() == y[n:]).float().mean().item()


def _cells(scene: dict) -> dict:
    return {tuple(o["cell"]): (o["shape"], o["color"], o["size"]) for o in scene["objects"]}


def code_stability(model, items) -> dict[str, tuple[float, float]]:
    """Per level: share of codes equal in source and edit target, in unchanged / changed cells."""
    src = encode_images(model, [it["image"] for it in items])
    tgt = encode_images(model, [it["edit"]["image"] for it in items])
    out = {}
    for level in src[0]["codes"]:
        same, diff = [], []
        for it, a, b in zip(items, src, tgt):
            grid = it["attributes"]["grid"]
            eq = (a["codes"][level] == b["codes"][level]).float()
            h, w = eq.shape
            before, after = _cells(it["attributes"]), _cells(it["edit"]["attributes"])
            for r in range(grid):
                for c in range(grid):
                    block = eq[r * h // grid : (r + 1) * h // grid, c * w // grid : (c + 1) * w // grid].mean().item()
                    (same if before.get((r, c)) == after.get((r, c)) else diff).append(block)
        out[level] = (statistics.mean(same), statistics.mean(diff) if diff else float("nan"))
    return out


def level_ce(model, items) -> dict[tuple[str, str], float]:
    """Teacher-forced cross-entropy per code of each level, for text-to-image and editing."""
    order = getattr(model, "edit_order", "image_first")
    out = {}
    for task in ("t2i", "edit"):
        samples = [
            t2i_sample(it["image"], it["caption"])
            if task == "t2i"
            else edit_sample(it["image"], it["edit"]["instruction"], it["edit"]["image"], order)
            for it in items
        ]
        b = assemble(model, samples)
        with torch.no_grad():
            logits = model.backbone(
                b.inputs_embeds, attention_mask=b.attention_mask, position_ids=b.position_ids
            ).logits
        labels = b.labels[:, 1:]
        ce = F.cross_entropy(
            logits[:, :-1].flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="none"
        ).view_as(labels)
        for cb in model.layout.codebooks:
            sel = (labels >= cb.start) & (labels < cb.stop)
            out[(task, cb.name)] = ce[sel].mean().item()
    return out


def reconstruction_copy(model, items) -> dict[str, tuple[float, float]]:
    """Per level: share of codes a reconstruction prompt gives back, and the most common code's share."""
    images = [it["image"] for it in items]
    enc = encode_images(model, images)
    with torch.no_grad():
        got = edit_images(model, images, [None] * len(images), cfg=1.0, seed=0)
    out = {}
    for level in enc[0]["codes"]:
        back = torch.stack([(g[level] == e["codes"][level]).float().mean() for g, e in zip(got, enc)]).mean().item()
        codes = Counter(torch.cat([e["codes"][level].flatten() for e in enc]).tolist())
        out[level] = (back, codes.most_common(1)[0][1] / sum(codes.values()))
    return out


def edit_copy(model, items, cfg: float = 1.5) -> dict[str, tuple[float, float]]:
    """Per level, over the tokens whose pixels an edit leaves alone: the share the sampled edit gives
    back as the source's code, and the share the re-encoded target keeps."""
    sources = [it["image"] for it in items]
    with torch.no_grad():
        got = edit_images(model, sources, [it["edit"]["instruction"] for it in items], cfg=cfg, seed=0)
    src = encode_images(model, sources, need_features=False)
    tgt = encode_images(model, [it["edit"]["image"] for it in items], need_features=False)
    tally = {level: [0, 0, 0] for level in src[0]["codes"]}  # copied, kept by re-encoding, tokens
    for it, g, a, b in zip(items, got, src, tgt):
        keeps = unchanged_tokens(it["edit"]["image"], it["image"], {k: tuple(v.shape) for k, v in a["codes"].items()})
        for level, keep in keeps.items():
            t = tally[level]
            t[0] += int((g[level].cpu() == a["codes"][level].cpu())[keep].sum())
            t[1] += int((b["codes"][level] == a["codes"][level])[keep].sum())
            t[2] += int(keep.sum())
    return {level: (c / max(n, 1), k / max(n, 1)) for level, (c, k, n) in tally.items()}


def level_swap(model, items) -> dict[str, float]:
    """Share of edit targets the probe reads right when decoded from mixed source / target levels."""
    probe = load_probe()
    src = [e["codes"] for e in encode_images(model, [it["image"] for it in items])]
    tgt = [e["codes"] for e in encode_images(model, [it["edit"]["image"] for it in items])]
    truth = [it["edit"]["attributes"] for it in items]
    mixes = {"all levels of the target": tgt}
    for keep in tgt[0]:
        mixes[f"the target's {keep} level, the source's others"] = [
            {k: (t if k == keep else s)[k] for k in t} for t, s in zip(tgt, src)
        ]
    out = {}
    for label, codes in mixes.items():
        with torch.no_grad():
            images = [im.float() for im in decode_images(model, codes)]
        reads = read_scenes(probe, images, [t["grid"] for t in truth])
        out[label] = score(reads, truth)["accuracy"]
    return out


def answer_routing(model, items) -> dict[int, float]:
    """Layer -> the largest (over heads) mean share of the asked cell in the attention the answer
    position pays to the two occupied cells of two-object scenes."""
    samples, cells = [], []
    for it in items:
        objs = it["attributes"]["objects"]
        if len(objs) != 2:
            continue
        for q, a in it["qa"]:
            where = q.rstrip("?").split(" at the ")[-1]
            if question_kind(q) in ("colour", "shape") and a != "nothing":
                asked, other = sorted(objs, key=lambda o: o["position"] != where)
                cells.append((tuple(asked["cell"]), tuple(other["cell"]), it["attributes"]["grid"]))
                samples.append(und_sample(it["image"], q, a))
    if not samples:
        return {}
    grids = model.tokenizer.grid(*samples[0].prompt[0].shape[-2:])  # one image size in the world
    hf = model.backbone.model
    before = hf.config._attn_implementation
    hf.config._attn_implementation = "eager"  # sdpa returns no attention weights
    shares: dict[int, list[torch.Tensor]] = {}
    try:
        for lo in range(0, len(samples), 16):
            batch = assemble(model, samples[lo : lo + 16], padding_side="right")
            out = hf(
                inputs_embeds=batch.inputs_embeds,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                output_attentions=True,
                use_cache=False,
            )
            for r, ids in enumerate(batch.input_ids):
                at = _first_answer_index(batch, r) - 1  # the token that predicts the answer
                asked, other, grid = cells[lo + r]
                cell_of = torch.full_like(ids, -1)  # world cell of each image token, -1 elsewhere
                for cb in model.layout.codebooks:
                    idx = ((ids >= cb.start) & (ids < cb.stop)).nonzero().flatten()
                    h, w = grids[cb.name]
                    k = torch.arange(len(idx))
                    cell_of[idx] = (k // w * grid // h) * grid + k % w * grid // w
                for layer, att in enumerate(out.attentions):
                    on_a, on_o = (att[r, :, at, cell_of == c[0] * grid + c[1]].sum(-1) for c in (asked, other))
                    shares.setdefault(layer, []).append(on_a / (on_a + on_o).clamp_min(1e-9))
    finally:
        hf.config._attn_implementation = before
    return {layer: float(torch.stack(v).mean(0).max()) for layer, v in shares.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("-n", "--num-samples", type=int, default=160, help="held-out scenes scanned")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, _ = load_checkpoint(args.checkpoint)
    model.eval()
    data = build_dataset(load_recipe(f"{args.checkpoint}/recipe.yaml"), "val")
    items = [data[i] for i in range(args.num_samples)]
    single = [it for it in items if len(it["attributes"]["objects"]) == 1]
    if len(single) < 10:
        raise SystemExit(f"only {len(single)} one-object scenes in {args.num_samples}: raise -n")

    t = Table(title=f"{args.checkpoint}: {len(items)} held-out scenes ({len(single)} with one object)")
    t.add_column("measurement")
    t.add_column("value", justify="right")
    row, col, hidden, ycol, yrow = where_words(model, single)
    t.add_row('"where is ...?", one object: row word right', f"{row:.2f}")
    t.add_row('"where is ...?", one object: column word right (true row given)', f"{col:.2f}")
    if getattr(model, "image_positions", 0):
        for table in ("row", "col"):
            r, c, *_ = where_words(model, single, mean_table=table)
            t.add_row(f"  with the {table} table replaced by its mean: row / column", f"{r:.2f} / {c:.2f}")
    x = torch.stack(hidden)
    t.add_row(
        "linear probe on the answer position's last hidden state: column / row",
        f"{linear_probe(x, torch.tensor(ycol).float()):.2f} / {linear_probe(x, torch.tensor(yrow).float()):.2f}",
    )
    for level, (same, diff) in code_stability(model, items).items():
        t.add_row(f"{level} codes unchanged by an edit: untouched cells / edited cells", f"{same:.2f} / {diff:.2f}")
    for (task, level), ce in level_ce(model, items[:32]).items():
        t.add_row(f"{task}: cross-entropy per {level} code (nats)", f"{ce:.3f}")
    for level, (back, common) in reconstruction_copy(model, items[:16]).items():
        t.add_row(
            f"reconstruction prompt: {level} codes given back / most common code's share", f"{back:.2f} / {common:.2f}"
        )
    for label, acc in level_swap(model, items).items():
        t.add_row(f"edit targets decoded from {label}: probe reads the target", f"{acc:.2f}")
    for level, (copied, kept) in edit_copy(model, items[:64]).items():
        t.add_row(
            f"edits, {level} tokens over unchanged pixels: sampled as the source's code / re-encoded target keeps it",
            f"{copied:.2f} / {kept:.2f}",
        )
    if model.image_input == "discrete":
        for layer, share in answer_routing(model, items).items():
            t.add_row(
                f"\"what colour / shape is at ...?\", two objects: asked cell's share of the answer's "
                f"attention, layer {layer} (best head; 0.50 = not steered)",
                f"{share:.2f}",
            )
    Console(width=120).print(t)


if __name__ == "__main__":
    main()
