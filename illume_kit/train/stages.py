"""Run a recipe's training stages, each through the one ``Trainer``.

A recipe lists stages in order; each names what it trains:

- ``teacher``: the semantic teacher (SigLIP-style image-text model) on captioned data; saved to
  ``<output_dir>/teacher`` where tokenizers reference it as their frozen semantic encoder;
- ``tokenizer``: the visual tokenizer's own loss, with its PatchGAN (if any) as a second group;
- ``detokenizer``: the detokenizer on codes of the frozen tokenizer, targets at ``output_scale`` x
  the token resolution (the dataset serves the high resolution, tokens see it downsampled);
- ``mllm``: the unified model on the task mix, training the groups the stage names.

The unified model is composed after the teacher stage (tokenizers load the teacher when built).
After every stage the whole model is written to ``<output_dir>/checkpoint``; with ``resume`` a stage
that finished is skipped, and an interrupted one resumes from its trainer checkpoint.

A stage is finished when ``stages/<name>/done.json`` holds its final metrics. Its trainer's final
checkpoint holds them too (the last logged row), so a run killed after that checkpoint and before
the marker, resumed, trains no further step and writes the marker with the same metrics. Every start
removes the temporary folders writers killed mid-checkpoint left in the output folder.

An output folder belongs to one recipe: ``<output_dir>/run_recipe.yaml`` keeps the resolved recipe it
was started with. Resuming (or rerunning single stages) under a recipe that differs in anything but
``eval``/``description`` is refused, naming the keys, because the stored weights and done-markers
belong to the other recipe. A plain (non-resume) run of every stage starts over and first moves an
earlier run aside to ``<output_dir>.replaced-<time>``: nothing is deleted, nothing stale is reused.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from illume_kit.core import yamlio
from illume_kit.core.atomic import atomic_write_text, remove_stale_temps
from illume_kit.core.build import build_component
from illume_kit.core.coverage import (
    TRAINED_SIZES,
    VOCABULARY,
    read_trained_sizes,
    read_vocabulary,
    vocabulary_json,
    vocabulary_of,
)
from illume_kit.core.manifest import MANIFEST, read_manifest
from illume_kit.core.protocols import Adversarial
from illume_kit.core.recipe import ResolvedRecipe
from illume_kit.core.schema import Stage
from illume_kit.data.batching import collate
from illume_kit.data.build import build_dataset
from illume_kit.model.checkpoint import load_checkpoint, save_checkpoint
from illume_kit.model.compose import compose
from illume_kit.train import distributed as D
from illume_kit.train import mllm_stage
from illume_kit.train.caches import cached_split
from illume_kit.train.config import TrainerConfig
from illume_kit.train.loggers import ensure_available
from illume_kit.train.progress import PlainReporter, StageHeader, TrainCallback
from illume_kit.train.state import latest_checkpoint
from illume_kit.train.trainer import NonFiniteLoss, Trainer

CHECKPOINT = "checkpoint"
SNAPSHOT = "run_recipe.yaml"  # not recipe.yaml: a sweep keeps its frozen (input) recipe there
UNCHECKED = ("eval", "description")  # may change between attempts without touching what was trained


class OutputDirError(ValueError):
    """The output folder holds a run of another recipe, or cannot be a folder."""


def check_output_dir(out: Path) -> None:
    """``run.output_dir`` must be a folder or creatable as one: not a file, nor under a file."""
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == out else f"is under {p}, which is a file"
                raise OutputDirError(
                    f"run.output_dir: {out} {what}; a run writes a folder there. "
                    "Pick another folder with run.output_dir=..."
                )
            return


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in list(a) + [k for k in b if k not in a]:
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.") if k in a and k in b else [f"{prefix}{k}"]
        return out
    return [] if a == b else [prefix.rstrip(".")]


def recipe_differences(stored_yaml: str, resolved: ResolvedRecipe) -> list[str]:
    """Dotted keys where a stored resolved recipe differs from ``resolved`` (``eval``/``description`` aside)."""
    old = yamlio.safe_load(stored_yaml) or {}
    new = yamlio.safe_load(resolved.to_yaml()) or {}
    for k in UNCHECKED:
        old.pop(k, None)
        new.pop(k, None)
    for run in (old.get("run"), new.get("run")):
        if isinstance(run, dict):  # where the logged rows go changes nothing trained
            run.pop("loggers", None)
    return _diff(old, new)


def _has_run(out: Path) -> bool:
    return any((out / p).exists() for p in (SNAPSHOT, CHECKPOINT, "stages", "teacher"))


def _done_marker(out: Path, stage: Stage) -> Path:
    return out / "stages" / stage.name / "done.json"


class StageRunner:
    """Runs a recipe's stages. ``callback`` receives a header per stage and the trainer's progress
    (``illume_kit.train.progress``); by default plain lines on stderr, none when ``quiet``."""

    def __init__(
        self,
        resolved: ResolvedRecipe,
        quiet: bool = False,
        device: str | None = None,
        callback: TrainCallback | None = None,
    ) -> None:
        self.resolved = resolved
        self.recipe = resolved.recipe
        self.out = Path(self.recipe.run.output_dir)
        self.quiet = quiet
        self.callback: TrainCallback = PlainReporter(quiet=True) if quiet else (callback or PlainReporter())
        self.device = (
            device if device is not None else (None if self.recipe.run.device == "auto" else self.recipe.run.device)
        )
        self._model = None
        self._reuse_checkpoint = True
        self.dist = D.DistInfo()
        # what the mllm stages of this process trained on (words of the task texts, image sizes)
        self.trained_words: set[str] = set()
        self.trained_sizes: set[tuple[int, int]] = set()

    # -- the output folder ------------------------------------------------------------------
    def claim_output(self, continuing: bool) -> Path | None:
        """Tie ``output_dir`` to this recipe. ``continuing`` (resume, or single stages that build on
        the earlier ones): the folder must hold this recipe's run, or none. Otherwise an earlier run
        is moved aside (returned) and the run starts clean."""
        out, moved = self.out, None
        check_output_dir(out)
        if out.exists() and _has_run(out):
            stored = out / SNAPSHOT
            if not stored.is_file():  # runs written before the snapshot existed
                stored = out / CHECKPOINT / "recipe.yaml"
            if continuing:
                diff = (
                    recipe_differences(stored.read_text(), self.resolved)
                    if stored.is_file()
                    else ["(no recorded recipe)"]
                )
                if diff:
                    shown = ", ".join(diff[:8]) + (f" and {len(diff) - 8} more" if len(diff) > 8 else "")
                    raise OutputDirError(
                        f"{out} holds a run of a different recipe (differs at: {shown}); its weights and finished "
                        f"stages do not belong to this one. Train without --resume/--stage to start over (the old run "
                        f"is moved to {out.name}.replaced-<time>), or pick another folder with run.output_dir=..."
                    )
            else:
                moved = out.with_name(f"{out.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
                out.rename(moved)
                self._reuse_checkpoint = False
        out.mkdir(parents=True, exist_ok=True)
        if not (out / SNAPSHOT).is_file():
            atomic_write_text(out / SNAPSHOT, self.resolved.to_yaml())
        return moved

    # -- model ------------------------------------------------------------------------------
    @property
    def model(self):
        """The unified model: reloaded from the last stage's checkpoint, else freshly composed."""
        if self._model is None:
            ck = self.out / CHECKPOINT
            if self._reuse_checkpoint and (ck / MANIFEST).is_file():
                self._model, _ = load_checkpoint(ck)
            else:
                # parallelism.meta_init: rank 0 builds (and reads) the model, the others receive it once sharded
                par = self.recipe.parallelism
                meta = par.meta_init and par.strategy == "fsdp" and D.world_size() > 1 and not self.dist.is_main
                self._model = compose(self.resolved, meta=meta)
            self._model.train()
        return self._model

    def note_trained(self, texts, sizes) -> None:
        """Record what an mllm stage trains on: saved with the checkpoint (``illume_kit.core.coverage``)."""
        self.trained_words.update(vocabulary_of(texts))
        self.trained_sizes.update((int(h), int(w)) for h, w in sizes)

    def save_model(self) -> Path:
        # the thread count changes float sums, so it is part of what reproduces a run
        extra: dict[str, Any] = {"torch_threads": torch.get_num_threads()}
        files = {}
        words, sizes = set(self.trained_words), set(self.trained_sizes)
        ck = self.out / CHECKPOINT
        if self._reuse_checkpoint and (ck / MANIFEST).is_file():  # stages of earlier attempts count too
            words |= read_vocabulary(ck) or set()
            sizes |= set(read_trained_sizes(read_manifest(ck)) or [])
        if words:
            files[VOCABULARY] = vocabulary_json(words)
        if sizes:
            extra[TRAINED_SIZES] = [list(s) for s in sorted(sizes)]
        return save_checkpoint(self.model, self.resolved, ck, extra=extra, files=files)

    # -- stages -----------------------------------------------------------------------------
    def run(self, only: list[str] | None = None, resume: bool = True, until: int | None = None) -> dict[str, dict]:
        """Run the stages in order. ``resume``: skip finished stages and continue an interrupted one."""
        stages = self.recipe.train.stages
        names = [s.name for s in stages]
        for n in only or []:
            if n not in names:
                raise ValueError(f"no stage {n!r} in {self.resolved.origin} (stages: {', '.join(names) or 'none'})")
        # under torchrun every rank runs the stages; rank 0 alone touches the output folder and reports
        self.dist = D.setup(self.device)
        try:
            return self._run(stages, only, resume, until)
        finally:
            D.teardown(self.dist)

    def _run(self, stages: list[Stage], only: list[str] | None, resume: bool, until: int | None) -> dict[str, dict]:
        main = self.dist.is_main
        if not main:
            self.callback = PlainReporter(quiet=True)
        if main:
            moved = self.claim_output(continuing=resume or bool(only))
            if moved is not None:
                self.callback.message(f"{self.out}: an earlier run was moved to {moved}")
            stale = remove_stale_temps(self.out, depth=4)  # out/stages/<stage>/checkpoints/.step_*.tmp-*
            if stale:
                self.callback.message(
                    f"{self.out}: removed {len(stale)} temporary folder(s) left by a writer that was killed"
                )
        else:
            self._reuse_checkpoint = D.broadcast_object(None, self.dist)
        if main:
            D.broadcast_object(self._reuse_checkpoint, self.dist)
        results = {}
        todo = []
        for stage in stages:
            if only and stage.name not in only:
                continue
            marker = _done_marker(self.out, stage)
            if resume and marker.is_file() and until is None:
                results[stage.name] = json.loads(marker.read_text())
                continue
            todo.append(stage)
        for i, stage in enumerate(todo, 1):
            if main and not resume and self.stage_dir(stage).exists():  # rerun this stage from step 0
                shutil.rmtree(self.stage_dir(stage))
            D.barrier(self.dist)
            results[stage.name] = self.run_stage(stage, resume=resume, until=until, position=(i, len(todo)))
            if until is not None:
                break
        return {s.name: results[s.name] for s in stages if s.name in results}

    def stage_dir(self, stage: Stage) -> Path:
        """Where a stage's trainer writes its metrics and checkpoints."""
        return self.out / "stages" / stage.name

    def stage_started(self, stage: Stage) -> bool:
        """Whether the stage's trainer has written a checkpoint (a resumed stage continues from it)."""
        return latest_checkpoint(Trainer.checkpoint_root(self.stage_dir(stage))) is not None

    def trains(self, stage: Stage) -> str:
        """What a stage trains, in words, from the recipe alone (nothing is built)."""
        comps = self.resolved.components

        def named(sec: str) -> str:
            return f"{sec} {comps[sec].spec.name!r}" if sec in comps else sec

        if stage.target == "mllm":
            return (
                f"the unified model ({', '.join(stage.trainable or ['all'])}; {named('backbone')}), "
                "tokenizer and detokenizer frozen"
            )
        if stage.target == "detokenizer":
            return f"{named('detokenizer')} on codes of the frozen {named('tokenizer')}"
        return named(stage.target)

    def run_stage(
        self, stage: Stage, resume: bool = True, until: int | None = None, position: tuple[int, int] = (1, 1)
    ) -> dict:
        fn = {
            "teacher": self._teacher,
            "tokenizer": self._tokenizer,
            "detokenizer": self._detokenizer,
            "mllm": self._mllm,
        }[stage.target]
        self.callback.stage_start(
            StageHeader(
                stage.name,
                stage.target,
                self.trains(stage),
                stage.steps,
                self.stage_dir(stage),
                *position,
                batch=(stage.per_rank_batch(D.world_size()), stage.grad_accum_steps, D.world_size()),
                parallelism=self.parallelism_line(),
            )
        )
        module, step_fn, data, extra = fn(stage)
        cfg = TrainerConfig.from_stage(
            stage,
            seed=self.recipe.run.seed,
            batch_size=stage.per_rank_batch(D.world_size()),
            parallelism=self.recipe.parallelism,
            loggers=self.recipe.run.loggers,
            **extra.pop("config", {}),
        )
        trainer = Trainer(
            module,
            step_fn,
            data,
            cfg,
            output_dir=self.stage_dir(stage),
            quiet=self.quiet,
            device=self.device,
            description=stage.name,
            callback=self.callback,
            root_part=None if stage.target == "mllm" else stage.target,
            **extra,
        )
        try:
            last = trainer.fit(resume=resume, until=until)
        except NonFiniteLoss as exc:
            i = self.recipe.train.stages.index(stage)
            exc.where = (
                f"{self.resolved.origin}: stage {stage.name!r} (train.stages.{i}: lr={stage.lr:g}, "
                f"weight_decay={stage.weight_decay:g}, grad_clip={stage.grad_clip}, warmup_steps={stage.warmup_steps})"
            )
            raise
        if until is not None and trainer.step < cfg.steps:
            return {"status": "interrupted", "step": trainer.step}
        self._put_back(module, trainer.model)
        logged = {k: float(v) for k, v in (last or {}).items() if isinstance(v, (int, float)) and k != "step"}
        result = {"status": "done", "step": int(trainer.step), **logged}
        if self.dist.is_main:
            if stage.target == "teacher":
                self._teacher_obj.save(self.out / "teacher")
            else:
                self.save_model()
            marker = _done_marker(self.out, stage)
            marker.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(marker, json.dumps(result, indent=2))  # a torn marker would skip an unfinished stage
        D.barrier(self.dist)
        return result

    def parallelism_line(self) -> str:
        """The strategy and precision of this launch, in words, for the stage header."""
        par = self.recipe.parallelism
        world = D.world_size()
        how = par.strategy if world > 1 else "one process"
        extras = [k for k in ("cpu_offload", "compile") if getattr(par, k)]
        if par.activation_checkpointing:
            extras.append("activation checkpointing: " + ", ".join(par.activation_checkpointing))
        return f"{how}, precision {par.precision}" + (f" ({'; '.join(extras)})" if extras else "")

    def _put_back(self, old: torch.nn.Module, new: torch.nn.Module) -> None:
        """A sharded stage trains its module in place and gives back a plain copy: put it where the old was."""
        if new is old:
            return
        if old is self._model:
            self._model = new
        elif old is getattr(self, "_teacher_obj", None):
            self._teacher_obj = new
        else:
            for name, child in self.model.named_children():
                if child is old:
                    setattr(self.model, name, new)
                    return
            raise RuntimeError(f"trained module {type(old).__name__} is not a part of the unified model")

    def images(self, stage: Stage, **over):
        """The recipe's training split; ``options.image_size`` trains at another size. ``options.cache_data``
        keeps its items within ``options.cache_data_mb`` (``cached_split``)."""
        size = stage.options.image_size
        data = build_dataset(self.resolved, "train", **({"image_size": size} if size else {}), **over)
        if not stage.options.cache_data:
            return data
        data, notice = cached_split(data, stage.options.cache_data_mb, f"stage {stage.name!r}")
        if notice:
            self.callback.message(notice)
        return data

    def _teacher(self, stage: Stage):
        rc = self.resolved.components.get("teacher")
        if rc is None:
            raise ValueError(f"stage {stage.name!r} trains the teacher but the recipe has no `teacher:` section")
        torch.manual_seed(self.recipe.run.seed)  # as compose() does: the init must not depend on the process
        teacher = build_component(rc.spec, rc.params)
        self._teacher_obj = teacher

        def step(m, batch, s):
            return m.loss(batch["image"], batch["caption"], batch.get("regions"))

        return teacher, step, self.images(stage), {"collate_fn": collate}

    def _tokenizer(self, stage: Stage):
        tok = self.model.tokenizer
        disc = tok.discriminator if isinstance(tok, Adversarial) else None

        def step(m, batch, s):
            return m.loss(batch["image"], s)

        extra: dict[str, Any] = {"collate_fn": collate}
        if disc is not None:

            def disc_step(d, batch, s, out):
                return tok.discriminator_loss(batch["image"], s)

            extra.update(disc=disc, disc_step_fn=disc_step)
            start = getattr(getattr(tok, "params", None), "disc_start", None)
            if start is not None:
                extra["config"] = {"disc_start": int(start)}
        return tok, step, self.images(stage), extra

    def _detokenizer(self, stage: Stage):
        model = self.model
        tok, det = model.tokenizer, model.detokenizer
        if det is None:
            raise ValueError(f"stage {stage.name!r} trains the detokenizer but the recipe has none")
        tok.eval().requires_grad_(False)
        scale = int(det.output_scale)

        def step(m, batch, s):
            hi = batch["image"]
            lo = F.interpolate(hi, scale_factor=1 / scale, mode="area") if scale != 1 else hi
            with torch.no_grad():
                codes = tok.encode(lo).codes
            return m.loss(hi, codes)

        return det, step, self.images(stage), {"collate_fn": collate}

    def _mllm(self, stage: Stage):
        out = mllm_stage.stage_setup(self, stage)
        mllm_stage.report_tasks(self, stage, out[2])
        return out


def check_launch(resolved: ResolvedRecipe, resume: bool = True, only: list[str] | None = None) -> None:
    """Refuse a launch that cannot work, before any weights load (a ``ValueError`` naming the key, a
    ``MissingExtra`` for a logger whose package is not installed):
    a world size that does not divide a stage's ``global_batch_size``, or a resume of a checkpoint the
    recipe's parallelism cannot read (an unsharded one into a sharded run, bf16 weights into fp32 master
    weights or back)."""
    from illume_kit.train.state import STATE_FILE, is_sharded

    recipe, world = resolved.recipe, D.world_size()
    ensure_available(recipe.run.loggers)
    par = recipe.parallelism
    if par.cpu_offload and (recipe.run.device == "cpu" or not torch.cuda.is_available()):
        raise ValueError(
            f"{resolved.origin}: parallelism.cpu_offload moves sharded weights and AdamW states out of GPU memory: "
            "it needs CUDA devices (this run trains on the CPU already). Remove it, or train on GPUs"
        )
    out = Path(recipe.run.output_dir)
    for i, stage in enumerate(recipe.train.stages):
        if only and stage.name not in only:
            continue
        try:
            stage.per_rank_batch(world)
        except ValueError as exc:
            raise ValueError(f"{resolved.origin}: train.stages.{i}.global_batch_size: {exc}") from None
        folder = latest_checkpoint(Trainer.checkpoint_root(out / "stages" / stage.name)) if resume else None
        if folder is None:
            continue
        state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
        if par.strategy == "fsdp" and world > 1 and not is_sharded(folder):
            raise ValueError(
                f"{resolved.origin}: parallelism.strategy: fsdp cannot resume {folder}, written unsharded "
                f"(strategy {state.get('strategy', 'ddp')}): its optimizer states cannot be resharded. Resume with "
                "that strategy, or start the stage over (train without --resume)"
            )
        written = state.get("precision")
        if written is not None and par.precision != "auto" and ("true" in written) != ("true" in par.precision):
            raise ValueError(
                f"{resolved.origin}: parallelism.precision: {par.precision} cannot resume {folder}, trained with "
                f"{written} (bf16 weights and fp32 master weights are different training states). Resume with "
                f"precision {written}, or start the stage over (train without --resume)"
            )


def train(
    resolved: ResolvedRecipe,
    only: list[str] | None = None,
    resume: bool = True,
    quiet: bool = False,
    until: int | None = None,
    device: str | None = None,
    callback: TrainCallback | None = None,
) -> dict[str, dict]:
    return StageRunner(resolved, quiet=quiet, device=device, callback=callback).run(only, resume=resume, until=until)
