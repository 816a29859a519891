"""Dataset ``Params`` (torch-free, so recipe validation never imports torch).

Every dataset shares four knobs: the square ``image_size`` it serves, the ``split``, how many
samples to expose and the ``seed`` behind every random choice. Splits are disjoint by construction
in each dataset (shapes: by caption hash; image-folder: by file-name hash; Fashion-MNIST: fixed
ranges of the official files), so an evaluation never sees a training item.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from illume_kit.core.options import MAX_IMAGE_SIZE
from illume_kit.core.params import ComponentParams, ComponentRef
from illume_kit.data.shapes_vocab import vocabulary

Split = Literal["train", "val", "test"]


class DatasetParams(ComponentParams):
    image_size: int = Field(
        64, ge=8, le=MAX_IMAGE_SIZE, description=f"side of the (square) images served, in pixels (<= {MAX_IMAGE_SIZE})"
    )
    split: Split = Field("train", description="which disjoint split to serve: train, val or test")
    num_samples: int | None = Field(None, ge=1, description="number of items to expose; None = the whole split")
    seed: int = Field(0, description="seed for every random choice (scene sampling, subset selection)")


class ShapesParams(DatasetParams):
    # the world's words in the schema, so `illume-kit show dataset shapes` lists them without torch
    # ([kind, words] pairs: JSON-schema generation sorts mapping keys, and the order reads better)
    model_config = ConfigDict(json_schema_extra={"x-vocabulary": [[k, v] for k, v in vocabulary().items()]})

    num_samples: int = Field(10_000, ge=1, description="items per split (procedural: any number works)")
    grid: Literal[2, 3] = Field(3, description="named position grid: 2 (2x2) or 3 (3x3 cells)")
    min_objects: int = Field(1, ge=1, description="fewest shapes in a scene")
    max_objects: int = Field(
        3, ge=1, le=4, description="most shapes in a scene (one per grid cell, so at most 4 fits both grids)"
    )
    supersample: int = Field(
        4, ge=1, le=8, description="render at this multiple of image_size, then downsample (antialiasing)"
    )
    edits: bool = Field(
        True, description="render an edit pair (instruction + target image) per item; doubles render cost"
    )
    varied_background: bool = Field(
        True, description="pick a background tone and gradient per scene (else always black)"
    )
    jitter: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="how far a shape may stray from its cell centre, as a fraction of the free room "
        "(0 = always centred, so a shape's pixels depend only on its attributes)",
    )

    @model_validator(mode="after")
    def _check_counts(self) -> ShapesParams:
        if self.min_objects > self.max_objects:
            raise ValueError(f"min_objects ({self.min_objects}) > max_objects ({self.max_objects})")
        return self


class ImageFolderParams(DatasetParams):
    root: str = Field(description="folder searched recursively for png/jpg/jpeg/webp/bmp images")
    captions: str | None = Field(
        None,
        description='captions file of {"file": relative path, "caption": str} lines; '
        "None = <root>/captions.jsonl if present, else empty captions",
    )
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of files (by name hash) in the val split")
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of files (by name hash) in the test split")
    keep_aspect: bool = Field(
        False,
        description="keep aspect ratio: short side = image_size, long side cropped to a multiple of "
        "multiple_of (any-size batching); else resize + center-crop to image_size squared",
    )
    multiple_of: int = Field(16, ge=1, description="with keep_aspect, both sides are multiples of this")
    max_aspect: float = Field(
        2.0, ge=1.0, description="with keep_aspect, the long side is at most this x the short side"
    )

    @model_validator(mode="after")
    def _check_fractions(self) -> ImageFolderParams:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must leave something for train")
        return self


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


class FashionMNISTParams(DatasetParams):
    root: str = Field(
        FASHION_MNIST_DIR, description="folder with the gzipped idx files (Debian: dataset-fashion-mnist)"
    )
    val_size: int = Field(5_000, ge=0, le=30_000, description="last N official training images form the val split")


class _Fields(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConversationFields(_Fields):
    image: str = Field("image", description="record key of the image path (relative to image_root)")
    conversations: str = Field("conversations", description='record key of the [{"from", "value"}, ...] turns')


class CaptionFields(_Fields):
    image: str = Field("image", description="record key of the image path (relative to image_root)")
    caption: str = Field("caption", description="record key of the caption")


class EditFields(_Fields):
    source: str = Field("source", description="record key of the source image path (relative to image_root)")
    target: str = Field("target", description="record key of the edited image path (relative to image_root)")
    instruction: str = Field("instruction", description="record key of the edit instruction")


DataFormat = Literal["jsonl", "webdataset", "hf"]


Sizing = Literal["square", "official"]


class JsonlParams(DatasetParams):
    format: DataFormat = Field(
        "jsonl",
        description="how the records are stored: jsonl (a JSON-lines file + image_root), webdataset (tar "
        "shards, streamed), hf (a Hugging Face datasets folder or parquet files on disk)",
    )
    path: str = Field(
        description="jsonl: the JSON-lines file; webdataset: a .tar shard, a folder of them, a glob or a "
        "brace pattern (shard-{000..009}.tar); hf: a datasets folder (save_to_disk) or parquet file(s)"
    )
    image_root: str | None = Field(
        None, description="folder the records' image paths are relative to; None = the path's folder"
    )
    skip_bad: int = Field(
        0,
        ge=0,
        description="go past at most this many bad records (missing or corrupt image, missing field), "
        "counted in one warning; 0 = the first bad record is an error",
    )
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of records (by hash) in the val split")
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of records (by hash) in the test split")
    shuffle_buffer: int = Field(
        1000,
        ge=0,
        description="webdataset only: records each reader (rank x worker) shuffles in a seeded buffer, a function "
        "of (seed, epoch, reader); 0 = shard order; memory grows with it",
    )
    sizing: Sizing = Field(
        "square",
        description="square: every image resized to cover image_size squared and center-cropped; official "
        "(ILLUME+): conversations keep their own aspect within min_pixels..max_pixels, captions and edits "
        "snap to the nearest anchor of the table at base image_size (cover + center-crop; an edit's "
        "target takes its source's anchor)",
    )
    min_pixels: int | None = Field(
        None,
        ge=1,
        description="official sizing, conversations: the least image area; None = (image_size/16)^2, "
        "the released 32x32 at base 512",
    )
    max_pixels: int | None = Field(
        None,
        ge=1,
        description="official sizing, conversations: the largest image area; None = (1.5*image_size)^2, "
        "the released 768x768 at base 512",
    )
    multiple_of: int = Field(
        16,
        ge=1,
        description="official sizing: every side served is a multiple of this (the tokenizer's stride; "
        "an anchor scaled to a small base is rounded to it)",
    )

    @model_validator(mode="after")
    def _check_fractions(self) -> JsonlParams:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must leave something for train")
        if self.sizing == "official":
            if self.image_size % 8:
                raise ValueError(
                    f"sizing official: image_size {self.image_size} is the anchors' base and must be a multiple of 8"
                )
            lo, hi = self.pixel_bounds()
            if lo > hi:
                raise ValueError(f"min_pixels ({lo}) > max_pixels ({hi})")
        return self

    def pixel_bounds(self) -> tuple[int, int]:
        """(min_pixels, max_pixels) of official sizing, the defaults scaled from the released ones at base 512."""
        lo = self.min_pixels if self.min_pixels is not None else (self.image_size * 32 // 512) ** 2
        hi = self.max_pixels if self.max_pixels is not None else (self.image_size * 768 // 512) ** 2
        return max(lo, 1), hi


class ConversationsParams(JsonlParams):
    fields: ConversationFields = Field(default_factory=ConversationFields, description="record keys, by role")


class CaptionsParams(JsonlParams):
    fields: CaptionFields = Field(default_factory=CaptionFields, description="record keys, by role")


class EditsParams(JsonlParams):
    fields: EditFields = Field(default_factory=EditFields, description="record keys, by role")


class MixturePart(ComponentRef):
    """One dataset of a mixture: a registered dataset, its params, and how much of the mixture it makes."""

    role: Any = Field(default="dataset", exclude=True)
    samples: int | None = Field(
        None,
        ge=1,
        description="items this part contributes (ILLUME+'s meta-config): fewer than the dataset holds "
        "subsamples it, more repeats it, both seeded; unset with no weight = the dataset once",
    )
    weight: float | None = Field(
        None, gt=0.0, description="this part's share of the mixture (relative to the other weighted parts)"
    )

    @model_validator(mode="after")
    def _one_amount(self) -> MixturePart:
        if self.samples is not None and self.weight is not None:
            raise ValueError(f"part {self.name!r} sets both samples and weight; set one")
        return self


class MixtureParams(DatasetParams):
    image_size: int = Field(
        64, ge=8, le=MAX_IMAGE_SIZE, description="image_size of every part whose params do not set their own"
    )
    seed: int = Field(0, description="seed of each part's subset and repeats (and of the interleave when parts stream)")
    parts: list[MixturePart] = Field(
        min_length=1,
        description="the datasets mixed: [{name, params, samples | weight}, ...]; split and image_size "
        "apply to every part whose params do not set their own",
    )
    num_samples: int | None = Field(
        None,
        ge=1,
        description="items in the mixture; None = the parts' samples plus the weighted parts' own lengths. "
        "Weighted parts share what the parts with samples leave",
    )
