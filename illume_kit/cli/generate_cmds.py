"""`illume-kit understand | generate | edit`: use a checkpoint on one image or one caption.

Inputs are checked before the (slow) model load where possible: a missing image, a malformed
``--size`` or an output name Pillow cannot write fail at once with one line (exit status 2); a size
the tokenizer cannot grid (not a multiple of its stride) or without a resolution tag fails right
after the load, naming the valid sizes. Text over ``MAX_PROMPT_CHARS`` is refused before the load;
after it, a prompt whose sequence (with the image and the answer) needs more positions than the
backbone serves is refused with the limit. Words, or a size, the checkpoint did not train on
(``illume_kit.core.coverage``; for a checkpoint without that record, its recipe's shapes world and
image size) only warn. Input images are center-cropped to the target aspect and resized to
``--size`` (default: the recipe's ``data.params.image_size``). With ``--preprocess official`` (or the
recipe's ``eval.options.preprocess``) images are sized as the released ILLUME+ sizes them
(``illume_kit.data.aspect``): ``understand`` keeps the image's aspect within the pixel bounds
(``--size HxW``: at most H*W pixels), ``generate`` and ``edit`` work at an aspect-ratio anchor
(``--size N``: the anchor table of base N; ``--size HxW``: that anchor); an anchor the model has no
resolution tag or tokenizer grid for is refused with the valid anchors of its base.

Torch-free at import: ``illume-kit --help`` must not pay for torch.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import get_args

from illume_kit.cli.args import (
    check_device_available,
    check_output_file,
    device,
    finite_float,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    probability,
    seed,
)
from illume_kit.core.options import OFFICIAL_SAMPLING_DEFAULTS, EvalOptions, Preprocess, SamplingMode
from illume_kit.eval.batch_generation import LAYOUTS
from illume_kit.eval.sampling import GUIDANCE, LOOPS, task_sampling

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DEFAULT_SIZE = 64
# longer text is refused before the model loads: no backbone illume-kit composes serves that many positions
MAX_PROMPT_CHARS = 10_000


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"64"`` or ``"64x48"`` (height x width) -> (H, W)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX×]\s*(\d+))?\s*", str(text))
    if not m:
        raise ValueError(f"--size {text!r}: expected HxW (e.g. 64x64) or one number for a square")
    h = int(m.group(1))
    w = int(m.group(2)) if m.group(2) else h
    if h <= 0 or w <= 0:
        raise ValueError(f"--size {text!r}: sides must be positive")
    return h, w


def _check_output(path: str) -> Path:
    out = check_output_file(path)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"-o {path}: the output must end in one of {', '.join(IMAGE_SUFFIXES)}")
    return out


def _check_image(path: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    return p


def _checkpoint_recipe(checkpoint: str | Path) -> dict | None:
    """The checkpoint's ``recipe.yaml`` (None when there is none); CheckpointError when it is bad."""
    from illume_kit.core.manifest import load_recipe_yaml

    if not (Path(checkpoint) / "recipe.yaml").exists():
        return None
    return load_recipe_yaml(checkpoint)


def _mapping_at(recipe: dict, checkpoint: str | Path, *keys: str) -> dict:
    from illume_kit.core.manifest import CheckpointError

    node = recipe
    for i, key in enumerate(keys):
        node = node.get(key) or {}
        if not isinstance(node, dict):
            where = ".".join(keys[: i + 1])
            raise CheckpointError(f"{Path(checkpoint) / 'recipe.yaml'}: {where} must be a mapping, got {node!r:.60}")
    return node


def recipe_image_size(checkpoint: str | Path) -> tuple[int, int]:
    """The image size the checkpoint's recipe trained on (``data.params.image_size``), else 64."""
    from illume_kit.core.manifest import CheckpointError

    recipe = _checkpoint_recipe(checkpoint)
    if recipe is None:
        return DEFAULT_SIZE, DEFAULT_SIZE
    side = _mapping_at(recipe, checkpoint, "data", "params").get("image_size") or DEFAULT_SIZE
    if not isinstance(side, int) or isinstance(side, bool) or side < 1:
        raise CheckpointError(
            f"{Path(checkpoint) / 'recipe.yaml'}: data.params.image_size is {side!r:.60}, expected a positive integer"
        )
    return side, side


def check_text(text: str, what: str) -> str:
    """Refuse text far longer than any backbone serves, before the model loads."""
    if len(text) > MAX_PROMPT_CHARS:
        raise ValueError(
            f"the {what} is {len(text):,} characters long; valid: at most {MAX_PROMPT_CHARS:,} characters "
            "(and, once the model is loaded, what fits in its backbone's positions)"
        )
    return text


def trained_record(checkpoint: str | Path) -> tuple[set[str] | None, list[tuple[int, int]], str]:
    """(words, image sizes, where they come from) of what the checkpoint was trained on.

    The checkpoint's own record (``vocabulary.json``, manifest ``trained_sizes``); for a checkpoint
    without one, its recipe: the shapes world's words when it trained on that world, and the
    recipe's image sizes (``data.params.image_size``, an mllm stage's ``options.image_size``).
    """
    from illume_kit.core.coverage import read_trained_sizes, read_vocabulary
    from illume_kit.core.manifest import load_recipe_yaml, read_manifest

    folder = Path(checkpoint)
    vocab, source = read_vocabulary(folder), f"recorded in {folder / 'vocabulary.json'}"
    sizes = read_trained_sizes(read_manifest(folder))
    try:
        recipe = load_recipe_yaml(folder) or {}
        data = recipe.get("data") or {}
        params = data.get("params") or {}
        stages = (recipe.get("train") or {}).get("stages") or []
    except (OSError, ValueError, AttributeError):
        return vocab, sizes or [], source
    if vocab is None and data.get("name") == "shapes":
        from illume_kit.core.coverage import vocabulary_of
        from illume_kit.data.shapes_vocab import words
        from illume_kit.model.tasks import task_texts

        vocab = words(params.get("grid")) | set(vocabulary_of(task_texts([])))
        source = "the words of the shapes world, which its recipe trained on"
    if sizes is None:
        sides = [params.get("image_size") or DEFAULT_SIZE]
        sides += [(st.get("options") or {}).get("image_size") for st in stages if st.get("target") == "mllm"]
        sizes = list(dict.fromkeys((int(v), int(v)) for v in sides if isinstance(v, int)))
    return vocab, sizes, source


def warn_unfamiliar(
    checkpoint: str | Path, what: str, text: str, size: tuple[int, int], size_given: bool, warn=None
) -> None:
    """Warn (the command goes on) when ``text`` uses words, or ``size`` is a size, the checkpoint
    was not trained on; ``warn``: where the warning goes (default: stderr)."""
    from illume_kit.core.coverage import unseen

    if warn is None:
        from illume_kit.cli.output import warn

    vocab, sizes, source = trained_record(checkpoint)
    new = unseen(text, vocab) if vocab is not None else []
    if new:
        warn(
            f"the {what} uses words this checkpoint never saw in training: {', '.join(new)} "
            f"(its training texts use {len(vocab)} words, {source}); expect them to be ignored"
        )
    if sizes and size not in sizes:
        flag = "--size " if size_given else "the image size "
        trained = ", ".join(f"{h}x{w}" for h, w in sizes)
        warn(
            f"{flag}{size[0]}x{size[1]} is not a size this checkpoint was trained at ({trained}); expect worse results"
        )


def check_fits(model, what: str, text: str, prompt_of, answer: int, answer_what: str, answer_fix: str) -> None:
    """ValueError when the prompt with ``text`` and an answer of ``answer`` tokens needs more
    positions than the backbone serves, naming the limit (``answer_fix``: what would be valid when
    even an empty text does not fit, given the positions left for the answer)."""
    from illume_kit.model.sampler import max_positions, sequence_length

    limit = max_positions(model)
    if limit is None:
        return
    total = sequence_length(model, prompt_of(text), answer)
    if total <= limit:
        return
    fixed = sequence_length(model, prompt_of(""), answer)
    if fixed >= limit:
        raise ValueError(
            f"{answer_what} with the chat template take {fixed} positions, more than the {limit} this model's "
            f"backbone serves (max_position_embeddings); valid: {answer_fix.format(room=limit - (total - answer))}"
        )
    raise ValueError(
        f"the {what} is {total - fixed} tokens long; valid: at most {limit - fixed} tokens for this model "
        f"(its backbone serves {limit} positions, max_position_embeddings, and {answer_what} with the chat "
        f"template take {fixed}): shorten the {what}"
    )


# what a verb samples with when neither the command line nor the recipe's eval.options says
SAMPLING_DEFAULTS = {verb: task_sampling({}, verb) for verb in GUIDANCE}


def recipe_sampling(checkpoint: str | Path, verb: str, mode: str | None = None) -> dict:
    """The sampling the checkpoint's recipe evaluates ``verb`` with (``eval.options``, read by
    :func:`illume_kit.eval.sampling.task_sampling`), over :data:`SAMPLING_DEFAULTS`; ``mode``
    (``structured`` / ``official``) in place of the recipe's ``eval.options.sampling``."""
    from pydantic import ValidationError

    from illume_kit.core.layout import validation_summary
    from illume_kit.core.manifest import CheckpointError

    recipe = _checkpoint_recipe(checkpoint)
    opts = {} if recipe is None else _mapping_at(recipe, checkpoint, "eval", "options")
    # only the keys eval reads: a stored recipe may predate the typed options
    opts = {k: v for k, v in opts.items() if k in EvalOptions.model_fields}
    if mode is not None:
        opts["sampling"] = mode
    if recipe is None and mode is None:
        return dict(SAMPLING_DEFAULTS[verb])
    try:
        return task_sampling(opts, verb)
    except ValidationError as exc:
        raise CheckpointError(
            f"{Path(checkpoint) / 'recipe.yaml'}: {validation_summary(exc, 'eval.options')}"
        ) from None


def check_size(model, size: tuple[int, int]) -> None:
    """ValueError unless the tokenizer grids ``size`` and the vocab has its resolution tags."""
    h, w = size
    try:
        model.tokenizer.grid(h, w)
        model.layout.resolution_ids(h, w)
    except (ValueError, KeyError, AssertionError) as exc:
        strides = sorted({cb.stride for cb in model.tokenizer.codebooks})
        raise ValueError(
            f"--size {h}x{w} does not fit this model (tokenizer strides {strides}): "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None


def recipe_eval_options(checkpoint: str | Path) -> EvalOptions:
    """The checkpoint's recipe ``eval.options`` (defaults when it has no recipe); CheckpointError when bad."""
    from pydantic import ValidationError

    from illume_kit.core.layout import validation_summary
    from illume_kit.core.manifest import CheckpointError

    recipe = _checkpoint_recipe(checkpoint)
    if recipe is None:
        return EvalOptions()
    opts = _mapping_at(recipe, checkpoint, "eval", "options")
    try:
        return EvalOptions.model_validate({k: v for k, v in opts.items() if k in EvalOptions.model_fields})
    except ValidationError as exc:
        raise CheckpointError(
            f"{Path(checkpoint) / 'recipe.yaml'}: {validation_summary(exc, 'eval.options')}"
        ) from None


def _preprocess(args) -> tuple[str, EvalOptions]:
    """The sizing rule (``--preprocess``, else the recipe's ``eval.options.preprocess``) and the options."""
    opts = recipe_eval_options(args.checkpoint)
    return args.preprocess or opts.preprocess, opts


def size_multiple(model) -> int:
    """Sides of an image this model takes are multiples of this: its tokenizer strides and its
    resolution-tag step."""
    steps = [cb.stride for cb in model.tokenizer.codebooks] + [model.layout.resolution_step]
    return math.lcm(*steps)


def _fits(model, size: tuple[int, int]) -> bool:
    try:
        check_size(model, size)
    except ValueError:
        return False
    return True


def anchor_of(text: str | None, default_base: int) -> tuple[int, tuple[int, int] | None]:
    """``--size`` under official preprocessing -> (base, the anchor it names or None).

    ``N``: the anchor table of base N; ``HxW``: that anchor, which must be one of some base's table.
    """
    from illume_kit.data.aspect import RATIOS_512, anchors, check_base

    if text is None:
        return check_base(default_base), None
    m = re.fullmatch(r"\s*(\d+)\s*", str(text))
    if m:
        try:
            return check_base(int(m.group(1))), None
        except ValueError as exc:
            raise ValueError(f"--size {text}: {exc}") from None
    h, w = parse_size(text)
    for rh, rw in RATIOS_512:
        if (h * 512) % rh == 0 and h * 512 // rh * rw == w * 512:
            base = h * 512 // rh
            try:
                if (h, w) in anchors(check_base(base)):
                    return base, (h, w)
            except ValueError:
                continue
    table = ", ".join(f"{a}x{b}" for a, b in anchors(check_base(default_base)))
    raise ValueError(
        f"--size {text}: not an aspect-ratio anchor; give a base (a multiple of 8, e.g. {default_base}) "
        f"or one of its anchors, e.g. at base {default_base}: {table}"
    )


def check_anchor(model, base: int, anchor: tuple[int, int]) -> None:
    """ValueError naming the valid anchors of ``base`` unless the model takes ``anchor``."""
    from illume_kit.data.aspect import anchors

    if _fits(model, anchor):
        return
    valid = [a for a in anchors(base) if _fits(model, a)]
    listed = ", ".join(f"{h}x{w}" for h, w in valid) or "none (try another base)"
    raise ValueError(
        f"--size: anchor {anchor[0]}x{anchor[1]} (base {base}) does not fit this model "
        f"(resolution tags every {model.layout.resolution_step} up to "
        f"{len(model.layout.resolution_tags) // 2 * model.layout.resolution_step}, sides multiples of "
        f"{size_multiple(model)}); valid anchors at base {base}: {listed}"
    )


def official_understand_image(args, model, opts: EvalOptions):
    """The question's image at its own aspect, within the pixel bounds, sides on the model's multiple."""
    from illume_kit.data.aspect import native_resize
    from illume_kit.data.images import load_rgb
    from illume_kit.data.shapes import to_tensor

    given = parse_size(args.size)
    if given is not None:
        max_pixels = given[0] * given[1]
    elif opts.max_pixels is not None:
        max_pixels = opts.max_pixels
    else:
        side = recipe_image_size(args.checkpoint)
        max_pixels = side[0] * side[1]
    min_pixels = min(opts.min_pixels, max_pixels)
    img = native_resize(load_rgb(args.image), min_pixels, max_pixels, size_multiple(model))
    return to_tensor(img), (img.height, img.width)


def official_anchor(args, model, opts: EvalOptions, source=None) -> tuple[int, int]:
    """The anchor ``generate`` (``source`` None: the base's square unless ``--size`` names one) or
    ``edit`` (the one nearest ``source``'s aspect among those the model takes) works at; refused
    unless the model takes it."""
    from illume_kit.data.aspect import anchors, nearest_anchor

    default = opts.anchor_base or recipe_image_size(args.checkpoint)[0]
    base, anchor = anchor_of(args.size, default)
    if anchor is None and source is not None:
        # every anchor of the released tables fits the released model; a smaller model may take
        # only some of them, and an edit snaps among those
        valid = [a for a in anchors(base) if _fits(model, a)]
        anchor = nearest_anchor(source.height, source.width, table=valid) if valid else (base, base)
    elif anchor is None:
        anchor = (base, base)
    check_anchor(model, base, anchor)
    return anchor


def load_image(path: str | Path, size: tuple[int, int]):
    """An image file -> float (3, H, W) in [0, 1], center-cropped to the aspect of ``size`` and resized."""
    from illume_kit.data.images import fit_image, load_rgb

    return fit_image(load_rgb(path), size)  # its declared size checked against the pixel budget before decoding


def _load_model(args):
    import torch

    from illume_kit.model.checkpoint import load_checkpoint

    target = check_device_available(args.device)  # before the (slow) load
    model, _ = load_checkpoint(args.checkpoint)
    torch.manual_seed(args.seed)
    return model.to(target).eval()


def save_images(images, path: Path) -> Path:
    """One image -> that image; several -> a near-square grid of them."""
    from illume_kit.eval.grid import to_pil
    from illume_kit.eval.tasks import save_rows

    path.parent.mkdir(parents=True, exist_ok=True)
    if len(images) == 1:
        to_pil(images[0]).save(path)
        return path
    return save_rows([(im,) for im in images], path, per_row=math.ceil(math.sqrt(len(images))))


def _sampling(args, verb: str) -> dict:
    """cfg, temperature, top_k, top_p (and, sampling official, the mode and its keys): from the
    command line, else from the checkpoint's recipe."""
    mode = getattr(args, "sampling", None)
    out = recipe_sampling(args.checkpoint, verb) if mode is None else recipe_sampling(args.checkpoint, verb, mode)
    official = out.get("sampling") == "official"
    extra = {"rewarp": getattr(args, "rewarp", None), "repetition_penalty": getattr(args, "repetition_penalty", None)}
    given = [flag for flag, key in (("--rewarp/--no-rewarp", "rewarp"), ("--repetition-penalty", "repetition_penalty"))
             if extra[key] is not None]  # fmt: skip
    if given and not official:
        raise ValueError(
            f"{given[0]} applies to the official sampling mode only; this checkpoint's recipe samples "
            "structured: add --sampling official"
        )
    out.update({k: v for k, v in extra.items() if v is not None})
    loop = getattr(args, "decode_loop", None)
    if loop is not None:
        if official and loop != "dynamic":
            raise ValueError(
                f"--decode-loop {loop} applies to the structured sampler; this command samples official "
                "(generate() decodes): drop --decode-loop or add --sampling structured"
            )
        out = {k: v for k, v in out.items() if k not in ("cache", "compile")} | LOOPS[loop]
    cli = {"cfg": args.cfg, "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}
    out.update({k: v for k, v in cli.items() if v is not None})
    if not official:
        out["top_k"] = out["top_k"] or None
    return out


# ---------------------------------------------------------------- verbs


def understand_answer(args, load=None, warn=None) -> str:
    """The answer ``understand`` prints for ``args`` (checkpoint, image, question, size, preprocess,
    max_new_tokens, seed, device). ``load(args)``: the model (default: read the checkpoint; a server
    passes the one it holds); ``warn``: where warnings go (default: stderr)."""
    load = load or _load_model
    check_text(args.question, "question")
    _check_image(args.image)
    size = parse_size(args.size) or recipe_image_size(args.checkpoint)
    mode, opts = _preprocess(args)
    if mode == "official":
        model = load(args)
        image, size = official_understand_image(args, model, opts)
    else:
        image = load_image(args.image, size)
        model = load(args)
    check_size(model, size)
    from illume_kit.model.prompts import style_of
    from illume_kit.model.sampler import answer

    check_fits(
        model,
        "question",
        args.question,
        lambda q: style_of(model).und_prompt(image, q),
        args.max_new_tokens,
        f"the {size[0]}x{size[1]} image and --max-new-tokens {args.max_new_tokens}",
        "--max-new-tokens at most {room}",
    )
    warn_unfamiliar(args.checkpoint, "question", args.question, size, args.size is not None, warn)
    return answer(model, [image], [args.question], max_new_tokens=args.max_new_tokens)[0]


def cmd_understand(args) -> int:
    print(understand_answer(args))
    return 0


def model_and_size(args, load=None):
    """(model, image size to generate, preprocessing options): ``--size`` (or the recipe's) checked
    against the model; with ``--preprocess official`` the aspect-ratio anchor (the flag checked before
    the weights load). ``load(args)``: the model (default: read the checkpoint)."""
    load = load or _load_model
    mode, opts = _preprocess(args)
    if mode == "official":
        anchor_of(args.size, opts.anchor_base or recipe_image_size(args.checkpoint)[0])  # before the load
        model = load(args)
        return model, official_anchor(args, model, opts), opts
    size = parse_size(args.size) or recipe_image_size(args.checkpoint)
    model = load(args)
    check_size(model, size)
    return model, size, opts


def cmd_generate(args) -> int:
    from illume_kit.cli.batch_cmds import check_modes, cmd_generate_batch

    if check_modes(args, ("caption",), "--prompts", args.prompts):
        return cmd_generate_batch(args)
    check_text(args.caption, "caption")
    out = _check_output(args.output)
    images, size = generated_images(args)
    save_images(images, out)
    from illume_kit.cli.output import console

    console.print(f"[green]wrote[/] {out} ({len(images)} image{'s' if len(images) > 1 else ''} of {size[0]}x{size[1]})")
    return 0


def generated_images(args, load=None, warn=None, progress=None) -> tuple[list, tuple[int, int]]:
    """(the images, float (3, H, W) on the CPU, and their size) ``generate`` draws for ``args``
    (checkpoint, caption, size, num, batch_size, seed, the sampling flags). ``load`` and ``warn`` as
    in :func:`understand_answer`; ``progress(done, total)`` as images are drawn (``done`` counts
    fractions of a batch as its tokens come)."""
    check_text(args.caption, "caption")
    model, size, _ = model_and_size(args, load)
    from illume_kit.model.prompts import style_of
    from illume_kit.model.sampler import decode_images, generate_images, image_template

    sampling = _sampling(args, "generate")
    official = sampling.get("sampling") == "official"
    # the official budget: the image and up to 5 more tokens (text before it, eos)
    template = len(image_template(model, size, 0)) + (5 if official else 0)
    check_fits(
        model,
        "caption",
        args.caption,
        lambda c: style_of(model).t2i_prompt(c, size),
        template,
        f"a {size[0]}x{size[1]} image",
        "a smaller --size",
    )
    warn_unfamiliar(args.checkpoint, "caption", args.caption, size, args.size is not None, warn)
    images = []
    num = args.num or 1
    if progress is not None:
        progress(0, num)
    for b, lo in enumerate(range(0, num, args.batch_size)):
        k = min(args.batch_size, num - lo)
        # official: one prompt per draw, image i seeded seed + i (generate_images seeds prompt j with seed + j)
        seed = args.seed + (lo if official else b)
        # the structured sampler reports its tokens: the bar moves within a batch too
        tokens = (
            {} if official or progress is None else {"progress": lambda t, n, lo=lo, k=k: progress(lo + k * t / n, num)}
        )
        codes = generate_images(model, [args.caption] * k, size, seed=seed, **sampling, **tokens)
        images += [im.float().cpu() for im in decode_images(model, codes)]
        if progress is not None:
            progress(len(images), num)
    return images, size


def cmd_edit(args) -> int:
    from illume_kit.cli.batch_cmds import check_modes, cmd_edit_batch

    if check_modes(args, ("image", "instruction"), "--pairs", args.pairs):
        return cmd_edit_batch(args)
    check_text(args.instruction, "instruction")
    out = _check_output(args.output)
    save_images([edited_image(args)], out)
    from illume_kit.cli.output import console

    console.print(f"[green]wrote[/] {out}")
    return 0


def edited_image(args, load=None, warn=None):
    """The edit (float (3, H, W) on the CPU) ``edit`` draws for ``args`` (checkpoint, image,
    instruction, size, preprocess, seed, the sampling flags); ``load`` and ``warn`` as in
    :func:`understand_answer`."""
    load = load or _load_model
    check_text(args.instruction, "instruction")
    _check_image(args.image)
    mode, opts = _preprocess(args)
    if mode == "official":
        from illume_kit.data.aspect import snap
        from illume_kit.data.images import load_rgb
        from illume_kit.data.shapes import to_tensor

        anchor_of(args.size, opts.anchor_base or recipe_image_size(args.checkpoint)[0])  # before the load
        source = load_rgb(args.image)
        model = load(args)
        size = official_anchor(args, model, opts, source)
        image = to_tensor(snap(source, size, "pad"))
    else:
        size = parse_size(args.size) or recipe_image_size(args.checkpoint)
        image = load_image(args.image, size)
        model = load(args)
        check_size(model, size)
    from illume_kit.model.prompts import style_of
    from illume_kit.model.sampler import decode_images, edit_images, image_template

    order = getattr(model, "edit_order", "image_first")
    sampling = _sampling(args, "edit")
    check_fits(
        model,
        "instruction",
        args.instruction,
        lambda t: style_of(model).edit_prompt(image, t, order=order),
        len(image_template(model, size, 0)) + (5 if sampling.get("sampling") == "official" else 0),
        f"the source and the edited {size[0]}x{size[1]} image",
        "a smaller --size",
    )
    warn_unfamiliar(args.checkpoint, "instruction", args.instruction, size, args.size is not None, warn)
    codes = edit_images(model, [image], [args.instruction], seed=args.seed, **sampling)
    return decode_images(model, codes)[0].float().cpu()


def _common(p, size_help: str) -> None:
    p.add_argument("checkpoint", help="a checkpoint folder (from `compose -o` or training)")
    p.add_argument("--size", help=size_help)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--device", type=device, default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument(
        "--preprocess",
        choices=get_args(Preprocess),
        help="plain: crop and resize to --size; official: size images as the released ILLUME+ does "
        "(default: the recipe's eval.options.preprocess, else plain)",
    )


def _sampling_args(p, verb: str) -> None:
    key, scale = GUIDANCE[verb]
    t, k, top = OFFICIAL_SAMPLING_DEFAULTS[verb]
    task = "editing" if verb == "edit" else "generation"
    official = f"with --sampling official: {{}}, the official recommendation for {task}"
    p.add_argument(
        "--sampling",
        choices=get_args(SamplingMode),
        help="structured: illume-kit's sampler; official: the released ILLUME+'s generate() with its logits "
        "processor, token for token, one image at a time (default: the recipe's eval.options.sampling, else structured)",
    )
    p.add_argument(
        "--cfg",
        type=finite_float,
        help=f"classifier-free guidance scale, 1 = off (default: the recipe's eval.options.{key}, else {scale})",
    )
    p.add_argument(
        "--temperature",
        type=nonnegative_float,
        help="0 = greedy (default: the recipe's eval.options.temperature, else 1; " + official.format(t) + ")",
    )
    p.add_argument(
        "--top-k",
        type=nonnegative_int,
        help="0 = off (default: the recipe's eval.options.top_k, else off; " + official.format(k) + ")",
    )
    p.add_argument(
        "--top-p",
        type=probability,
        help="default: the recipe's eval.options.top_p, else 1; " + official.format(top),
    )
    p.add_argument(
        "--decode-loop",
        choices=tuple(LOOPS),
        help="the structured sampler's token loop: dynamic (growing KV cache), static (preallocated cache, "
        "fixed-shape steps) or compiled (that step through torch.compile; the first call compiles) "
        "(default: the recipe's eval.options.decode_loop, else dynamic)",
    )
    p.add_argument(
        "--rewarp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="sampling official: apply generate()'s own temperature / top-k / top-p again after the official "
        "processor, as the official pipeline does (default: the recipe's eval.options.rewarp, else on)",
    )
    p.add_argument(
        "--repetition-penalty",
        type=positive_float,
        help="sampling official: generate()'s repetition penalty over the generated tokens, 1 = off "
        "(default: the recipe's eval.options.repetition_penalty, else 1.05 as released)",
    )


def _batch_args(p, flag: str) -> None:
    p.add_argument(
        "--samples",
        type=positive_int,
        help=f"{flag}: images per line, each seeded from --seed, the line's index and the sample's "
        "(default: 4 for the geneval and dpg layouts, else 1)",
    )


def register(sub) -> None:
    p = sub.add_parser("understand", help="answer a question about an image")
    _common(
        p,
        "resize the image to HxW first (default: the recipe's image size); "
        "with --preprocess official: at most H*W pixels at the image's own aspect",
    )
    p.add_argument("image", help="a png/jpg image")
    p.add_argument("question")
    p.add_argument("--max-new-tokens", type=positive_int, default=32, help="longest answer, in tokens")
    p.set_defaults(func=cmd_understand)

    p = sub.add_parser("generate", help="generate an image from a caption")
    _common(
        p,
        "image size HxW (default: the recipe's image size); with --preprocess official: "
        "an anchor base N (the square anchor) or an anchor HxW",
    )
    p.add_argument("caption", nargs="?", help="the caption (or --prompts FILE for a batch)")
    p.add_argument(
        "-o", "--output", required=True, help="output image (png/jpg); with --num > 1 a grid; with --prompts a folder"
    )
    p.add_argument("--num", type=positive_int, help="images to draw (written as one grid; default 1)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="rows (prompts x samples) per sampler call")
    p.add_argument(
        "--prompts",
        metavar="FILE",
        help="batch: a jsonl file, one prompt a line (prompt | text | caption, optional id), or a folder of "
        ".txt files (DPG-Bench's prompts/); -o names the output folder; a rerun skips finished prompts",
    )
    _batch_args(p, "--prompts")
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        help="--prompts: geneval (OUT/<index>/metadata.jsonl + samples/<k>.png, the default), dpg (OUT/<id>.png, "
        "a 2-column grid of the samples), flat (OUT/<id>[_<k>].png + metadata.jsonl)",
    )
    p.add_argument("--grid", action="store_true", help="--layout geneval: also write OUT/<index>/grid.png")
    _sampling_args(p, "generate")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("edit", help="edit an image according to an instruction")
    _common(
        p,
        "resize the image to HxW first; the edit has this size (default: the recipe's image size); "
        "with --preprocess official: an anchor base N (the anchor nearest the image's aspect) or an anchor HxW",
    )
    p.add_argument("image", nargs="?", help="a png/jpg image (or --pairs FILE for a batch)")
    p.add_argument("instruction", nargs="?")
    p.add_argument("-o", "--output", required=True, help="output image (png/jpg); with --pairs a folder")
    p.add_argument(
        "--pairs",
        metavar="FILE",
        help="batch: a jsonl file, one edit a line (image: a path relative to the file's folder, instruction, "
        "optional id); writes OUT/<id or index>.png and OUT/metadata.jsonl; a rerun skips finished pairs",
    )
    p.add_argument("--batch-size", type=positive_int, default=8, help="--pairs: rows per sampler call")
    _batch_args(p, "--pairs")
    _sampling_args(p, "edit")
    p.set_defaults(func=cmd_edit)
