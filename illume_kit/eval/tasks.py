"""Task accuracies of a unified model on held-out shapes scenes: understand, generate, edit.

The shapes world has exact answers, so every task has an exact score:

- ``und/accuracy``: greedy answers to the items' questions, exact match after strip + lowercase
  (and ``und/accuracy/<kind>`` per question kind: count, shape, colour, size, position, exists);
- ``gen/accuracy``: images generated from the captions (with guidance ``eval.options.cfg``, default
  2.0), decoded by the detokenizer and read back by the attribute probe (``eval/probe.py``); a scene
  counts when the probe reads exactly the captioned objects (same occupied cells, each with the
  captioned shape and colour). ``gen/shape``, ``gen/colour``, ``gen/size``, ``gen/position`` are per
  captioned object, ``gen/count`` per scene; ``gen/attributes`` is the attribute accuracy, the mean
  of the shape, colour, position and count accuracies; ``gen/accuracy_nocfg`` and
  ``gen/attributes_nocfg`` are the same scores at cfg 1 (``eval.options.nocfg: false`` skips them);
- ``edit/accuracy``: each item's image edited with its instruction (guidance ``edit_cfg``, default
  1.5), probed against the edit's target scene (and ``edit/accuracy/<kind>`` per edit kind);
- ``probe/accuracy``: the probe on the ground-truth images of the same items, so a reader knows how
  far to trust the two numbers above;
- ``probe/reconstruction``: the probe on those images encoded and decoded (ground-truth codes through
  the detokenizer): a perfect LLM scores at most this, so it separates "the LLM draws the wrong
  tokens" from "the tokenizer cannot draw this scene"; ``probe/reconstruction_attributes`` is the
  same ceiling for ``gen/attributes``.

Sampling options come from ``eval.options`` (``illume_kit.core.options.EvalOptions``: ``temperature``,
``top_k``, ``top_p``, ``batch_size``, ``max_answer_tokens``, ``decode`` = detokenizer options); every batch
is seeded from ``run.seed``.
PNG grids (ground truth | generated, source | edited | target) are written to ``out_dir``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

FAMILIES = ("und", "gen", "edit", "probe")
QUESTION_KINDS = (
    ("how many", "count"),
    ("what shape", "shape"),
    ("what color", "colour"),
    ("what size", "size"),
    ("where", "position"),
    ("is there", "exists"),
)
EDIT_KINDS = {"make": "colour", "move": "move", "add": "add", "remove": "remove"}


def normalise(text: str) -> str:
    return " ".join(str(text).strip().lower().split())


def question_kind(question: str) -> str:
    q = normalise(question)
    return next((kind for head, kind in QUESTION_KINDS if q.startswith(head)), "other")


def edit_kind(instruction: str) -> str:
    return EDIT_KINDS.get(normalise(instruction).split(" ", 1)[0], "other")


def _progress(quiet: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=quiet,
        transient=True,
    )


def _batches(n: int, size: int):
    for s in range(0, n, size):
        yield s, min(n, s + size)


def _mean_by(keys: Sequence[str], hits: Sequence[bool], prefix: str) -> dict[str, float]:
    out: dict[str, list[bool]] = {}
    for k, h in zip(keys, hits):
        out.setdefault(k, []).append(h)
    return {f"{prefix}/{k}": sum(v) / len(v) for k, v in sorted(out.items())}


# ---------------------------------------------------------------- the three tasks


def understanding(
    model, items: Sequence[dict], batch_size: int = 16, max_new_tokens: int = 8, progress=None
) -> tuple[dict[str, float], list[dict]]:
    """Greedy answers to every (image, question) of ``items``; returns (metrics, answer records)."""
    from illume_kit.model.sampler import answer

    triples = [(it["image"], q, a) for it in items for q, a in (it.get("qa") or ())]
    if not triples:
        return {}, []
    task = progress.add_task("understand", total=len(triples)) if progress else None
    preds: list[str] = []
    for lo, hi in _batches(len(triples), batch_size):
        chunk = triples[lo:hi]
        preds += answer(model, [t[0] for t in chunk], [t[1] for t in chunk], max_new_tokens=max_new_tokens)
        if progress:
            progress.update(task, advance=len(chunk))
    hits = [normalise(p) == normalise(a) for p, (_, _, a) in zip(preds, triples)]
    kinds = [question_kind(q) for _, q, _ in triples]
    metrics = {"und/accuracy": sum(hits) / len(hits), **_mean_by(kinds, hits, "und/accuracy")}
    records = [{"question": q, "answer": a, "predicted": p} for (_, q, a), p in zip(triples, preds)]
    return metrics, records


def _draw(
    make_codes: Callable[[int, int, int], list],
    model,
    n: int,
    batch_size: int,
    seed: int,
    decode: dict,
    progress,
    label: str,
) -> list[torch.Tensor]:
    """Run ``make_codes(lo, hi, seed)`` per batch, decode, return images on the CPU."""
    from illume_kit.model.sampler import decode_images

    task = progress.add_task(label, total=n) if progress else None
    out: list[torch.Tensor] = []
    for b, (lo, hi) in enumerate(_batches(n, batch_size)):
        codes = make_codes(lo, hi, seed + b)
        out += [im.detach().float().cpu() for im in decode_images(model, codes, **decode)]
        if progress:
            progress.update(task, advance=hi - lo)
    return out


def generation(
    model,
    items: Sequence[dict],
    probe,
    cfg: float = 2.0,
    seed: int = 0,
    batch_size: int = 8,
    sampling: dict | None = None,
    decode: dict | None = None,
    progress=None,
    prefix: str = "gen",
) -> tuple[dict[str, float], list[torch.Tensor], list[dict]]:
    """Text-to-image from the items' captions at their image sizes, read by ``probe``."""
    from illume_kit.eval.probe import read_scenes, score
    from illume_kit.model.sampler import generate_images

    captions = [it["caption"] for it in items]
    sizes = [(int(it["image"].shape[-2]), int(it["image"].shape[-1])) for it in items]

    def codes(lo, hi, s):
        return generate_images(model, captions[lo:hi], sizes[lo:hi], cfg=cfg, seed=s, **(sampling or {}))

    images = _draw(codes, model, len(items), batch_size, seed, decode or {}, progress, f"generate (cfg {cfg:g})")
    reads = read_scenes(probe, images, [it["attributes"]["grid"] for it in items])
    s = score(reads, [it["attributes"] for it in items])
    metrics = {f"{prefix}/accuracy": s["accuracy"]}
    metrics.update({f"{prefix}/{k}": s[k] for k in ("shape", "colour", "size", "position", "count", "attributes")})
    return metrics, images, reads


def editing(
    model,
    items: Sequence[dict],
    probe,
    cfg: float = 1.5,
    seed: int = 0,
    batch_size: int = 8,
    sampling: dict | None = None,
    decode: dict | None = None,
    progress=None,
) -> tuple[dict[str, float], list[torch.Tensor], list[dict]]:
    """Each item's image edited with its instruction, read by ``probe`` against the target scene."""
    from illume_kit.eval.probe import compare, read_scenes
    from illume_kit.model.sampler import edit_images

    sources = [it["image"] for it in items]
    instructions = [it["edit"]["instruction"] for it in items]

    def codes(lo, hi, s):
        return edit_images(model, sources[lo:hi], instructions[lo:hi], cfg=cfg, seed=s, **(sampling or {}))

    images = _draw(codes, model, len(items), batch_size, seed, decode or {}, progress, f"edit (cfg {cfg:g})")
    reads = read_scenes(probe, images, [it["edit"]["attributes"]["grid"] for it in items])
    hits = [bool(compare(r, it["edit"]["attributes"])["exact"]) for r, it in zip(reads, items)]
    metrics = {
        "edit/accuracy": sum(hits) / len(hits),
        **_mean_by([edit_kind(i) for i in instructions], hits, "edit/accuracy"),
    }
    return metrics, images, reads


def _reconstruction_score(model, items: Sequence[dict], probe, batch_size: int, decode: dict) -> dict[str, float]:
    """Probe scores (scene ``accuracy``, ``attributes``, ...) of the items' images after tokenizer
    encode -> detokenizer decode."""
    from illume_kit.eval.probe import read_scenes, score
    from illume_kit.model.sequence import encode_images

    def codes(lo, hi, s):
        return [e["codes"] for e in encode_images(model, [it["image"] for it in items[lo:hi]])]

    images = _draw(codes, model, len(items), batch_size, 0, decode, None, "reconstruct")
    truth = [it["attributes"] for it in items]
    return score(read_scenes(probe, images, [t["grid"] for t in truth]), truth)


# ---------------------------------------------------------------- pictures


def save_rows(
    rows: Sequence[Sequence[torch.Tensor]],
    path: str | os.PathLike,
    labels: Sequence[str] | None = None,
    per_row: int = 4,
    pad: int = 2,
) -> Path:
    """Write ``grid.tile(...)`` to ``path`` (format from the suffix, e.g. PNG)."""
    from illume_kit.eval.grid import tile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tile(rows, labels, per_row, pad).save(path)
    return path


def _mark(read: dict, truth: dict) -> str:
    from illume_kit.eval.probe import compare

    return "ok" if compare(read, truth)["exact"] else f"miss, sees {read['count']}"


# ---------------------------------------------------------------- entry point


def _shapes_items(items: Sequence[dict], need: str) -> bool:
    it = items[0] if items else {}
    if need == "gen":
        return bool(it.get("caption")) and "objects" in (it.get("attributes") or {})
    return it.get("edit") is not None and "objects" in (it["edit"].get("attributes") or {})


def evaluate_tasks(
    model,
    resolved,
    wanted: Sequence[str],
    n: int,
    out_dir: str | os.PathLike | None = None,
    quiet: bool = False,
    dataset: Any = None,
    split: str = "val",
) -> dict[str, float]:
    """Metrics of the families named in ``wanted`` (``und/...``, ``gen/...``, ``edit/...``,
    ``probe/...``; other names are ignored) on the first ``n`` items of the recipe's dataset split
    (or of ``dataset``). ``probe/accuracy`` comes with every probed family."""
    from illume_kit.eval.probe import load_probe, read_scenes, score
    from illume_kit.eval.sampling import task_sampling

    families = {m.split("/", 1)[0] for m in wanted} & set(FAMILIES)
    if not families:
        return {}
    recipe = resolved.recipe
    opts = recipe.eval.options
    seed = int(recipe.run.seed)
    bs = opts.batch_size
    # each task's own: the official mode recommends different settings for editing
    sampling, edit_sampling = task_sampling(opts, "generate"), task_sampling(opts, "edit")
    gen_cfg, edit_cfg = sampling.pop("cfg"), edit_sampling.pop("cfg")
    decode = dict(opts.decode)
    if dataset is None:
        from illume_kit.data.build import build_dataset

        dataset = build_dataset(resolved, split)
    items = [dataset[i] for i in range(min(n, len(dataset)))]
    out = Path(out_dir) if out_dir is not None else None
    metrics: dict[str, float] = {}
    samples: dict[str, Any] = {}
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    try:
        with _progress(quiet) as prog:
            if "und" in families:
                m, records = understanding(model, items, max(bs, 16), opts.max_answer_tokens, prog)
                if not m:
                    warnings.warn("und/*: the dataset's items have no questions (qa); skipped", stacklevel=2)
                metrics.update(m)
                samples["und"] = records[:64]
            probed = families & {"gen", "edit", "probe"}
            if probed and not _shapes_items(items, "gen"):
                warnings.warn(
                    f"{', '.join(sorted(probed))}: the probe reads shapes scenes only; "
                    f"the dataset's items have no scene attributes, skipped",
                    stacklevel=2,
                )
                probed = set()
            if probed & {"gen", "edit"} and model.detokenizer is None:
                warnings.warn("gen/*, edit/*: the model has no detokenizer to draw images with; skipped", stacklevel=2)
                probed -= {"gen", "edit"}
            if probed:
                probe = load_probe()
                truth = [it["attributes"] for it in items]
                reads = read_scenes(probe, [it["image"] for it in items], [t["grid"] for t in truth])
                metrics["probe/accuracy"] = score(reads, truth)["accuracy"]
                if (probed & {"gen", "edit"} or "probe/reconstruction" in wanted) and model.detokenizer is not None:
                    rec = _reconstruction_score(model, items, probe, bs, decode)
                    metrics["probe/reconstruction"] = rec["accuracy"]
                    metrics["probe/reconstruction_attributes"] = rec["attributes"]
            if "gen" in probed:
                m, images, reads = generation(model, items, probe, gen_cfg, seed, bs, sampling, decode, prog)
                metrics.update(m)
                if opts.nocfg and gen_cfg != 1.0:
                    m1, _, _ = generation(model, items, probe, 1.0, seed, bs, sampling, decode, prog, prefix="nocfg")
                    metrics["gen/accuracy_nocfg"] = m1["nocfg/accuracy"]
                    metrics["gen/attributes_nocfg"] = m1["nocfg/attributes"]
                samples["gen"] = [{"caption": it["caption"], "read": r["objects"]} for it, r in zip(items[:16], reads)]
                if out is not None:
                    save_rows(
                        [(it["image"], im) for it, im in zip(items[:16], images)],
                        out / "generations.png",
                        [f"{i} {_mark(r, it['attributes'])}" for i, (it, r) in enumerate(zip(items[:16], reads))],
                    )
            if "edit" in probed and _shapes_items(items, "edit"):
                m, images, reads = editing(model, items, probe, edit_cfg, seed, bs, edit_sampling, decode, prog)
                metrics.update(m)
                samples["edit"] = [
                    {"instruction": it["edit"]["instruction"], "read": r["objects"]} for it, r in zip(items[:16], reads)
                ]
                if out is not None:
                    save_rows(
                        [(it["image"], im, it["edit"]["image"]) for it, im in zip(items[:16], images)],
                        out / "edits.png",
                        [
                            f"{i} {_mark(r, it['edit']['attributes'])}"
                            for i, (it, r) in enumerate(zip(items[:16], reads))
                        ],
                        per_row=3,
                    )
            elif "edit" in probed:
                warnings.warn(
                    "edit/*: the dataset's items have no edits (data.params.edits: false?); skipped", stacklevel=2
                )
    finally:
        model.train(was_training)
    if out is not None and samples:
        out.mkdir(parents=True, exist_ok=True)
        (out / "task_samples.json").write_text(json.dumps(samples, indent=1, default=list))
    return metrics
