"""The recipe's own structure (pydantic, torch-free). Component params are validated separately.

Validation is two-phase because plugin types are open: this schema fixes the shape of a recipe and
leaves each component's ``params`` as a mapping; ``recipe.validate_components`` then checks each
against the named component's own ``Params`` model.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)

from illume_kit.core.options import (
    DetokenizerOptions,
    EvalOptions,
    MllmOptions,
    PromptStyleName,
    StageOptions,
    TeacherOptions,
    TokenizerOptions,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ComponentChoice(_Strict):
    name: str = Field(description="registry name of the component (see `illume-kit list ROLE`)")
    preset: str | None = Field(None, description="preset of that component (see `illume-kit show ROLE NAME`)")
    params: dict[str, Any] = Field(default_factory=dict, description="params applied on top of the preset")
    weights: str | None = Field(
        None,
        description="local checkpoint folder (or .safetensors file) whose weights "
        "this component loads after it is built, e.g. from `illume-kit convert`",
    )


class ModelOptions(_Strict):
    image_input: Literal["continuous", "discrete"] = Field(
        "continuous", description="LLM input side: projected pre-quantisation features (ILLUME+) or code embeddings"
    )
    projector_hidden: int | None = Field(
        None, description="hidden width of the per-codebook 2-layer MLP projectors (default: LLM width)"
    )
    image_positions: int = Field(
        0,
        ge=0,
        description="learned row + column embeddings on every image token (input and output), for grids "
        "up to this many tokens a side; 0 = off (ILLUME+: 1D positions and end-of-line tokens only)",
    )
    output_positions: Literal["slot", "next"] = Field(
        "slot",
        description="with image_positions, which token of an output image carries a code's row/column "
        "embedding: the code's own (slot) or the token before it, the one that predicts it (next), so the query "
        "drawing a code knows its cell and can find the same cell of an input image (editing)",
    )
    edit_order: Literal["image_first", "instruction_first"] = Field(
        "image_first",
        description="editing prompt: the source image then the instruction (ILLUME+), or the "
        "instruction first, so the source sits a fixed number of tokens before the target and copying its "
        "unchanged cells is a fixed-offset lookup",
    )
    prompt_style: PromptStyleName = Field(
        "plain",
        description="text around every prompt and answer, in training and inference alike: plain "
        "(USER:/ASSISTANT: turns, for backbones trained from scratch), chat_template (the backbone "
        "tokenizer's own chat template) or official (ILLUME+'s Qwen2 chat turns and its generation and "
        "editing prompts)",
    )
    input_encoder: Literal["shared", "separate"] = Field(
        "shared",
        description="where the LLM's continuous image features come from: the tokenizer's own encoders "
        "(shared) or a copy the model holds beside the frozen output tokenizer (separate: ILLUME+'s released "
        "MLLM fine-tunes its own input encoder); the copy starts from the tokenizer's weights and stays frozen "
        "unless an mllm stage trains the input_encoder group",
    )
    level_order: Literal["coarse_first", "fine_first"] = Field(
        "coarse_first",
        description="order of the codebook levels in every image sequence, input and output: "
        "the tokenizer's (coarse_first: tokenizers list their coarse, semantic level first, as ILLUME+ writes "
        "images) or reversed (fine_first: e.g. DualViTok's pixel codes before its semantic codes). Each level's "
        "id range follows the same order; one-codebook tokenizers are unaffected",
    )
    resolution_step: int = Field(64, ge=1, description="step of the <height_H>/<width_W> resolution tags")
    max_resolution: int = Field(1024, ge=1, description="largest resolution tag")


Beta = Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)]
# torch.manual_seed takes 64 bits, numpy's seed 32; the data loaders derive per-epoch seeds from it
MAX_SEED = 2**32 - 1
DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
# a name is one path component: letters, digits, '.', '_', '-', not starting with '.'
NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
NAME_RULE = "letters, digits, '.', '_' and '-', not starting with '.' (it names a folder)"


def check_name(v: str, what: str = "name") -> str:
    if not NAME_RE.fullmatch(v) or len(v) > 128:
        raise ValueError(f"{what} {v!r} is not a safe name: use {NAME_RULE}, at most 128 characters")
    return v


class ParamGroup(_Strict):
    match: str = Field(
        min_length=1,
        description="parameter-name prefix (a dotted path of the model's parameter names) or glob "
        "(with *, ? or [), e.g. backbone.model.model.embed_tokens or input_encoder.*.blocks",
    )
    from_layer: int | None = Field(
        None,
        ge=0,
        description="with a prefix ending at a block list: only blocks with this index or higher (the "
        "number after the prefix)",
    )
    lr: float | None = Field(None, ge=0, allow_inf_nan=False, description="peak lr of the group (default: stage lr)")
    weight_decay: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="decay of the group's >=2-D weights (default: stage weight_decay)"
    )
    freeze: bool = Field(
        False,
        description="keep the group's parameters frozen in this stage (no gradients, no optimizer state), e.g. "
        "a vision tower's blocks below the from_layer of an earlier entry; takes no lr or weight_decay",
    )

    @model_validator(mode="after")
    def _frozen_has_no_rates(self) -> ParamGroup:
        if self.freeze and (self.lr is not None or self.weight_decay is not None):
            raise ValueError("a param group with freeze: true trains nothing: drop its lr and weight_decay")
        return self

    # freeze left out when off: a group that does not use it dumps (and keys a sweep's stage) without it
    @model_serializer(mode="wrap")
    def _drop_unfrozen(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data.get("freeze") is False:
            del data["freeze"]
        return data


class Ema(_Strict):
    """An exponential moving average of a stage's trained weights, which its checkpoints save as the weights."""

    decay: float = Field(
        0.999, gt=0.0, lt=1.0, allow_inf_nan=False, description="each step keeps this share of the average, in (0, 1)"
    )
    start_step: int = Field(
        0,
        ge=0,
        description="the average equals the trained weights up to this optimizer step and averages from the next "
        "one on (0: from the first step, starting at the initial weights)",
    )


_OFF_BY_DEFAULT: dict[str, Any] = {
    "ema": None,
    "grad_accum_steps": 1,
    "param_groups": [],
    "global_batch_size": None,
    "log_every": 10,
    "num_workers": 0,
    "prefetch_factor": None,
}

STRATEGIES = ("ddp", "fsdp")
PRECISIONS = ("auto", "fp32", "bf16-mixed", "fp16-mixed", "bf16-true")
SHARDABLE_PARTS = ("backbone", "tokenizer", "detokenizer", "teacher", "input_encoder")


class Parallelism(_Strict):
    """How a training stage spreads over the processes ``torchrun`` starts (one process: plain training).

    ``ddp`` replicates the model and averages gradients (DistributedDataParallel); ``fsdp`` shards
    parameters, gradients and optimizer states over the ranks (PyTorch FSDP2, ``fully_shard``): each
    block a component lists as unsplittable (a transformer layer, a ResNet block) is one unit, the rest
    of the model one root unit. Checkpoints under ``fsdp`` are sharded ``torch.distributed.checkpoint``
    folders, resumable at another world size.
    """

    strategy: Literal["ddp", "fsdp"] = Field("ddp", description="ddp (replicated) or fsdp (sharded, FSDP2)")
    precision: Literal["auto", "fp32", "bf16-mixed", "fp16-mixed", "bf16-true"] = Field(
        "auto",
        description="auto: bf16-mixed on CUDA, fp32 elsewhere; *-mixed: fp32 master weights and gradient "
        "reductions, bf16/fp16 compute (fp16 with dynamic loss scaling); bf16-true: bf16 weights and AdamW "
        "states (half the memory, small updates round away: a warning says so)",
    )
    cpu_offload: bool = Field(
        False, description="fsdp only: keep sharded parameters and optimizer states in CPU memory"
    )
    shard_frozen: bool = Field(
        False,
        description="fsdp: shard frozen parts too, gathered once per step with the root unit (false: every rank "
        "keeps a full copy of them). A frozen tokenizer runs a data-dependent number of times per step (cached "
        "codes, the tasks drawn), so its blocks are never units of their own",
    )
    reshard_after_forward: bool = Field(
        True,
        description="fsdp: free gathered parameters after each unit's forward (ZeRO-3); false keeps them to "
        "the backward (ZeRO-2 memory, less communication)",
    )
    activation_checkpointing: list[Literal["backbone", "tokenizer", "detokenizer", "teacher", "input_encoder"]] = Field(
        default_factory=list,
        description="parts whose blocks recompute their activations in the backward (less memory, ~1/3 more "
        "compute): backbone, tokenizer, detokenizer, teacher, input_encoder",
    )
    compile: bool = Field(False, description="torch.compile each block (units of fsdp, the same blocks under ddp)")
    meta_init: bool = Field(
        False,
        description="fsdp: ranks other than 0 build the model without memory (meta device) and receive rank 0's "
        "weights, sharded, after sharding",
    )

    @model_validator(mode="after")
    def _fsdp_only(self) -> Parallelism:
        if self.strategy == "fsdp" and self.precision == "bf16-true":
            raise ValueError(
                "parallelism.precision: bf16-true casts the LLM alone to bf16, and FSDP shards a unit of one dtype "
                "only: use bf16-mixed (fp32 master weights, the backbone's blocks gathered in bf16) or strategy ddp"
            )
        if self.strategy != "fsdp":
            for key in ("cpu_offload", "meta_init"):
                if getattr(self, key):
                    raise ValueError(f"parallelism.{key} needs strategy: fsdp (got strategy: {self.strategy})")
        return self


class Stage(_Strict):
    name: str = Field(description="stage name, unique in the recipe")
    target: Literal["teacher", "tokenizer", "detokenizer", "mllm"] = Field(description="what this stage trains")
    steps: int = Field(100, ge=1, description="optimisation steps")
    batch_size: int = Field(16, ge=1, description="samples per micro-batch and process")
    global_batch_size: int | None = Field(
        None,
        ge=1,
        description="samples per optimizer step over all processes; when set, batch_size is derived from it "
        "(global / (world size x grad_accum_steps), which must divide it), so a run keeps its batch at any "
        "world size",
    )
    grad_accum_steps: int = Field(
        1,
        ge=1,
        description="micro-batches per optimizer step: the effective batch is batch_size x grad_accum_steps x "
        "world size; steps, schedule, logging and checkpoints count optimizer steps",
    )
    lr: float = Field(3e-4, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False)
    betas: tuple[Beta, Beta] = Field((0.9, 0.999), description="AdamW betas, each in [0, 1)")
    grad_clip: float | None = Field(1.0, gt=0, allow_inf_nan=False, description="max grad norm, > 0 (null: off)")
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["constant", "cosine"] = "cosine"
    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints (0: only at the end)")
    log_every: int = Field(10, ge=1, description="steps between logged rows (metrics.jsonl, progress)")
    num_workers: int = Field(
        0,
        ge=0,
        description="DataLoader worker processes per rank (0: load in the training process); a streamed dataset "
        "(format: webdataset) resumes only at the num_workers and world size it was checkpointed with",
    )
    prefetch_factor: int | None = Field(
        None, ge=1, description="batches each worker loads ahead (null: torch's default, 2); needs num_workers > 0"
    )
    ema: Ema | None = Field(
        None,
        description="{decay, start_step}: keep an exponential moving average of the trained weights; the stage's "
        "checkpoints, its eval and the stages after it use the average (null: off; not with parallelism.strategy "
        "fsdp)",
    )
    trainable: list[str] = Field(default_factory=list, description="parameter groups trained (mllm stages)")
    param_groups: list[ParamGroup] = Field(
        default_factory=list,
        description="learning rate and weight decay of named parameters, or freeze: true to keep them frozen "
        "(first match wins; the rest use lr and weight_decay); each group's lr follows the stage schedule",
    )
    options: StageOptions = Field(default_factory=StageOptions, description="options of this kind of stage")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "stage name")  # the stage's folder under the run's output_dir

    @model_validator(mode="after")
    def _one_batch(self) -> Stage:
        if self.global_batch_size is not None:
            if "batch_size" in self.model_fields_set:
                raise ValueError("set batch_size (per process) or global_batch_size (over all processes), not both")
            if self.global_batch_size % self.grad_accum_steps:
                raise ValueError(
                    f"global_batch_size {self.global_batch_size} is not a multiple of grad_accum_steps "
                    f"{self.grad_accum_steps}"
                )
        if self.prefetch_factor is not None and self.num_workers == 0:
            raise ValueError(f"prefetch_factor {self.prefetch_factor} needs num_workers > 0 (got num_workers: 0)")
        return self

    def per_rank_batch(self, world: int) -> int:
        """Samples per micro-batch and process at this world size (``batch_size``, or derived from
        ``global_batch_size``; a ``ValueError`` when the world size does not divide it)."""
        if self.global_batch_size is None:
            return self.batch_size
        per = self.global_batch_size // self.grad_accum_steps
        if per % world:
            raise ValueError(
                f"stage {self.name!r}: global_batch_size {self.global_batch_size} / grad_accum_steps "
                f"{self.grad_accum_steps} = {per} samples per micro-step do not split over {world} processes; "
                f"use a world size that divides {per}, or change global_batch_size"
            )
        return per // world

    # A stage dumps its options as the recipe gave them, defaults left out: the dump keys the sweep's
    # content-addressed shared stages and is written back into frozen recipes.
    @field_serializer("options")
    def _given_options(self, options: StageOptions, info: SerializationInfo) -> dict[str, Any]:
        return options.model_dump(mode=info.mode, exclude_unset=True)

    # Optional fields whose default is "off" are left out of the dump when off, so a field of this
    # kind never changes the key of a stage that does not use it.
    @model_serializer(mode="wrap")
    def _drop_off(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        for key, off in _OFF_BY_DEFAULT.items():
            if key in data and data[key] == off:
                del data[key]
        return data


class TeacherStage(Stage):
    target: Literal["teacher"] = Field(description="what this stage trains")
    options: TeacherOptions = Field(default_factory=TeacherOptions, description="teacher stage options")


class TokenizerStage(Stage):
    target: Literal["tokenizer"] = Field(description="what this stage trains")
    options: TokenizerOptions = Field(default_factory=TokenizerOptions, description="tokenizer stage options")


class DetokenizerStage(Stage):
    target: Literal["detokenizer"] = Field(description="what this stage trains")
    options: DetokenizerOptions = Field(default_factory=DetokenizerOptions, description="detokenizer stage options")


class MllmStage(Stage):
    target: Literal["mllm"] = Field(description="what this stage trains")
    options: MllmOptions = Field(default_factory=MllmOptions, description="mllm stage options")


# a recipe's stage is the subclass its target names, so its options are validated by that kind's model
AnyStage = Annotated[TeacherStage | TokenizerStage | DetokenizerStage | MllmStage, Field(discriminator="target")]


class TrainConfig(_Strict):
    stages: list[AnyStage] = Field(default_factory=list)


class EvalConfig(_Strict):
    metrics: list[str] = Field(default_factory=list, description="metric names, e.g. rec/psnr, und/accuracy")
    num_samples: int = Field(64, ge=1, description="held-out samples to evaluate")
    options: EvalOptions = Field(default_factory=EvalOptions, description="sampling and decoding of the evaluation")
    metric_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="metric family -> its params, e.g. {rfid: {inception_weights: PATH}} (illume-kit show metric "
        "NAME lists them; the command line's --metric-param FAMILY.KEY=VALUE overrides)",
    )

    # a recipe without metric params dumps without the key (frozen recipes unchanged)
    @model_serializer(mode="wrap")
    def _drop_empty_metric_params(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if "metric_params" in data and not self.metric_params:
            del data["metric_params"]
        return data


# experiment loggers (illume_kit.train.loggers): metrics.jsonl, TensorBoard event files, Weights & Biases
LOGGERS = ("jsonl", "tensorboard", "wandb")
DEFAULT_LOGGERS = ["jsonl"]


class RunConfig(_Strict):
    seed: int = Field(0, ge=0, le=MAX_SEED, description=f"seed of every random choice, 0..{MAX_SEED}")
    output_dir: str = Field("runs/default", min_length=1, description="where checkpoints and results go")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps")
    loggers: list[str] = Field(
        default_factory=lambda: list(DEFAULT_LOGGERS),
        description="where training scalars (and eval images) go besides the progress display: jsonl (each "
        "stage's metrics.jsonl, always written), tensorboard (event files in each stage's tb/ folder) and wandb "
        "(Weights & Biases, offline unless WANDB_MODE says otherwise, in each stage's wandb/ folder); the last "
        "two need illume-kit[loggers]",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not DEVICE_RE.fullmatch(v):
            raise ValueError(f"unknown device {v!r} (valid: auto, cpu, cuda, cuda:N, mps)")
        return v

    @field_validator("loggers")
    @classmethod
    def _loggers(cls, v: list[str]) -> list[str]:
        return check_loggers(v)

    # left out of the dump at its default: frozen recipes and run snapshots of runs without it stay the same
    @model_serializer(mode="wrap")
    def _drop_default_loggers(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data.get("loggers") == DEFAULT_LOGGERS:
            del data["loggers"]
        return data


def check_loggers(names: list[str]) -> list[str]:
    """Logger names, each once, in the order given; an unknown name is a ``ValueError`` naming the valid ones."""
    bad = [n for n in names if n not in LOGGERS]
    if bad:
        raise ValueError(f"unknown logger {bad[0]!r} (valid: {', '.join(LOGGERS)})")
    return list(dict.fromkeys(names))


class Recipe(_Strict):
    illume_kit: Literal[1] = Field(description="recipe schema version")
    name: str = Field(description=f"recipe name, used in output paths: {NAME_RULE}")
    description: str = ""
    tokenizer: ComponentChoice
    backbone: ComponentChoice
    detokenizer: ComponentChoice | None = None
    teacher: ComponentChoice | None = Field(None, description="semantic teacher trained by a `teacher` stage")
    data: ComponentChoice | None = None
    model: ModelOptions = Field(default_factory=ModelOptions)
    parallelism: Parallelism = Field(
        default_factory=Parallelism, description="how training stages spread over torchrun's processes"
    )
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    sweep: dict[str, Any] | None = Field(None, description="optional sweep block (see `illume-kit sweep`)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "recipe name")

    @model_validator(mode="after")
    def _ema_replicated(self) -> Recipe:
        if self.parallelism.strategy == "fsdp":
            for i, stage in enumerate(self.train.stages):
                if stage.ema is not None:
                    raise ValueError(
                        f"train.stages.{i}.ema: EMA weights need every rank to hold the full weights, and "
                        "parallelism.strategy: fsdp shards them: use strategy ddp, or remove the stage's ema"
                    )
        return self

    # a recipe that leaves parallelism at its defaults dumps without it (frozen recipes and stage keys unchanged)
    @model_serializer(mode="wrap")
    def _drop_default_parallelism(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if "parallelism" in data and not self.parallelism.model_fields_set:
            del data["parallelism"]
        return data


# component sections of a recipe and the registry role each names
COMPONENT_ROLES = {
    "tokenizer": "tokenizer",
    "backbone": "backbone",
    "detokenizer": "detokenizer",
    "teacher": "teacher",
    "data": "dataset",
}
