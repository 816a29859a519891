"""The quantizer adapters: one return shape, exact index round trips, scalar losses, learning."""

from __future__ import annotations

import pytest
import torch

from illume_kit.core.params import QuantizerRef
from illume_kit.core.protocols import QuantizerOutput
from illume_kit.plugins.tokenizers.quantizers import FSQ, LFQ, VQ, ResidualVQ, SimVQ, build_quantizer
from illume_kit.testing import conformance

DIM = 8
CASES = {
    "vq": (VQ, dict(dim=DIM, codebook_size=32)),
    "vq-learnable": (VQ, dict(dim=DIM, codebook_size=32, learnable_codebook=True)),
    "simvq": (SimVQ, dict(dim=DIM, codebook_size=64)),
    "fsq": (FSQ, dict(levels=[5, 5, 3], dim=DIM)),
    "lfq": (LFQ, dict(dim=DIM, codebook_size=64)),
    "residual-vq": (ResidualVQ, dict(dim=DIM, num_quantizers=3, codebook_size=16)),
}


def make(case):
    cls, kw = CASES[case]
    return cls(cls.Params(**kw))


@pytest.mark.parametrize("case", CASES)
def test_shapes_range_scalar_loss_and_round_trip(case):
    torch.manual_seed(0)
    q = make(case)
    z = torch.randn(2, 10, DIM)
    out = q(z)
    assert isinstance(out, QuantizerOutput)
    quantized, indices, loss = out
    assert quantized.shape == z.shape and quantized.dtype == torch.float32
    expected = (2, 10, q.num_levels) if q.num_levels > 1 else (2, 10)
    assert indices.shape == expected and indices.dtype == torch.long
    assert indices.min() >= 0 and indices.max() < q.codebook_size
    assert loss.ndim == 0 and torch.isfinite(loss)
    q.eval()
    quantized, indices, _ = q(z)
    assert torch.allclose(q.indices_to_codes(indices), quantized, atol=1e-5)


def test_fsq_has_zero_loss_and_product_codebook():
    q = make("fsq")
    assert q.codebook_size == 75
    assert q(torch.randn(1, 4, DIM)).aux_loss.item() == 0.0


@pytest.mark.parametrize("case", ["vq-learnable", "simvq", "fsq", "lfq"])
def test_optimisation_reduces_quantisation_error(case):
    """An encoder (one linear) trained through the quantizer learns to land on codes.

    The error is relative to the variance of z, so shrinking the encoder output does not count.
    """
    torch.manual_seed(0)
    q = make(case)
    enc = torch.nn.Linear(DIM, DIM)
    opt = torch.optim.Adam([*enc.parameters(), *q.parameters()], lr=3e-2)
    data = torch.randn(4, 16, DIM)

    def error():
        with torch.no_grad():
            z = enc(data)
            return ((q(z).quantized - z) ** 2).mean().item() / z.var().item()

    before = error()
    for _ in range(60):
        z = enc(data)
        quantized, _, aux = q(z)
        loss = ((quantized - data) ** 2).mean() + aux + ((quantized.detach() - z) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert error() < 0.7 * before


def test_ema_vq_codebook_moves_to_data():
    torch.manual_seed(0)
    q = make("vq")
    data = torch.randn(4, 64, DIM) * 0.1 + 3.0
    before = ((q(data).quantized - data) ** 2).mean()
    for _ in range(20):
        q(data)
    after = ((q(data).quantized - data) ** 2).mean()
    assert after < 0.5 * before


def test_simvq_defaults_are_illume_plus_and_chunked_lookup_matches():
    torch.manual_seed(0)
    p = SimVQ.Params(dim=4, codebook_size=100)
    assert (p.rotation_trick, p.commitment_weight, p.input_to_quantize_commit_loss_weight) == (False, 1.0, 0.25)
    whole = SimVQ(p)
    chunked = SimVQ(p.model_copy(update={"lookup_chunk_elements": 700}))  # 7 tokens per chunk
    chunked.load_state_dict(whole.state_dict())
    z = torch.randn(3, 10, 4, requires_grad=True)
    a, b = whole(z), chunked(z)
    assert torch.equal(a.indices, b.indices)
    assert torch.allclose(a.quantized, b.quantized) and torch.allclose(a.aux_loss, b.aux_loss, atol=1e-6)
    # ILLUME+ loss: MSE(sg(z), q) + 0.25 MSE(z, sg(q))
    q_codes = whole.indices_to_codes(a.indices)
    assert torch.allclose(a.aux_loss, 1.25 * ((z - q_codes) ** 2).mean(), atol=1e-6)
    assert set(whole.state_dict()) == {"vq.frozen_codebook", "vq.code_transform.weight"}
    assert sum(p.numel() for p in whole.parameters() if p.requires_grad) == 16


def _fit_clusters(restart_after: int):
    """SimVQ on 24 tight clusters far from its initial codes: (eval usage, eval MSE, quantizer)."""
    torch.manual_seed(0)
    centers = torch.randn(24, 8) * 3 + 5
    q = build_quantizer(
        {"name": "simvq", "params": {"dim": 8, "codebook_size": 32, "restart_dead_codes_after": restart_after}}
    )
    opt = torch.optim.Adam(q.parameters(), 1e-2)
    g = torch.Generator().manual_seed(2)
    for _ in range(150):
        x = centers[torch.randint(0, 24, (16, 32), generator=g)] + 0.1 * torch.randn(16, 32, 8, generator=g)
        out = q(x)
        opt.zero_grad()
        out.aux_loss.backward()
        opt.step()
    q.eval()
    q.track_usage = True
    q.reset_usage()
    out = q(centers[None])
    return q.usage()["usage"], (out.quantized - centers).square().mean().item(), q


def test_simvq_dead_code_restart_revives_codes_and_is_deterministic():
    usage_off, mse_off, plain = _fit_clusters(0)
    usage_on, mse_on, q = _fit_clusters(10)
    assert "steps_unused" not in plain.state_dict()  # off by default: the state dict stays the library's
    assert usage_off <= 0.25 and mse_off > 1.0  # the classic collapse onto a few codes
    assert usage_on >= 0.6 and mse_on < 0.1 * mse_off
    assert "steps_unused" in q.state_dict()  # persisted, so resume restarts the same codes
    again = _fit_clusters(10)[2]
    assert torch.equal(q.vq.frozen_codebook, again.vq.frozen_codebook)
    q.eval()  # no restart outside training
    before = q.vq.frozen_codebook.clone()
    q(torch.randn(2, 4, 8) * 100)
    assert torch.equal(before, q.vq.frozen_codebook)


def test_usage_counters():
    torch.manual_seed(0)
    q = make("simvq")
    q.eval()
    q(torch.randn(1, 50, DIM))
    assert q.usage()["tokens"] == 0  # eval does not count by default
    q.train()
    out = q(torch.randn(1, 50, DIM))
    stats = q.usage()
    n_used = out.indices.unique().numel()
    assert stats["tokens"] == 50 and stats["usage"] == pytest.approx(n_used / 64)
    assert 1.0 <= stats["perplexity"] <= n_used
    q.reset_usage()
    assert q.usage()["tokens"] == 0
    q.eval()
    q.track_usage = True
    q(torch.randn(1, 5, DIM))
    assert q.usage()["tokens"] == 5


def test_usage_uniform_perplexity_residual():
    q = make("residual-vq")
    q.track_usage = True
    q._count(torch.arange(16).repeat(3, 1).T.reshape(1, 16, 3))
    stats = q.usage()
    assert stats["usage"] == 1.0 and stats["perplexity"] == pytest.approx(16.0)


def test_bad_input_shape_is_explained():
    with pytest.raises(ValueError, match=r"expects \(B, N, 8\)"):
        make("vq")(torch.randn(2, 8, 4, 4))


def test_build_quantizer_from_ref_with_defaults():
    q = build_quantizer(
        QuantizerRef(name="simvq", params={"codebook_size": 128}), defaults={"dim": 16, "codebook_size": 7}
    )
    assert isinstance(q, SimVQ) and q.dim == 16 and q.codebook_size == 128
    fsq = build_quantizer({"name": "fsq", "params": {"levels": [4, 4]}}, defaults={"dim": 6, "codebook_size": 9})
    assert isinstance(fsq, FSQ) and fsq.dim == 6 and fsq.codebook_size == 16
    with pytest.raises(KeyError, match="simvq"):
        build_quantizer(QuantizerRef(name="simvqq"))


def test_params_validation():
    with pytest.raises(ValueError, match="power of two"):
        LFQ.Params(codebook_size=100)
    with pytest.raises(ValueError):
        VQ.Params(codebok_size=3)


@pytest.mark.parametrize("case", CASES)
@conformance.parametrize("quantizer")
def test_conformance(check, case):
    check(lambda: make(case))
