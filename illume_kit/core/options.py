"""Typed options of the training stages and of evaluation (pydantic, torch-free).

A recipe's ``train.stages[i].options`` are validated against the model of the stage's ``target``
(``STAGE_OPTIONS``), ``eval.options`` against ``EvalOptions``, when the recipe is loaded, so
``illume-kit validate`` reports a mistyped or out-of-range option with the rest of the recipe.
The stage runners and evaluation read these models; the defaults live here and nowhere else.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Task = Literal["und", "t2i", "edit"]
EditTarget = Literal["encoded", "copy_unchanged"]
LossAverage = Literal["token", "sample"]
Preprocess = Literal["plain", "official"]
SamplingMode = Literal["structured", "official"]  # eval.options.sampling: illume_kit.model.sampler / official_sampling
DecodeLoop = Literal["dynamic", "static", "compiled"]  # the structured sampler's token loop
PromptStyleName = Literal["plain", "chat_template", "official"]  # model.prompt_style: illume_kit.model.prompts
TASKS: tuple[str, ...] = get_args(Task)
# the largest image side a recipe may ask for; past it a single image is gigabytes of activations
MAX_IMAGE_SIZE = 16384
# sampling settings, each one number for every level or a mapping from level (text, a codebook's name)
Temperature = Annotated[float, Field(ge=0.0)]
TopK = Annotated[int, Field(ge=0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
# ILLUME/app_hf.py's recommended (temperature, top_k, top_p) per task: what sampling official takes for
# the keys a recipe or the command line leaves out
OFFICIAL_SAMPLING_DEFAULTS: dict[str, tuple[float, int, float]] = {
    "generate": (1.0, 2048, 1.0),
    "edit": (0.7, 512, 0.8),
}
# the released generation_config.json (Qwen2.5-Instruct's): generate()'s repetition penalty
OFFICIAL_REPETITION_PENALTY = 1.05


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class StageOptions(_Options):
    """Options every training stage reads: the training data it draws."""

    image_size: int | None = Field(
        None,
        ge=1,
        le=MAX_IMAGE_SIZE,
        description="train at this image size (the dataset's image_size for this stage; "
        f"null: the recipe's data.params.image_size; <= {MAX_IMAGE_SIZE})",
    )
    cache_data: bool = Field(
        True, description="keep each dataset item once built instead of rendering it again every epoch"
    )
    cache_data_mb: float = Field(
        2048,
        ge=0,
        description="memory budget of cache_data in MiB: the items' tensor bytes stay under it, and a training "
        "split whose estimate (its length x the first item's bytes) is over it is not cached at all, with a "
        "notice (the shipped toy recipes need at most 940 MiB)",
    )


class TeacherOptions(StageOptions):
    """Options of a ``teacher`` stage (the semantic teacher on captioned images)."""


class TokenizerOptions(StageOptions):
    """Options of a ``tokenizer`` stage (the visual tokenizer's own loss, and its discriminator if any)."""


class DetokenizerOptions(StageOptions):
    """Options of a ``detokenizer`` stage (the detokenizer on the frozen tokenizer's codes)."""


class MllmOptions(StageOptions):
    """Options of an ``mllm`` stage (the unified model on the understand / generate / edit task mix)."""

    tasks: dict[Task, float] = Field(
        {t: 1.0 for t in TASKS},
        description="task -> sampling weight (und: understanding, t2i: text-to-image, edit: editing); a task "
        "left out is not trained; weights >= 0 with a positive sum",
    )
    cfg_dropout: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="fraction of generation samples whose condition (caption or edit "
        "instruction) is dropped, so classifier-free guidance has an unconditional branch to sample",
    )
    qa_turns: int = Field(
        1,
        ge=1,
        description="question/answer pairs per understanding sample, as one multi-turn conversation about its image",
    )
    loss_average: LossAverage = Field(
        "token",
        description="cross-entropy averaged over every labelled token of the batch (token, as "
        "ILLUME+) or per sample first, then over samples (sample), so a short answer weighs as much as an image",
    )
    edit_target: EditTarget = Field(
        "encoded",
        description="edit targets: the tokenizer's codes of the edited image (encoded, as ILLUME+), "
        "or those codes with the unchanged pixels' codes copied from the source (copy_unchanged)",
    )
    cache_codes: bool = Field(
        True,
        description="keep each image's tokenizer output for the rest of the run (the tokenizer is frozen "
        "in mllm stages)",
    )
    cache_codes_mb: float = Field(
        1024,
        ge=0,
        description="memory budget of cache_codes in MiB: the kept codes and features stay under it, and a "
        "stage whose estimate (the split's images x one image's codes and features) is over it keeps none, "
        "with a notice",
    )
    codes: str | None = Field(
        None,
        description="a folder of pre-computed tokenizer outputs (`illume-kit encode`): each image the store holds "
        "is read from it instead of running the tokenizer, the rest are encoded as usual. The store must come from "
        "this model's tokenizer weights (its manifest's hash is checked when the stage starts); it serves "
        "continuous input only if it keeps features (encode --features)",
    )
    max_seq_len: int | None = Field(
        None,
        ge=2,
        description="cut each training sequence to its first this many tokens, image tokens included, labels "
        "with them, as ILLUME+ cuts at model_max_length (null: no limit). The model is causal, so every kept "
        "token's loss is the one it has in the whole sequence; an image the cut runs through loses its later "
        "rows (input features past the cut are not read, target codes past it not trained). A sample whose "
        "prompt alone fills the limit would train nothing: it is left out of its batch, with a warning counting "
        "them and the share per batch logged as `dropped`; a batch left with no sample is an error. A sequence "
        "within the limit is unchanged",
    )
    retrain_text_tokenizer: bool = Field(
        True,
        description="for a backbone trained from scratch: fit a byte-level BPE on the task texts at the "
        "start of the recipe's first mllm stage",
    )
    text_corpus_items: int = Field(
        400, ge=1, description="dataset items whose task texts the retrained text tokenizer is fitted on"
    )

    @field_validator("tasks")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        if any(w < 0 for w in v.values()) or sum(v.values()) <= 0:
            raise ValueError(f"task weights must be >= 0 with a positive sum, got {v}")
        return v


# a stage's target -> the model of its options
STAGE_OPTIONS: dict[str, type[StageOptions]] = {
    "teacher": TeacherOptions,
    "tokenizer": TokenizerOptions,
    "detokenizer": DetokenizerOptions,
    "mllm": MllmOptions,
}


class EvalOptions(_Options):
    """Options of ``illume-kit eval`` (``eval.options``); ``generate`` and ``edit`` sample with the
    same guidance and sampling keys unless the command line says otherwise."""

    cfg: float = Field(2.0, ge=0.0, description="classifier-free guidance scale of text-to-image generation (1 = off)")
    edit_cfg: float = Field(1.5, ge=0.0, description="classifier-free guidance scale of editing (1 = off)")
    temperature: Temperature | dict[str, Temperature] = Field(
        1.0,
        description="sampling temperature (0 = greedy); one number, or per level: a mapping from `text` "
        "or a codebook's name to its temperature (levels left out: 1)",
    )
    top_k: TopK | None | dict[str, TopK | None] = Field(
        None,
        description="sample among the k most likely tokens (null or 0: off); one number or per level, as temperature",
    )
    top_p: TopP | dict[str, TopP] = Field(
        1.0,
        description="nucleus sampling, the smallest set of tokens with this much probability (1 = off); "
        "one number or per level, as temperature",
    )
    sampling: SamplingMode = Field(
        "structured",
        description="how `generate`, `edit` and eval's gen/edit tasks decode images: structured (illume-kit's "
        "sampler: per-row image templates, guidance batched, settings applied once) or official (the released "
        "ILLUME+'s generate() with its InterleavedLogitsProcessor, token for token: the model starts the image "
        "itself, repetition_penalty, per-level settings then rewarp; one prompt at a time, prompt j seeded "
        "seed + j; temperature, top_k, top_p left out take the official recommendations, generation 1.0 / 2048 "
        "/ 1.0, editing 0.7 / 512 / 0.8, and one number sets the text level, which the levels follow: "
        "illume_kit.model.official_sampling)",
    )
    decode_loop: DecodeLoop = Field(
        "dynamic",
        description="sampling structured: the sampler's token loop. dynamic (a growing KV cache), static (a KV "
        "cache preallocated for the batch, one fixed-shape step per token, no host sync) or compiled (that step "
        "through torch.compile, CUDA graphs on CUDA; compiling takes a while on the first batch). The same tokens "
        "for a fixed seed up to float rounding (illume_kit.model.static_loop)",
    )
    rewarp: bool = Field(
        True,
        description="sampling official: apply generate()'s own temperature / top-k / top-p (the text level's) "
        "again after the official processor's per-level ones, as the official pipeline does (double warping)",
    )
    repetition_penalty: float = Field(
        OFFICIAL_REPETITION_PENALTY,
        gt=0.0,
        description="sampling official: generate()'s repetition penalty over the generated tokens, on the "
        "conditional logits (the released generation_config.json: 1.05; 1 = off)",
    )
    nocfg: bool = Field(True, description="also score generation at cfg 1 (gen/accuracy_nocfg, gen/attributes_nocfg)")
    batch_size: int = Field(
        8, ge=1, description="images generated or edited per batch (understanding uses at least 16)"
    )
    max_answer_tokens: int = Field(8, ge=1, description="longest answer generated per understanding question")
    decode: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword options of the detokenizer's decode, e.g. {steps: 25} for the diffusion detokenizer",
    )
    preprocess: Preprocess = Field(
        "plain",
        description="how `understand`, `generate` and `edit` size images: plain (center-crop and resize to "
        "the one size, default the recipe's image size) or official (the released ILLUME+: understanding keeps "
        "the image's aspect within min_pixels..max_pixels; generation and editing snap to the nearest "
        "aspect-ratio anchor of anchor_base, illume_kit.data.aspect)",
    )
    anchor_base: int | None = Field(
        None,
        ge=8,
        multiple_of=8,
        description="preprocess official: the base side of the anchor table (released: 256, 384, 512, 768 "
        "or 1024; 512 is the released table itself); null: the recipe's image size",
    )
    min_pixels: int = Field(
        32 * 32, ge=1, description="preprocess official: fewest pixels an understanding image is resized to"
    )
    max_pixels: int | None = Field(
        None,
        ge=1,
        description="preprocess official: most pixels an understanding image is resized to (released: "
        "768*768); null: the square of the recipe's image size",
    )

    @model_validator(mode="after")
    def _loop_of_structured(self) -> EvalOptions:
        if self.sampling == "official" and self.decode_loop != "dynamic":
            raise ValueError(
                f"decode_loop: {self.decode_loop} applies to sampling: structured; the official mode decodes "
                "with generate(): leave decode_loop out or set it to dynamic"
            )
        return self


__all__ = [
    "OFFICIAL_REPETITION_PENALTY",
    "OFFICIAL_SAMPLING_DEFAULTS",
    "DetokenizerOptions",
    "EvalOptions",
    "MllmOptions",
    "STAGE_OPTIONS",
    "StageOptions",
    "TeacherOptions",
    "TokenizerOptions",
    "TASKS",
    "Task",
    "EditTarget",
    "LossAverage",
    "Preprocess",
    "SamplingMode",
    "DecodeLoop",
]
