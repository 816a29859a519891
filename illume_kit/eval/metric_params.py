"""Params of the image-distribution metric families ``rfid``, ``fid``, ``lpips``, ``clip-score`` (torch-free).

Each pretrained network these metrics run comes from a local file named here; nothing is downloaded.
A recipe sets them under ``eval.metric_params.<family>`` and the command line with
``illume-kit eval --metric-param <family>.<key>=VALUE`` (``docs/evaluation.md``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from illume_kit.core.params import ComponentParams

InceptionFeature = Literal[64, 192, 768, 2048]


class InceptionParams(ComponentParams):
    """The Inception-v3 network of FID (torch-fidelity's ``pt_inception-2015-12-05``)."""

    inception_weights: str | None = Field(
        None,
        description="local file of the FID Inception-v3 weights: torch-fidelity's weights-inception-2015-12-05-6726825d.pth "
        "(its v0.2.0 release; pytorch-fid publishes the network as pt_inception-2015-12-05-6726825d.pth), or the "
        "same state dict as .safetensors; required",
    )
    feature: InceptionFeature = Field(
        2048,
        description="Inception feature the distance is measured on: 2048 (pool3, the standard FID), or the "
        "earlier 64, 192, 768 (cheaper, not comparable with published numbers)",
    )
    batch_size: int = Field(32, ge=1, description="images per Inception forward pass")


class RFIDParams(InceptionParams):
    """``rfid``: FID between the eval images and their reconstructions."""


class FIDParams(InceptionParams):
    """``fid``: FID between the eval images and images generated from their captions."""


class LPIPSParams(ComponentParams):
    """``lpips``: mean LPIPS distance between the eval images and their reconstructions."""

    weights: str | None = Field(
        None,
        description="local file of a whole lpips.LPIPS state dict (backbone `net.*` and linear `lin<k>.*` "
        "keys; .safetensors or a torch state dict); required unless random_backbone",
    )
    net: Literal["vgg", "alex", "squeeze"] = Field("vgg", description="LPIPS backbone the weights file is for")
    random_backbone: bool = Field(
        False,
        description="without weights: a randomly initialised backbone with the package's linear layers (an "
        "uncalibrated number that only exercises the code path; warns)",
    )


class CLIPScoreParams(ComponentParams):
    """``clip-score``: CLIP score of images generated from the eval captions against those captions."""

    model: str = Field(
        "ViT-L-14",
        description="open_clip architecture name (ViT-L-14: OpenAI CLIP ViT-L/14, the usual CLIP-score model); "
        "ignored when model_config_file is set",
    )
    model_config_file: str | None = Field(
        None,
        description="a JSON file of an open_clip model config (embed_dim, vision_cfg, text_cfg) instead of a "
        "shipped architecture name",
    )
    weights: str | None = Field(
        None,
        description="local file of the open_clip model's weights (open_clip_pytorch_model.bin or .safetensors of "
        "the same architecture); required",
    )
    batch_size: int = Field(32, ge=1, description="images per CLIP forward pass")
