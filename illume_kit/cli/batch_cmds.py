"""`illume-kit generate --prompts FILE -o OUT/` and `illume-kit edit --pairs FILE -o OUT/`: batch mode.

The verbs of ``generate_cmds`` with a prompt (or pair) file in place of one caption (or one image and
instruction); the work is :func:`illume_kit.eval.batch_generation.run_batch`. Everything that can be
checked before the model loads is: the output folder, the layout and its sample count, every line of
the file (a bad one names ``file:line`` and the valid fields, exit status 2). After the load: the
size, and each prompt's length against the backbone's positions (again naming ``file:line``).
Sizes, preprocessing and sampling options are the single verbs'.
"""

from __future__ import annotations

from contextlib import contextmanager

from illume_kit.cli.args import check_output_dir

BATCH_ONLY = (("--layout", "layout"), ("--samples", "samples"), ("--grid", "grid"))


def check_modes(args, single: tuple[str, ...], batch_flag: str, batch_value) -> bool:
    """True for batch mode; ValueError when the single-item arguments and the batch file are mixed
    or when neither is given."""
    given = [name for name in single if getattr(args, name, None) is not None]
    if batch_value is not None:
        if given:
            raise ValueError(
                f"{batch_flag} reads each line's {' and '.join(single)} from the file; drop the {given[0]} argument"
            )
        if getattr(args, "num", None) is not None:
            raise ValueError(f"--num draws one caption's images; with {batch_flag} use --samples")
        return True
    if len(given) < len(single):
        missing = " and ".join(s for s in single if s not in given)
        raise ValueError(f"give the {missing}, or {batch_flag} FILE.jsonl -o OUT/ for a batch")
    for flag, key in BATCH_ONLY:
        if getattr(args, key, None) not in (None, False):
            raise ValueError(f"{flag} applies with {batch_flag} only")
    return False


def _unfamiliar(checkpoint, items, size, size_given: bool) -> None:
    """One warning for all the batch's words the checkpoint never trained on (the first few shown)."""
    from illume_kit.cli.generate_cmds import trained_record, warn_unfamiliar
    from illume_kit.cli.output import warn
    from illume_kit.core.coverage import unseen

    vocab, _, source = trained_record(checkpoint)
    if vocab is not None:
        new = unseen(" ".join(it.text for it in items), vocab)
        if new:
            shown = ", ".join(new[:12]) + (f", ... ({len(new)} in all)" if len(new) > 12 else "")
            warn(f"the prompts use words this checkpoint never saw in training: {shown} ({source})")
    warn_unfamiliar(checkpoint, "prompts", "", size, size_given)  # the size


def _report(summary, what: str) -> None:
    from illume_kit.cli.output import console

    def count(n: int) -> str:
        return f"{n} {what}{'s' if n != 1 else ''}"

    skipped = f", skipped {summary.skipped} already finished" if summary.skipped else ""
    if summary.generated:
        head = f"[green]wrote[/] {count(summary.generated)} ({summary.images} images) to {summary.out}{skipped}"
    else:
        head = f"nothing to draw in {summary.out}: skipped {summary.skipped} already finished"
    console.print(f"{head}; {count(summary.total)} in the file, {summary.seconds:.1f} s", soft_wrap=True)


def _run(model, items, layout, size_of, args, sampling, decode, **kw):
    from illume_kit.cli.output import console
    from illume_kit.eval.batch_generation import progress_bar, run_batch

    with progress_bar(disable=not console.is_terminal) as prog:
        return run_batch(
            model,
            items,
            layout,
            size_of,
            seed=args.seed,
            batch_size=args.batch_size,
            sampling=sampling,
            decode=decode,
            progress=prog,
            **kw,
        )


def cmd_generate_batch(args) -> int:
    from illume_kit.cli.generate_cmds import MAX_PROMPT_CHARS, _sampling, model_and_size
    from illume_kit.eval.batch_generation import make_layout, read_prompts

    out = check_output_dir(args.output)
    layout = make_layout(args.layout or "geneval", out, args.samples, args.grid)
    items = read_prompts(args.prompts, MAX_PROMPT_CHARS)
    model, size, opts = model_and_size(args)
    if layout.name == "dpg" and size[0] != size[1]:
        raise ValueError(
            f"--layout dpg: DPG-Bench crops square tiles (--resolution R: R x R each); "
            f"--size {size[0]}x{size[1]} is not square"
        )
    from illume_kit.model.prompts import style_of
    from illume_kit.model.sampler import image_template

    sampling = _sampling(args, "generate")
    template = len(image_template(model, size, 0)) + (5 if sampling.get("sampling") == "official" else 0)
    style = style_of(model)
    _check_fits(model, args.prompts, items, lambda it, t: style.t2i_prompt(t, size), lambda it: template,
                f"a {size[0]}x{size[1]} image", "prompt")  # fmt: skip
    _unfamiliar(args.checkpoint, items, size, args.size is not None)
    summary = _run(model, items, layout, lambda it: size, args, sampling, opts.decode)
    _report(summary, "prompt")
    return 0


def _check_fits(model, file, items, prompt_of, answer_of, answer_what: str, what: str) -> None:
    """Each item's prompt fits the backbone's positions; else the error names ``file:line``."""
    from illume_kit.cli.generate_cmds import check_fits
    from illume_kit.eval.batch_generation import BatchFileError

    for it in items:
        try:
            check_fits(
                model,
                what,
                it.text,
                lambda t, it=it: prompt_of(it, t),
                answer_of(it),
                answer_what,
                "a smaller --size",
            )
        except ValueError as exc:
            raise BatchFileError(f"{file}:{it.line}: {exc}") from None


@contextmanager
def _pair_line(file, it):
    """An unreadable source image is reported with the pair's ``file:line``."""
    from illume_kit.eval.batch_generation import BatchFileError

    try:
        yield
    except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
        if isinstance(exc, BatchFileError):
            raise
        text = str(exc) if str(it.image) in str(exc) else f"image {it.image}: {exc}"
        raise BatchFileError(f"{file}:{it.line}: {text}") from None


def cmd_edit_batch(args) -> int:
    import torch

    from illume_kit.cli.generate_cmds import (
        MAX_PROMPT_CHARS,
        _load_model,
        _preprocess,
        _sampling,
        anchor_of,
        check_size,
        load_image,
        official_anchor,
        parse_size,
        recipe_image_size,
    )
    from illume_kit.eval.batch_generation import make_layout, read_pairs

    out = check_output_dir(args.output)
    layout = make_layout("flat", out, args.samples)
    items = read_pairs(args.pairs, MAX_PROMPT_CHARS)
    mode, opts = _preprocess(args)
    sizes: dict[int, tuple[int, int]] = {}
    if mode == "official":
        from PIL import Image

        from illume_kit.data.aspect import snap
        from illume_kit.data.images import load_rgb
        from illume_kit.data.shapes import to_tensor

        anchor_of(args.size, opts.anchor_base or recipe_image_size(args.checkpoint)[0])  # before the load
        model = _load_model(args)
        for it in items:
            with _pair_line(args.pairs, it), Image.open(it.image) as header:  # its aspect; pixels when drawn
                sizes[it.index] = official_anchor(args, model, opts, header)

        def source_of(it):
            with _pair_line(args.pairs, it):
                return to_tensor(snap(load_rgb(it.image), sizes[it.index], "pad"))

    else:
        size = parse_size(args.size) or recipe_image_size(args.checkpoint)
        model = _load_model(args)
        check_size(model, size)
        sizes = {it.index: size for it in items}

        def source_of(it):
            with _pair_line(args.pairs, it):
                return load_image(it.image, size)

    from illume_kit.model.prompts import style_of
    from illume_kit.model.sampler import image_template

    order = getattr(model, "edit_order", "image_first")
    sampling = _sampling(args, "edit")
    extra = 5 if sampling.get("sampling") == "official" else 0
    style = style_of(model)

    def prompt_of(it, t):
        h, w = sizes[it.index]
        return style.edit_prompt(torch.zeros(3, h, w), t, order=order)

    _check_fits(model, args.pairs, items, prompt_of, lambda it: len(image_template(model, sizes[it.index], 0)) + extra,
                "the source and the edited image", "instruction")  # fmt: skip
    first = sizes[items[0].index]
    _unfamiliar(args.checkpoint, items, first, args.size is not None)
    summary = _run(
        model, items, layout, lambda it: sizes[it.index], args, sampling, opts.decode, task="edit", source_of=source_of
    )
    _report(summary, "pair")
    return 0
