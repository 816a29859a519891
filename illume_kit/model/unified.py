"""The unified model: one visual tokenizer, one language backbone, one detokenizer, composed.

Holds the parts, the per-codebook input projectors and the ``VocabLayout`` computed at compose
time. Sequence assembly, training objectives and the structured sampler build on this object.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from illume_kit.core.layout import VocabLayout
from illume_kit.model import prompts
from illume_kit.model.projector import MLPProjector
from illume_kit.model.tasks import check_edit_order


def tensor_memory(module: nn.Module | None) -> tuple[int, dict[str, int]]:
    """(bytes, {dtype: parameters}) of a module's parameters and buffers, each tensor once:
    numel x element size, so a model on the meta device is sized without allocating it."""
    if module is None:
        return 0, {}
    seen: set[int] = set()
    total = 0
    dtypes: dict[str, int] = {}
    for t in (*module.parameters(), *module.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
        if isinstance(t, nn.Parameter):
            name = str(t.dtype).removeprefix("torch.")
            dtypes[name] = dtypes.get(name, 0) + t.numel()
    return total, dtypes


def count_params(module: nn.Module | None) -> tuple[int, int]:
    """(total, trainable) parameters, counting tied tensors once."""
    if module is None:
        return 0, 0
    seen: set[int] = set()
    total = trainable = 0
    for p in module.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return total, trainable


class UnifiedModel(nn.Module):
    def __init__(
        self,
        tokenizer: nn.Module,
        backbone: nn.Module,
        detokenizer: nn.Module | None,
        layout: VocabLayout,
        image_input: str = "continuous",
        projector_hidden: int | None = None,
        image_positions: int = 0,
        output_positions: str = "slot",
        edit_order: str = "image_first",
        prompt_style: str = "plain",
        input_encoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.backbone = backbone
        self.detokenizer = detokenizer
        self.layout = layout
        self.image_input = image_input
        # model.input_encoder 'separate': the LLM's own copy of the feature encoders (None: the tokenizer's)
        self.input_encoder = input_encoder
        self.image_positions = image_positions
        if output_positions not in ("slot", "next"):
            raise ValueError(f"output_positions must be 'slot' or 'next', got {output_positions!r}")
        self.output_positions = output_positions
        check_edit_order(edit_order)
        self.edit_order = edit_order
        # the text around every prompt (model.prompts); checked against the tokenizer here, not mid-run
        self.prompt_style = prompts.prompt_style(prompt_style, backbone.text_tokenizer)
        if edit_order != "image_first" and prompt_style == "official":
            raise prompts.PromptStyleError(
                "model.prompt_style 'official' puts the source image first: use model.edit_order image_first"
            )
        d = backbone.hidden_size
        std = float(getattr(backbone, "initializer_range", 0.02))
        self.projectors = nn.ModuleDict(
            {
                cb.name: MLPProjector(cb.feature_dim, d, projector_hidden, image_positions, std)
                for cb in tokenizer.codebooks
            }
        )

    @property
    def codebooks(self):
        return self.tokenizer.codebooks

    def image_tokens(self, height: int, width: int, with_tags: bool = True) -> int:
        """Length of one image's token block (structure + codes) at this pixel size."""
        return self.layout.image_length(self.tokenizer.grid(height, width), with_tags=with_tags)

    def parts(self) -> dict[str, Any]:
        return {
            "tokenizer": self.tokenizer,
            "backbone": self.backbone,
            "detokenizer": self.detokenizer,
            "projectors": self.projectors,
            "input_encoder": self.input_encoder,
        }
