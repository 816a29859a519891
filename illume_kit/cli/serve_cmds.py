"""`illume-kit serve`: a browser demo and an HTTP API (Gradio's) for one or more checkpoints.

Each checkpoint loads once. The page has understanding, generation and editing tabs (a compare tab
with two checkpoints or more, and an info tab with the composed model tree); every field left blank
takes the checkpoint's own recipe defaults, as ``understand`` / ``generate`` / ``edit`` do, and the
answers are the ones those verbs give (the same functions of ``generate_cmds`` run). Requests queue:
a model serves one at a time (its lock), the others wait in Gradio's queue. The same functions are
Gradio's HTTP API (``gradio_client``: ``/understand``, ``/generate``, ``/edit``, ``/compare``,
``/info``); see docs/serve.md.

Safe by default: binds to 127.0.0.1, no share link, no analytics; uploads, image pixels, prompt
length and images per request are limited, and a refused or failed request shows one message in
the page (a bug: a short line there, the traceback in the server's log).

Gradio is an optional extra (``illume-kit[serve]``), imported only when the verb runs; torch too.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import sys
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from illume_kit.cli.args import device, positive_float, positive_int

DEFAULT_MAX_PIXELS = 16_000_000
DEFAULT_MAX_PROMPT_CHARS = 2_000
DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_IMAGES = 8
MAX_NEW_TOKENS = 256
# the batch generate uses when none is given on the command line: the same draws for the same seed
BATCH_SIZE = 8


@dataclass
class Limits:
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    max_images: int = DEFAULT_MAX_IMAGES


@dataclass
class Served:
    """One loaded checkpoint: its model (on its device), its lock and what the page shows of it."""

    name: str
    checkpoint: str
    model: Any
    device: str
    tree: str
    defaults: str
    lock: threading.Lock = field(default_factory=threading.Lock)

    def load(self, args):
        """The ``load`` the verbs' functions take: the held model, torch seeded as a fresh load is."""
        import torch

        torch.manual_seed(args.seed)
        return self.model

    def levels(self) -> list[str]:
        return ["text"] + [cb.name for cb in self.model.layout.codebooks]


def _names(checkpoints: list[str]) -> list[str]:
    """A short, unique name per checkpoint: its folder's name (a number added on a clash)."""
    out: list[str] = []
    for ckpt in checkpoints:
        base = Path(ckpt).resolve().name or str(ckpt)
        name, i = base, 2
        while name in out:
            name, i = f"{base}-{i}", i + 1
        out.append(name)
    return out


def model_tree(checkpoint: str | Path, model) -> str:
    """The composed model tree ``illume-kit inspect`` prints, as plain text."""
    from rich.console import Console

    from illume_kit.cli.recipe_cmds import _trained_size, describe, print_tree
    from illume_kit.core.manifest import read_manifest

    manifest = read_manifest(checkpoint)
    info = describe(model, None, manifest, own=_trained_size(checkpoint), own_label="trained size")
    buf = io.StringIO()
    print_tree(info, console=Console(file=buf, width=110, color_system=None, highlight=False))
    return buf.getvalue()


def recipe_defaults(checkpoint: str | Path) -> str:
    """One markdown line: what blank fields take for this checkpoint."""
    from illume_kit.cli.generate_cmds import recipe_image_size, recipe_sampling

    h, w = recipe_image_size(checkpoint)
    parts = [f"size {h}x{w}"]
    for verb in ("generate", "edit"):
        s = recipe_sampling(checkpoint, verb)
        keys = ", ".join(f"{k} {s[k]}" for k in ("cfg", "temperature", "top_k", "top_p"))
        mode = f" ({s['sampling']} sampling)" if s.get("sampling") else ""
        parts.append(f"{verb}: {keys}{mode}")
    return "Recipe defaults (blank fields): " + "; ".join(parts)


def load_served(checkpoints: list[str], device_name: str) -> list[Served]:
    from illume_kit.cli.args import check_device_available
    from illume_kit.cli.output import console
    from illume_kit.model.checkpoint import load_checkpoint

    target = check_device_available(device_name)
    out = []
    for name, ckpt in zip(_names(checkpoints), checkpoints):
        model, _ = load_checkpoint(ckpt)
        model = model.to(target).eval()
        out.append(Served(name, str(ckpt), model, str(target), model_tree(ckpt, model), recipe_defaults(ckpt)))
        console.print(f"loaded {ckpt} as [bold]{name}[/] on {target}")
    return out


# ---------------------------------------------------------------- requests


class Server:
    """The functions the page and the API call; each checks its inputs against ``limits`` first."""

    def __init__(self, served: list[Served], limits: Limits) -> None:
        self.served = {s.name: s for s in served}
        self.limits = limits

    def pick(self, name: str | None) -> Served:
        if not name:
            return next(iter(self.served.values()))
        if name not in self.served:
            raise ValueError(f"checkpoint {name!r} is not served here; valid: {', '.join(self.served)}")
        return self.served[name]

    # -- input checks (before a model is touched)

    def text(self, text: str | None, what: str) -> str:
        text = (text or "").strip()
        if not text:
            raise ValueError(f"the {what} is empty: type one")
        if len(text) > self.limits.max_prompt_chars:
            raise ValueError(
                f"the {what} is {len(text):,} characters long; this server takes at most "
                f"{self.limits.max_prompt_chars:,} (illume-kit serve --max-prompt-chars)"
            )
        return text

    def image(self, path: str | None) -> str:
        """An uploaded image's path, once its declared size is within the pixel limit."""
        from illume_kit.data.images import open_image

        if not path:
            raise ValueError("no image: upload one (png, jpg, webp or bmp)")
        # the header only, with no budget of its own: the size is checked against this server's
        with open_image(path, budget=2**62, name="the uploaded image") as img:
            w, h = img.size
        if w * h > self.limits.max_pixels:
            raise ValueError(
                f"the uploaded image is {w}x{h} = {w * h / 1e6:.1f} Mpx; this server takes at most "
                f"{self.limits.max_pixels / 1e6:g} Mpx (illume-kit serve --max-pixels): downscale it first"
            )
        return path

    @staticmethod
    def number(value, what: str, lo: float | None = None, hi: float | None = None, integer: bool = False):
        """``value`` (None: the recipe's) within [lo, hi]."""
        if value is None or value == "":
            return None
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{what} {value!r:.40} is not a number") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError(f"{what} must be a finite number, got {value}")
        if integer and number != int(number):
            raise ValueError(f"{what} must be a whole number, got {value}")
        if (lo is not None and number < lo) or (hi is not None and number > hi):
            span = f"{lo:g} to {hi:g}" if hi is not None else f"at least {lo:g}"
            raise ValueError(f"{what} is {value}; valid: {span}")
        return int(number) if integer else number

    def sampling(self, served: Served, verb: str, cfg, temperature, top_k, top_p, per_level) -> dict:
        """The sampling flags of ``generate`` / ``edit`` (None: the recipe's), ``per_level`` (JSON:
        ``{"temperature": {"text": 1.0, "<codebook>": 0.7}, ...}``) over the single numbers."""
        import json

        from illume_kit.cli.generate_cmds import recipe_sampling

        out = {
            "cfg": self.number(cfg, "guidance (cfg)", 0, 100),
            "temperature": self.number(temperature, "temperature", 0, 100),
            "top_k": self.number(top_k, "top-k", 0, None, integer=True),
            "top_p": self.number(top_p, "top-p", 0, 1),
        }
        if out["top_p"] == 0:
            raise ValueError("top-p is 0; valid: more than 0, at most 1")
        if per_level and str(per_level).strip():
            try:
                levels = json.loads(per_level)
            except json.JSONDecodeError as exc:
                raise ValueError(f"per-level sampling is not JSON: {exc}") from None
            valid = served.levels()
            example = f'{{"temperature": {{"{valid[-1]}": 0.7}}}}'
            if not isinstance(levels, dict):
                raise ValueError(f"per-level sampling must be a JSON object, e.g. {example}")
            official = recipe_sampling(served.checkpoint, verb).get("sampling") == "official"
            for key, per in levels.items():
                if key not in ("temperature", "top_k", "top_p"):
                    raise ValueError(f"per-level sampling: unknown key {key!r}; valid: temperature, top_k, top_p")
                if not isinstance(per, dict) or not per:
                    raise ValueError(f"per-level sampling: {key} must map levels to numbers, e.g. {example}")
                bad = sorted(set(per) - set(valid))
                if bad:
                    raise ValueError(f"per-level sampling: unknown level {bad[0]!r}; levels: {', '.join(valid)}")
                rng = {"temperature": (0, 100, False), "top_k": (0, None, True), "top_p": (0, 1, False)}[key]
                checked = {
                    lvl: self.number(v, f"{key} of level {lvl}", *rng[:2], integer=rng[2]) for lvl, v in per.items()
                }
                if key == "top_k" and not official:
                    checked = {lvl: v or None for lvl, v in checked.items()}  # the structured sampler: None is off
                out[key] = checked
        return out

    def field_defaults(self, name: str | None, verb: str) -> tuple:
        """(cfg, temperature, top-k, top-p, per-level JSON) the page's fields start at for ``verb``:
        the checkpoint's recipe values (a per-level value in the JSON, its number blank)."""
        import json

        from illume_kit.cli.generate_cmds import recipe_sampling

        s = recipe_sampling(self.pick(name).checkpoint, verb)
        numbers = {k: s.get(k) for k in ("temperature", "top_k", "top_p")}
        per = {k: v for k, v in numbers.items() if isinstance(v, dict)}
        numbers = {k: None if k in per else v for k, v in numbers.items()}
        top_k = numbers["top_k"] or 0  # 0 shows "off", as None does
        return s["cfg"], numbers["temperature"], top_k, numbers["top_p"], json.dumps(per) if per else ""

    def args(self, served: Served, **given) -> argparse.Namespace:
        """What the verbs' functions read, as their command line would give it."""
        base = {
            "checkpoint": served.checkpoint,
            "device": served.device,
            "size": None,
            "seed": 0,
            "preprocess": None,
            "sampling": None,
            "rewarp": None,
            "repetition_penalty": None,
            "cfg": None,
            "temperature": None,
            "top_k": None,
            "top_p": None,
            "max_new_tokens": 32,
            "num": 1,
            "batch_size": BATCH_SIZE,
        }
        base.update(given)
        if isinstance(base["size"], str):
            base["size"] = base["size"].strip() or None
        return argparse.Namespace(**base)

    def seed(self, seed) -> int:
        return self.number(0 if seed is None or seed == "" else seed, "seed", 0, 2**63 - 1, integer=True)

    # -- the three tasks

    def understand(self, checkpoint, image, question, size=None, max_new_tokens=32, seed=0, warn=None) -> str:
        from illume_kit.cli.generate_cmds import understand_answer

        served = self.pick(checkpoint)
        question = self.text(question, "question")
        image = self.image(image)
        tokens = self.number(
            max_new_tokens if max_new_tokens not in (None, "") else 32,
            "max new tokens",
            1,
            MAX_NEW_TOKENS,
            integer=True,
        )
        args = self.args(served, image=image, question=question, size=size, max_new_tokens=tokens, seed=self.seed(seed))
        with served.lock:
            return understand_answer(args, served.load, warn)

    def generate(
        self,
        checkpoint,
        prompt,
        size=None,
        cfg=None,
        temperature=None,
        top_k=None,
        top_p=None,
        per_level=None,
        seed=0,
        num=1,
        warn=None,
        progress=None,
    ) -> list:
        from illume_kit.cli.generate_cmds import generated_images
        from illume_kit.eval.grid import to_pil

        served = self.pick(checkpoint)
        prompt = self.text(prompt, "prompt")
        num = self.number(
            num if num not in (None, "") else 1, "number of images", 1, self.limits.max_images, integer=True
        )
        sampling = self.sampling(served, "generate", cfg, temperature, top_k, top_p, per_level)
        args = self.args(served, caption=prompt, size=size, seed=self.seed(seed), num=num, **sampling)
        with served.lock:
            images, _ = generated_images(args, served.load, warn, progress)
        return [to_pil(im) for im in images]

    def edit(
        self,
        checkpoint,
        image,
        instruction,
        size=None,
        cfg=None,
        temperature=None,
        top_k=None,
        top_p=None,
        per_level=None,
        seed=0,
        warn=None,
    ):
        from illume_kit.cli.generate_cmds import edited_image
        from illume_kit.eval.grid import to_pil

        served = self.pick(checkpoint)
        instruction = self.text(instruction, "instruction")
        image = self.image(image)
        sampling = self.sampling(served, "edit", cfg, temperature, top_k, top_p, per_level)
        args = self.args(served, image=image, instruction=instruction, size=size, seed=self.seed(seed), **sampling)
        with served.lock:
            return to_pil(edited_image(args, served.load, warn))

    def compare(self, task, checkpoint_a, checkpoint_b, image, text, seed=0, warn=None) -> tuple:
        """``task`` on two checkpoints, each at its recipe's defaults: (answer A, images A, answer B, images B)."""
        out: list = []
        for name in (checkpoint_a, checkpoint_b):
            if task == "understand":
                out += [self.understand(name, image, text, seed=seed, warn=warn), []]
            elif task == "generate":
                out += ["", self.generate(name, text, seed=seed, warn=warn)]
            elif task == "edit":
                out += ["", [self.edit(name, image, text, seed=seed, warn=warn)]]
            else:
                raise ValueError(f"task {task!r}; valid: understand, generate, edit")
        return tuple(out)

    def info(self, checkpoint) -> str:
        served = self.pick(checkpoint)
        return f"**{served.name}** — `{served.checkpoint}` on {served.device}\n\n{served.defaults}\n\n```text\n{served.tree}```"


# ---------------------------------------------------------------- the page


def _guarded(fn):
    """Run ``fn`` for the page: a refused input or a known failure -> its message in the page; a bug
    -> a short message there and the traceback in the server's log. Warnings go to the page too."""
    import gradio as gr

    from illume_kit.cli.output import expected_failure

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            text = expected_failure(exc)
            if text is None:
                traceback.print_exc(file=sys.stderr)
                text = f"internal error ({type(exc).__name__}): the server's log has the traceback; please report it"
            raise gr.Error(text, print_exception=False) from None

    return run


def build_app(server: Server, title: str = "illume-kit"):
    """The Gradio Blocks of ``server``: the tabs, their API names, one request per model at a time."""
    import gradio as gr

    names = list(server.served)
    first = names[0]
    lim = server.limits
    queue = {"concurrency_limit": len(names), "concurrency_id": "models"}

    def pick(label: str):
        return gr.Dropdown(names, value=first, label=label, visible=len(names) > 1, interactive=True)

    def size_box(what: str):
        return gr.Textbox(label=f"size ({what})", placeholder="blank: the recipe's image size, e.g. 64 or 64x48")

    def sampling_boxes(verb: str):
        cfg, temperature, top_k, top_p, per_level = server.field_defaults(first, verb)
        with gr.Row():
            cfg = gr.Number(label="guidance (cfg, 1 = off)", value=cfg, minimum=0)
            temperature = gr.Number(label="temperature (0 = greedy)", value=temperature, minimum=0)
            top_k = gr.Number(label="top-k (0 = off)", value=top_k, minimum=0, precision=0)
            top_p = gr.Number(label="top-p", value=top_p, minimum=0, maximum=1)
        levels = ", ".join(server.pick(first).levels())
        per_level = gr.Textbox(
            label="per-level sampling (JSON, optional; over the numbers above)",
            value=per_level,
            placeholder=f'{{"temperature": {{"text": 1.0}}, "top_k": {{...}}}}  levels: {levels}',
        )
        return [cfg, temperature, top_k, top_p, per_level]

    def follow(ck, verb: str, boxes: list) -> None:
        """Choosing another checkpoint fills the sampling fields with its recipe's values."""
        ck.change(lambda name: server.field_defaults(name, verb), ck, boxes, api_visibility="private")

    def warn_page(text: str) -> None:
        gr.Warning(text)

    def understand(checkpoint, image, question, size=None, max_new_tokens=32, seed=0):
        return server.understand(checkpoint, image, question, size, max_new_tokens, seed, warn_page)

    def generate(
        checkpoint,
        prompt,
        size=None,
        cfg=None,
        temperature=None,
        top_k=None,
        top_p=None,
        per_level=None,
        seed=0,
        num=1,
        progress=gr.Progress(),  # noqa: B008  (how Gradio hands a function its progress bar)
    ):
        def report(done, total):
            # done counts fractions of a batch as its tokens come: a fraction moves the bar smoothly
            progress(done / total, desc=f"{int(done)} of {total} image{'s' if total > 1 else ''}")

        return server.generate(
            checkpoint, prompt, size, cfg, temperature, top_k, top_p, per_level, seed, num, warn_page, report
        )

    def edit(
        checkpoint,
        image,
        instruction,
        size=None,
        cfg=None,
        temperature=None,
        top_k=None,
        top_p=None,
        per_level=None,
        seed=0,
    ):
        return server.edit(
            checkpoint, image, instruction, size, cfg, temperature, top_k, top_p, per_level, seed, warn_page
        )

    def compare(task, checkpoint_a, checkpoint_b, image=None, text=None, seed=0):
        return server.compare(task, checkpoint_a, checkpoint_b, image, text, seed, warn_page)

    def info(checkpoint):
        return server.info(checkpoint)

    def image_in(label: str):
        # filepath and no mode conversion: the upload is not decoded before its size is checked
        return gr.Image(label=label, type="filepath", image_mode=None, sources=["upload", "clipboard"], height=280)

    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(
            f"# {title}\nServing {', '.join(f'`{n}`' for n in names)}. The fields start at each checkpoint's "
            f"recipe values; a blank size is the recipe's. Limits: uploads {lim.max_upload_mb:g} MB, images {lim.max_pixels / 1e6:g} Mpx, "
            f"text {lim.max_prompt_chars:,} characters, {lim.max_images} images a request."
        )
        with gr.Tabs():
            with gr.Tab("Understand", id="understand"):
                with gr.Row():
                    with gr.Column():
                        ck = pick("checkpoint")
                        img = image_in("image")
                        question = gr.Textbox(label="question", lines=2)
                        with gr.Row():
                            size = size_box("the image is resized to it")
                            tokens = gr.Number(
                                label="max new tokens", value=32, precision=0, minimum=1, maximum=MAX_NEW_TOKENS
                            )
                            seed = gr.Number(label="seed", value=0, precision=0, minimum=0)
                        go = gr.Button("Answer", variant="primary")
                    with gr.Column():
                        out = gr.Textbox(label="answer", lines=4)
                go.click(
                    _guarded(understand), [ck, img, question, size, tokens, seed], out, api_name="understand", **queue
                )
            with gr.Tab("Generate", id="generate"):
                with gr.Row():
                    with gr.Column():
                        ck = pick("checkpoint")
                        prompt = gr.Textbox(label="prompt", lines=2)
                        with gr.Row():
                            size = size_box("or an anchor with official preprocessing")
                            seed = gr.Number(label="seed", value=0, precision=0, minimum=0)
                            num = gr.Number(label="images", value=1, precision=0, minimum=1, maximum=lim.max_images)
                        samp = sampling_boxes("generate")
                        follow(ck, "generate", samp)
                        go = gr.Button("Generate", variant="primary")
                    with gr.Column():
                        gallery = gr.Gallery(label="images", columns=4, format="png", height=420)
                go.click(
                    _guarded(generate), [ck, prompt, size, *samp, seed, num], gallery, api_name="generate", **queue
                )
            with gr.Tab("Edit", id="edit"):
                with gr.Row():
                    with gr.Column():
                        ck = pick("checkpoint")
                        img = image_in("source image")
                        instruction = gr.Textbox(label="instruction", lines=2)
                        with gr.Row():
                            size = size_box("the source is resized to it")
                            seed = gr.Number(label="seed", value=0, precision=0, minimum=0)
                        samp = sampling_boxes("edit")
                        follow(ck, "edit", samp)
                        go = gr.Button("Edit", variant="primary")
                    with gr.Column():
                        edited = gr.Image(label="edited", type="pil", format="png", height=420)
                go.click(_guarded(edit), [ck, img, instruction, size, *samp, seed], edited, api_name="edit", **queue)
            if len(names) > 1:
                with gr.Tab("Compare", id="compare"):
                    gr.Markdown("One request on two checkpoints side by side, each at its recipe's defaults.")
                    with gr.Row():
                        task = gr.Radio(["understand", "generate", "edit"], value="generate", label="task")
                        a = gr.Dropdown(names, value=names[0], label="checkpoint A")
                        b = gr.Dropdown(names, value=names[1], label="checkpoint B")
                        seed = gr.Number(label="seed", value=0, precision=0, minimum=0)
                    with gr.Row():
                        img = image_in("image (understand, edit)")
                        text = gr.Textbox(label="question, prompt or instruction", lines=3)
                    go = gr.Button("Run on both", variant="primary")
                    with gr.Row():
                        with gr.Column():
                            ans_a = gr.Textbox(label="answer A")
                            gal_a = gr.Gallery(label="images A", format="png", columns=2)
                        with gr.Column():
                            ans_b = gr.Textbox(label="answer B")
                            gal_b = gr.Gallery(label="images B", format="png", columns=2)
                    go.click(
                        _guarded(compare),
                        [task, a, b, img, text, seed],
                        [ans_a, gal_a, ans_b, gal_b],
                        api_name="compare",
                        **queue,
                    )
            with gr.Tab("Info", id="info"):
                ck = pick("checkpoint")
                tree = gr.Markdown(server.info(first), label="model")
                ck.change(_guarded(info), ck, tree, api_name="info")
    return app


def _theme():
    import gradio as gr

    # system fonts: the default theme's web fonts would be fetched from the internet by every page
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def cmd_serve(args) -> int:
    from illume_kit.core.extras import require

    for ckpt in args.checkpoints:
        if not Path(ckpt).is_dir():
            raise FileNotFoundError(
                f"checkpoint {ckpt} is not a folder (give checkpoint folders from `compose -o` or training)"
            )
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    require("gradio", "serve", "illume-kit serve")  # before the models load
    limits = Limits(args.max_pixels, args.max_prompt_chars, args.max_upload_mb, args.max_images)
    server = Server(load_served(args.checkpoints, args.device), limits)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        from illume_kit.cli.output import warn

        warn(
            f"serving on {args.host}: anyone who can reach this machine on port {args.port or 7860} can use the models"
        )
    launch(server, args.host, args.port, args.max_queue)
    return 0


def launch(server: Server, host: str = "127.0.0.1", port: int | None = None, max_queue: int = 64, block: bool = True):
    """Build the page of ``server`` and serve it (``block`` False: in a thread; returns the app, whose
    ``close()`` stops it)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app = build_app(server)
    app.queue(max_size=max_queue, default_concurrency_limit=1)
    app.launch(
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        show_error=True,
        max_file_size=int(server.limits.max_upload_mb * 1024 * 1024),
        run_history=False,
        ssr_mode=False,
        pwa=False,
        theme=_theme(),
        footer_links=["api"],
        prevent_thread_lock=not block,
        quiet=not block,
    )
    return app


def register(sub) -> None:
    p = sub.add_parser("serve", help="a browser demo and HTTP API for checkpoints (extra: illume-kit[serve])")
    p.add_argument(
        "checkpoints", nargs="+", metavar="CHECKPOINT", help="checkpoint folders; two or more: a compare tab"
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0: every interface)",
    )
    p.add_argument("--port", type=positive_int, help="port (default: 7860, or the next free one)")
    p.add_argument("--device", type=device, default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS, help="largest upload, in pixels")
    p.add_argument("--max-upload-mb", type=positive_float, default=DEFAULT_MAX_UPLOAD_MB, help="largest upload file")
    p.add_argument(
        "--max-prompt-chars",
        type=positive_int,
        default=DEFAULT_MAX_PROMPT_CHARS,
        help="longest question, prompt or instruction, in characters",
    )
    p.add_argument("--max-images", type=positive_int, default=DEFAULT_MAX_IMAGES, help="most images one request draws")
    p.add_argument("--max-queue", type=positive_int, default=64, help="requests waiting at most; more are refused")
    p.set_defaults(func=cmd_serve)
