"""Recipe -> UnifiedModel, with the contract checks that make a registry worth having.

Checks between components, each a clear ``ComposeError``:
- a detokenizer that decodes with the tokenizer's own pixel decoder needs a tokenizer that has one
  (a semantic-only tokenizer needs the ``diffusion`` detokenizer);
- every codebook the detokenizer ``consumes`` exists in the tokenizer, with matching size and dims;
- every projector's input width equals its codebook's feature width;
- the vocab layout is computed once here (and stored in checkpoints, which must agree with it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, get_args

import torch

from illume_kit.core.build import ComposeError, build_component
from illume_kit.core.layout import VocabLayout
from illume_kit.core.protocols import Attaches, ExpectsCodebooks, SeparateInputEncoder, TextVocab
from illume_kit.core.recipe import ResolvedRecipe
from illume_kit.core.schema import ModelOptions
from illume_kit.model.prompts import PromptStyleError
from illume_kit.model.unified import UnifiedModel
from illume_kit.model.weights import load_component_weights

__all__ = ["ComposeError", "assemble", "build_component", "build_layout", "check_contracts", "compose", "level_order"]


def check_contracts(tokenizer: Any, detokenizer: Any | None, names: Mapping[str, str]) -> None:
    if detokenizer is None:
        return
    tok, det = names.get("tokenizer", "tokenizer"), names.get("detokenizer", "detokenizer")
    if isinstance(detokenizer, Attaches):
        try:
            detokenizer.attach(tokenizer)
        except ValueError as exc:
            raise ComposeError(f"detokenizer {det!r} cannot decode tokenizer {tok!r}: {exc}") from exc
    cbs = {cb.name: cb for cb in tokenizer.codebooks}
    for name in detokenizer.consumes:
        if name not in cbs:
            raise ComposeError(
                f"detokenizer {det!r} consumes codebook {name!r}, which tokenizer {tok!r} does not have "
                f"(it has: {', '.join(cbs)})"
            )
    for exp in detokenizer.expected_codebooks if isinstance(detokenizer, ExpectsCodebooks) else ():
        have = cbs.get(exp.name)
        if have is None or (have.size, have.code_dim) != (exp.size, exp.code_dim):
            got = f"size {have.size}, dim {have.code_dim}" if have else "missing"
            raise ComposeError(
                f"detokenizer {det!r} was built for codebook {exp.name!r} with size {exp.size}, dim "
                f"{exp.code_dim}; tokenizer {tok!r} has {got}"
            )


LEVEL_ORDERS = get_args(ModelOptions.model_fields["level_order"].annotation)  # the recipe schema's choices


def level_order(tokenizer: Any, order: str = "coarse_first") -> list[Any]:
    """The tokenizer's codebooks in sequence order: its own (``coarse_first``) or reversed (``fine_first``)."""
    if order not in LEVEL_ORDERS:
        raise ComposeError(f"model.level_order must be one of {', '.join(LEVEL_ORDERS)}, got {order!r}")
    cbs = list(tokenizer.codebooks)
    return cbs if order == "coarse_first" else cbs[::-1]


def build_layout(tokenizer: Any, backbone: Any, options: ModelOptions) -> VocabLayout:
    text = int(backbone.text_vocab_size if isinstance(backbone, TextVocab) else backbone.vocab_size)
    return VocabLayout.build(
        text,
        [(cb.name, cb.size) for cb in level_order(tokenizer, options.level_order)],
        options.resolution_step,
        options.max_resolution,
    )


def assemble(
    tokenizer: Any,
    backbone: Any,
    detokenizer: Any | None,
    options: ModelOptions,
    layout: VocabLayout | None = None,
    names: Mapping[str, str] | None = None,
):
    """Check contracts, extend the backbone's vocab, and build the UnifiedModel around the parts."""
    check_contracts(tokenizer, detokenizer, names or {})
    computed = build_layout(tokenizer, backbone, options)
    if layout is not None and layout != computed:
        raise ComposeError(
            "the stored vocab layout does not match the one these components give "
            f"(stored ends at {layout.total_size}, computed at {computed.total_size}); "
            "the checkpoint was written by different components or params"
        )
    layout = computed
    input_encoder = None
    if options.input_encoder == "separate":
        if not isinstance(tokenizer, SeparateInputEncoder):
            tok = (names or {}).get("tokenizer", type(tokenizer).__name__)
            raise ComposeError(
                f"model.input_encoder 'separate' needs a tokenizer that can copy its encoders; {tok!r} "
                "cannot (use 'shared')"
            )
        input_encoder = tokenizer.make_input_encoder()
    backbone.extend_vocab(layout)
    try:
        model = UnifiedModel(
            tokenizer,
            backbone,
            detokenizer,
            layout,
            options.image_input,
            options.projector_hidden,
            options.image_positions,
            options.output_positions,
            options.edit_order,
            options.prompt_style,
            input_encoder,
        )
    except PromptStyleError as exc:
        raise ComposeError(str(exc)) from exc
    for cb in tokenizer.codebooks:
        if model.projectors[cb.name].in_dim != cb.feature_dim:
            raise ComposeError(
                f"projector for {cb.name!r} takes {model.projectors[cb.name].in_dim}-d features, "
                f"tokenizer gives {cb.feature_dim}-d"
            )
    return model


def compose(resolved: ResolvedRecipe, meta: bool = False):
    """Build every component of a validated recipe and assemble the unified model.

    ``meta``: build on torch's meta device, reading no weights (every tensor has a shape and a dtype
    but no storage): the sizes of an official-scale recipe in seconds, without its memory."""
    if meta:
        with torch.device("meta"):
            return _compose(resolved, load_weights=False)
    return _compose(resolved, load_weights=True)


def _compose(resolved: ResolvedRecipe, load_weights: bool):
    torch.manual_seed(resolved.recipe.run.seed)
    comps = resolved.components
    parts = {
        sec: build_component(comps[sec].spec, comps[sec].params)
        for sec in ("tokenizer", "backbone", "detokenizer")
        if sec in comps
    }
    names = {sec: comps[sec].spec.name for sec in parts}
    # the tokenizer loads first (detokenizers size themselves from it in attach); the backbone and the
    # detokenizer load after assembly, when the vocab is extended and the denoiser exists
    if load_weights and comps["tokenizer"].weights:
        load_component_weights(parts["tokenizer"], comps["tokenizer"].weights, "tokenizer")
    model = assemble(
        parts["tokenizer"], parts["backbone"], parts.get("detokenizer"), resolved.recipe.model, names=names
    )
    for sec in ("backbone", "detokenizer"):
        if load_weights and sec in parts and comps[sec].weights:
            load_component_weights(parts[sec], comps[sec].weights, sec)
    return model
