"""`illume-kit encode`: pre-compute a frozen tokenizer's codes (and features) for an mllm stage to read."""

from __future__ import annotations

import sys
from pathlib import Path

from illume_kit.cli.args import check_output_dir, device, key_value, nonnegative_int, positive_int

SPLITS = ("train", "val", "test")


def _is_recipe_file(text: str) -> bool:
    return text.endswith((".yaml", ".yml")) or ("=" not in text and Path(text).is_file())


def _split_data_flags(values: list[str]) -> tuple[str | None, list[tuple[str, str]]]:
    """``--data`` values: at most one recipe file (its `data:` section) and any KEY=VALUE overrides."""
    files = [v for v in values if _is_recipe_file(v)]
    if len(files) > 1:
        raise ValueError(f"--data: one recipe file at most, got {', '.join(files)}")
    pairs = []
    for v in values:
        if v in files:
            continue
        try:
            pairs.append(key_value(v))
        except Exception:
            raise ValueError(
                f"--data {v}: neither a recipe file (.yaml) whose `data:` section to read nor a KEY=VALUE dataset param"
            ) from None
    return (files[0] if files else None), pairs


def _source(target: str, overrides: list[str]):
    """(resolved recipe, checkpoint folder or None) of the positional RECIPE_OR_CHECKPOINT and its overrides."""
    from illume_kit.core.manifest import MANIFEST
    from illume_kit.core.recipe import load_recipe

    path = Path(target)
    if path.is_dir():
        if not (path / MANIFEST).is_file():
            raise ValueError(
                f"{target}: a folder without {MANIFEST}: name a checkpoint folder (e.g. runs/NAME/checkpoint) "
                "or a recipe file"
            )
        if overrides:
            raise ValueError(
                f"{overrides[0]}: a checkpoint's recipe is what it was trained with and takes no overrides; "
                "point --data at another recipe or give dataset params as --data KEY=VALUE"
            )
        return load_recipe(path / "recipe.yaml"), path
    if not path.is_file():
        raise FileNotFoundError(f"{target}: no such recipe file or checkpoint folder")
    return load_recipe(path, overrides), None


def _data_of(resolved, data_file: str | None, pairs: list[tuple[str, str]], split: str):
    """The dataset to encode and its section as the manifest records it (name and params, split included)."""
    from illume_kit.core import yamlio
    from illume_kit.core.recipe import load_recipe
    from illume_kit.data.build import build_dataset

    if data_file is not None:
        if not Path(data_file).is_file():
            raise FileNotFoundError(f"--data {data_file}: no such recipe file")
        resolved = load_recipe(data_file)
    rc = resolved.components.get("data")
    if rc is None:
        raise ValueError(f"{resolved.origin}: the recipe has no `data:` section to encode")
    over = {k: yamlio.safe_load(v) for k, v in pairs}
    # the first mllm stage trains at its own image_size when it sets one: those are the images it meets
    stage = next((s for s in resolved.recipe.train.stages if s.target == "mllm"), None)
    size = getattr(getattr(stage, "options", None), "image_size", None)
    if size and "image_size" not in over and "image_size" in type(rc.params).model_fields:
        over["image_size"] = size
    valid = sorted(k for k in type(rc.params).model_fields if k != "split")
    for key in over:
        if key not in valid:
            hint = " (the split is --split)" if key == "split" else ""
            raise ValueError(
                f"--data {key}=...: {key!r} is not a param of dataset {rc.spec.name!r}{hint}; valid keys: "
                f"{', '.join(valid)}"
            )
    data = build_dataset(resolved, split, **over)
    params = type(rc.params).model_validate(rc.params.model_copy(update={"split": split, **over}).model_dump())
    return data, {"name": rc.spec.name, "params": params.model_dump(mode="json")}


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


class _Bar:
    """A rich progress bar on a terminal; otherwise a plain line every tenth of the way."""

    def __init__(self, quiet: bool) -> None:
        from rich.console import Console

        self.quiet, self.console = quiet, Console(stderr=True, highlight=False, soft_wrap=True)
        self.live = not quiet and self.console.is_terminal and sys.stderr.isatty()
        self.bar = None
        self.items = self.total = 0
        self.next_line = 0

    def start(self, total: int | None, done_images: int) -> None:
        self.total = total
        if self.quiet:
            return
        if done_images:
            self.console.print(f"the store already holds {done_images} images: encoding the rest", highlight=False)
        if self.live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("[bold]encode"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[images]}"),
                console=self.console,
                transient=False,
            )
            self.task = self.bar.add_task("encode", total=total, images="")
            self.bar.start()

    def advance(self, items: int, encoded: int, kept: int) -> None:
        self.items += items
        if self.bar is not None:
            self.bar.update(self.task, advance=items, images=f"{encoded} encoded")
        elif not self.quiet and self.total and self.items >= self.next_line:
            self.console.print(f"encode: {self.items}/{self.total} items, {encoded} images encoded", highlight=False)
            self.next_line = self.items + max(1, self.total // 10)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def cmd_encode(args) -> int:
    from illume_kit.cli.output import console

    out = check_output_dir(args.output)
    from illume_kit.train.encode import check_store_folder

    check_store_folder(out)  # before any weights load
    data_file, pairs = _split_data_flags(args.data or [])
    resolved, checkpoint = _source(args.source, args.overrides)
    from illume_kit.cli.args import check_device_available

    target = check_device_available(args.device)
    data, section = _data_of(resolved, data_file, pairs, args.split)
    if checkpoint is not None:
        from illume_kit.core.manifest import read_manifest
        from illume_kit.model.checkpoint import load_checkpoint

        model, _ = load_checkpoint(checkpoint)
        name = (read_manifest(checkpoint).get("components") or {}).get("tokenizer", {}).get("name", "?")
    else:
        from illume_kit.model.compose import compose

        model = compose(resolved)
        name = resolved.components["tokenizer"].spec.name
    from illume_kit.train.encode import encode_store

    model.tokenizer.to(target)
    if getattr(model, "input_encoder", None) is not None:
        model.input_encoder.to(target)
    manifest = encode_store(
        model,
        data,
        out,
        tokenizer_name=name,
        data_section=section,
        split=args.split,
        source=str(args.source),
        features=args.dtype if args.features else None,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        limit=args.limit,
        workers=args.workers,
        progress=_Bar(args.quiet),
    )
    if not args.quiet:
        what = f"codes and {manifest['features']} features" if manifest["features"] else "codes"
        state = "complete" if manifest["complete"] else f"partial: {manifest['items']} items read"
        console.print(
            f"wrote {what} of {manifest['images']} images ({_count(len(manifest['shards']), 'shard')}, {state}) to {out}; "
            f"tokenizer {name!r} weights sha256 {manifest['tokenizer']['sha256'][:12]}. Train from them with the "
            f"mllm stage option codes: {out}"
        )
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "encode",
        help="pre-compute a frozen tokenizer's codes (and features) of a dataset, for mllm stages to read",
    )
    p.add_argument("source", metavar="RECIPE_OR_CHECKPOINT", help="a recipe file, or a checkpoint folder")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides (a recipe file only)")
    p.add_argument("-o", "--output", required=True, metavar="CODES", help="the store's folder (new, or one to resume)")
    p.add_argument(
        "--data",
        action="append",
        metavar="RECIPE_OR_KEY=VALUE",
        help="another recipe whose `data:` section to encode, and/or dataset param overrides (default: the data of "
        "RECIPE_OR_CHECKPOINT)",
    )
    p.add_argument("--split", default="train", choices=SPLITS)
    p.add_argument("--features", action="store_true", help="keep the continuous features too (for continuous input)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"], help="features dtype (default bf16)")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=1,
        help="images encoded at once (default 1: each alone, as a stage's code cache does, so the numbers match it "
        "exactly; larger is faster and rounds the features' last bits differently)",
    )
    p.add_argument(
        "--shard-size",
        type=positive_int,
        default=256,
        help="images per shard, held in memory until written (default 256)",
    )
    p.add_argument("--limit", type=positive_int, help="read at most this many items (the store stays partial)")
    p.add_argument(
        "--workers", type=nonnegative_int, default=0, help="DataLoader workers decoding the items (default 0)"
    )
    p.add_argument("--device", type=device, default="auto", help="where the tokenizer runs (default auto)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_encode)
