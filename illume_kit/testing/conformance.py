"""A conformance suite any tokenizer, backbone, detokenizer or quantizer plugin runs on its tiny preset.

Behaviour the protocols cannot express is checked here: codes lie in range on the declared grid,
eval mode is deterministic, losses are scalars, ``Params`` serialise to JSON Schema, and a
safetensors save/load round trip reproduces outputs exactly. Every optional capability of
``illume_kit.core.protocols`` that a component implements is exercised too (``*_capabilities``), and
``check_declared`` compares a registry record's ``provides`` with what the component does. Use it
from pytest::

    from illume_kit.testing import conformance

    @conformance.parametrize("tokenizer")
    def test_my_tokenizer(check):
        check(lambda: MyTokenizer(MyTokenizer.Params(**PRESETS["tiny"])))

Detokenizer factories return ``(tokenizer, detokenizer)``; backbone and quantizer factories the component.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from illume_kit.core.layout import VocabLayout
from illume_kit.core.protocols import (
    Adversarial,
    Attaches,
    CheckpointParams,
    CodebookSpec,
    CodeMaps,
    ExpectsCodebooks,
    IncrementalCache,
    LoadsExtra,
    Metric,
    RetrainsTextTokenizer,
    SavesExtra,
    SemanticScore,
    StaticKVCache,
    TextVocab,
)


def _images(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


def _round_trip(factory: Callable, module: torch.nn.Module) -> torch.nn.Module:
    from safetensors.torch import load_model, save_model

    with tempfile.TemporaryDirectory() as d:
        path = str(Path(d) / "model.safetensors")
        save_model(module, path)
        fresh = factory()
        if isinstance(fresh, tuple):
            fresh = fresh[1]
        missing, unexpected = load_model(fresh, path, strict=False)
        assert not missing and not unexpected, f"round trip: missing {missing}, unexpected {unexpected}"
    return fresh.eval()


def check_params_schema(component) -> None:
    schema = component.Params.model_json_schema()
    json.dumps(schema)
    assert schema.get("additionalProperties") is False, "Params must forbid unknown keys (extra='forbid')"


# ---- tokenizers -----------------------------------------------------------------------------
def tokenizer_codes_in_range(factory, size: int = 64) -> None:
    tok = factory().eval()
    x = _images(size=size)
    out = tok.encode(x)
    grid = tok.grid(size, size)
    assert [cb.name for cb in tok.codebooks] == list(out.codes), "codes must be keyed by codebook, in order"
    for cb in tok.codebooks:
        codes = out.codes[cb.name]
        assert codes.dtype in (torch.int64, torch.int32), f"{cb.name}: codes must be integer"
        assert tuple(codes.shape) == (2, *grid[cb.name]), (
            f"{cb.name}: codes {tuple(codes.shape)} vs grid {grid[cb.name]}"
        )
        assert int(codes.min()) >= 0 and int(codes.max()) < cb.size, f"{cb.name}: codes out of [0, {cb.size})"
        feats = out.features[cb.name]
        assert tuple(feats.shape) == (2, *grid[cb.name], cb.feature_dim), f"{cb.name}: features {tuple(feats.shape)}"


def tokenizer_deterministic(factory, size: int = 64) -> None:
    tok = factory().eval()
    x = _images(size=size)
    with torch.no_grad():
        a, b = tok.encode(x), tok.encode(x)
    for k in a.codes:
        assert torch.equal(a.codes[k], b.codes[k]), f"{k}: eval-mode encode is not deterministic"


def tokenizer_loss_scalar(factory, size: int = 64) -> None:
    tok = factory().train()
    losses = tok.loss(_images(size=size), step=0)
    assert "loss" in losses, "loss() must return a dict with 'loss'"
    for k, v in losses.items():
        assert torch.is_tensor(v) and v.ndim == 0, f"loss part {k!r} must be a scalar tensor"
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()


def tokenizer_decode_shape(factory, size: int = 64) -> None:
    tok = factory().eval()
    if not tok.has_pixel_decoder:
        return
    with torch.no_grad():
        img = tok.decode(tok.encode(_images(size=size)).codes)
    assert tuple(img.shape) == (2, 3, size, size), f"decode gave {tuple(img.shape)}"
    assert float(img.min()) >= 0 and float(img.max()) <= 1, "decoded images must lie in [0, 1]"


def tokenizer_round_trip(factory, size: int = 64) -> None:
    tok = factory().eval()
    x = _images(size=size)
    fresh = _round_trip(factory, tok)
    with torch.no_grad():
        a, b = tok.encode(x), fresh.encode(x)
    for k in a.codes:
        assert torch.equal(a.codes[k], b.codes[k]), f"{k}: codes differ after save/load"


def tokenizer_schema(factory, size: int = 64) -> None:
    check_params_schema(factory())


def _persistence(factory, module) -> None:
    """``checkpoint_params`` gives params that still validate; ``save_extra`` / ``load_extra`` run."""
    params = getattr(module, "params", None)
    if isinstance(module, CheckpointParams) and params is not None:
        out = module.checkpoint_params(params.model_dump(mode="json"))
        assert isinstance(out, dict), "checkpoint_params must return a dict"
        type(module).Params.model_validate(out)
    if isinstance(module, SavesExtra):
        with tempfile.TemporaryDirectory() as d:
            module.save_extra(Path(d))
            if isinstance(module, LoadsExtra):
                fresh = factory()
                (fresh[1] if isinstance(fresh, tuple) else fresh).load_extra(Path(d))


def tokenizer_capabilities(factory, size: int = 64) -> None:
    """The optional capabilities the tokenizer implements: shapes and types of what they return."""
    tok = factory().eval()
    x = _images(size=size)
    grid = tok.grid(size, size)
    with torch.no_grad():
        out = tok.encode(x)
        if isinstance(tok, CodeMaps):
            maps = tok.codes_to_maps(out.codes)
            assert set(maps) == set(out.codes), "codes_to_maps must return one map per codebook it was given"
            for cb in tok.codebooks:
                m = maps[cb.name]
                assert tuple(m.shape) == (2, cb.code_dim, *grid[cb.name]), f"{cb.name}: map {tuple(m.shape)}"
                if cb.name in out.quantized:
                    assert torch.allclose(m, out.quantized[cb.name], atol=1e-5), (
                        f"{cb.name}: codes_to_maps differs from encode().quantized"
                    )
        if isinstance(tok, SemanticScore):
            cos = tok.semantic_cosine(x)
            assert tuple(cos.shape) == (2,), f"semantic_cosine must give (B,), got {tuple(cos.shape)}"
            assert float(cos.abs().max()) <= 1 + 1e-4, "semantic_cosine must lie in [-1, 1]"
    if isinstance(tok, Adversarial) and tok.discriminator is not None:
        assert isinstance(tok.discriminator, torch.nn.Module), "discriminator must be an nn.Module or None"
        losses = tok.train().discriminator_loss(x, step=10**9)
        assert "loss" in losses and all(torch.is_tensor(v) and v.ndim == 0 for v in losses.values()), (
            "discriminator_loss must return scalar tensors, with 'loss'"
        )
    _persistence(factory, tok)


def check_declared(provides, component) -> None:
    """A registry record's ``provides`` matches the component: ``pixel_decoder`` if and only if
    ``has_pixel_decoder``, ``code_maps`` if and only if it implements ``CodeMaps``."""
    declared = set(provides)
    has = {
        "pixel_decoder": bool(getattr(component, "has_pixel_decoder", False)),
        "code_maps": isinstance(component, CodeMaps),
    }
    for cap, present in has.items():
        assert (cap in declared) == present, (
            f"the registry record {'declares' if cap in declared else 'omits'} "
            f"provides: {cap}, but the component {'has' if present else 'lacks'} it"
        )


# ---- backbones --------------------------------------------------------------------------
def _layout(bb) -> VocabLayout:
    text = bb.text_vocab_size if isinstance(bb, TextVocab) else bb.vocab_size
    return VocabLayout.build(text, [("semantic", 16), ("pixel", 32)], resolution_step=16, max_resolution=64)


def backbone_forward(factory) -> None:
    bb = factory().eval()
    layout = _layout(bb)
    bb.extend_vocab(layout)
    assert bb.vocab_size >= layout.total_size
    ids = torch.tensor([[1, 2, layout.soi, layout.codebook("pixel").start + 3]])
    out = bb(inputs_embeds=bb.embed(ids))
    assert out.logits.shape[:2] == (1, 4) and out.logits.shape[-1] >= layout.total_size
    with torch.no_grad():
        again = bb(inputs_embeds=bb.embed(ids)).logits
    assert torch.allclose(out.logits, again), "eval-mode forward is not deterministic"


def backbone_round_trip(factory) -> None:
    bb = factory().eval()
    bb.extend_vocab(_layout(bb))

    def rebuilt():
        f = factory()
        f.extend_vocab(_layout(f))
        return f

    fresh = _round_trip(rebuilt, bb)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(bb(inputs_embeds=bb.embed(ids)).logits, fresh(inputs_embeds=fresh.embed(ids)).logits)


def backbone_schema(factory) -> None:
    check_params_schema(factory())


def backbone_capabilities(factory) -> None:
    import inspect

    bb = factory().eval()
    if isinstance(bb, TextVocab):
        assert isinstance(bb.text_vocab_size, int) and 1 <= bb.text_vocab_size <= bb.vocab_size
    if isinstance(bb, IncrementalCache):
        assert bb.new_cache() is not None, "new_cache() must return a cache object"
    if isinstance(bb, StaticKVCache):
        _static_cache_decodes_as_growing_one(bb)
    if isinstance(bb, RetrainsTextTokenizer):
        inspect.signature(bb.retrain_text_tokenizer).bind(["a text"])
    _persistence(factory, bb)


def _static_cache_decodes_as_growing_one(bb, rows: int = 2, prompt: int = 5, steps: int = 3) -> None:
    """A left-padded prefill then one token per step: the preallocated cache gives the logits of a
    growing one (``new_cache``, else the model's own), with a 2D attention mask the whole length from
    the start, and with a 4D boolean one ``(rows, 1, 1, L)`` that shows only the filled positions
    (the window the static decode loop passes)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, bb.vocab_size, (rows, prompt + steps), generator=g)
    mask = torch.ones(rows, prompt, dtype=torch.long)
    mask[0, :2] = 0
    full = torch.cat([mask, torch.ones(rows, steps, dtype=torch.long)], 1)
    growing = bb.new_cache() if isinstance(bb, IncrementalCache) else None
    runs = [(growing, None), (bb.new_static_cache(rows, prompt + steps), "2d")]
    assert runs[1][0] is not None, "new_static_cache(batch, max_len) must return a cache object"
    logits = []
    with torch.no_grad():
        embeds = bb.embed(ids)
        for cache, kind in runs + [(None, "4d")]:
            if kind == "4d":  # a longer cache than the window ever reaches
                cache = bb.new_static_cache(rows, prompt + steps + 4)
            pos = (mask.cumsum(1) - 1).clamp(min=0)
            out = bb(embeds[:, :prompt], attention_mask=mask, past_key_values=cache, position_ids=pos, use_cache=True)
            seen = [out.logits[:, -1]]
            for s in range(1, steps):
                m = full if kind == "2d" else full[:, : prompt + s]
                if kind == "4d":
                    m = m.bool()[:, None, None, :]
                out = bb(
                    embeds[:, prompt + s - 1 : prompt + s],
                    attention_mask=m,
                    past_key_values=out.past_key_values,
                    position_ids=(mask.sum(1) + s - 1)[:, None],
                    use_cache=True,
                )
                seen.append(out.logits[:, -1])
            logits.append(torch.stack(seen).float())
    for got, how in zip(logits[1:], ("a 2D mask", "a 4D window mask")):
        torch.testing.assert_close(
            got, logits[0], atol=1e-4, rtol=1e-4, msg=f"a static cache decodes otherwise with {how}"
        )


# ---- detokenizers -----------------------------------------------------------------------
def detokenizer_decode(factory, size: int = 64) -> None:
    tok, det = factory()
    if isinstance(det, Attaches):
        det.attach(tok)
    tok.eval(), det.eval()
    with torch.no_grad():
        codes = tok.encode(_images(size=size)).codes
        a = det.decode(codes, seed=0) if _takes_seed(det) else det.decode(codes)
        b = det.decode(codes, seed=0) if _takes_seed(det) else det.decode(codes)
    s = size * det.output_scale
    assert tuple(a.shape) == (2, 3, s, s), f"decode gave {tuple(a.shape)}, expected (2, 3, {s}, {s})"
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b), "decode with a fixed seed must be reproducible"
    assert set(det.consumes) <= {cb.name for cb in tok.codebooks}


def _takes_seed(det) -> bool:
    import inspect

    sig = inspect.signature(det.decode)
    return "seed" in sig.parameters or any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def detokenizer_schema(factory, size: int = 64) -> None:
    check_params_schema(factory()[1])


def detokenizer_capabilities(factory, size: int = 64) -> None:
    tok, det = factory()
    if isinstance(det, Attaches):
        det.attach(tok)
    if isinstance(det, ExpectsCodebooks):
        exp = tuple(det.expected_codebooks)
        assert all(isinstance(cb, CodebookSpec) for cb in exp), "expected_codebooks must be CodebookSpec records"
        assert {cb.name for cb in exp} <= {cb.name for cb in tok.codebooks}
    _persistence(factory, det)


# ---- quantizers -------------------------------------------------------------------------
def quantizer_contract(factory) -> None:
    q = factory().eval()
    dim = getattr(q, "dim", None) or q.params.dim
    z = torch.randn(2, 10, dim, generator=torch.Generator().manual_seed(0))
    out = q(z)
    quantized, indices, aux = out
    assert quantized.shape == z.shape, f"quantized {tuple(quantized.shape)} vs input {tuple(z.shape)}"
    assert aux.ndim == 0, "aux loss must be a scalar"
    assert int(indices.min()) >= 0 and int(indices.max()) < q.codebook_size
    codes = q.indices_to_codes(indices)
    assert torch.allclose(codes, quantized, atol=1e-5), "indices_to_codes must reproduce the quantized vectors"


def quantizer_schema(factory) -> None:
    check_params_schema(factory())


# ---- metrics ----------------------------------------------------------------------------
def metric_contract(factory) -> None:
    """A metric: a ``Metric``, with a ``goal`` and forbidding ``Params``. (What ``compute`` returns
    is checked by ``check_metric_result`` on a real evaluation context.)"""
    m = factory()
    assert isinstance(m, Metric), "a metric needs Params, goal and compute(ctx)"
    assert m.goal in ("max", "min"), f"goal must be 'max' or 'min', got {m.goal!r}"
    check_params_schema(m)


def check_metric_result(result, family: str) -> None:
    assert isinstance(result, dict) and result, "compute must return a non-empty dict"
    for k, v in result.items():
        assert isinstance(k, str) and k.split("/")[0] == family, f"metric name {k!r} must start with {family}/"
        assert isinstance(v, float), f"{k}: value must be a float, got {type(v).__name__}"


CHECKS: dict[str, list[Callable]] = {
    "tokenizer": [
        tokenizer_schema,
        tokenizer_codes_in_range,
        tokenizer_deterministic,
        tokenizer_loss_scalar,
        tokenizer_decode_shape,
        tokenizer_round_trip,
        tokenizer_capabilities,
    ],
    "backbone": [backbone_schema, backbone_forward, backbone_round_trip, backbone_capabilities],
    "detokenizer": [detokenizer_schema, detokenizer_decode, detokenizer_capabilities],
    "quantizer": [quantizer_schema, quantizer_contract],
    "metric": [metric_contract],
}


def parametrize(role: str):
    """``@conformance.parametrize("tokenizer")`` gives the test a ``check`` argument per check."""
    import pytest

    checks = CHECKS[role]
    return pytest.mark.parametrize("check", checks, ids=[c.__name__ for c in checks])
