import pytest
import torch
import torch.nn.functional as F

from illume_kit.model import packed_linear as pl

pytestmark = pytest.mark.skipif(not pl.available(), reason="this torch build has no oneDNN")


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.SiLU(), torch.nn.Linear(64, 16, bias=False))


@pytest.mark.parametrize("shape", [(5, 32), (3, 1, 32), (2, 4, 32)])
def test_routed_linears_equal_f_linear(shape):
    mlp, x = _mlp(), torch.randn(shape)
    with torch.inference_mode():
        want = mlp(x)
        with pl.packing_store(), pl.packed_linears():
            got = mlp(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_routing_calls_the_packed_op_and_leaves_other_dtypes_alone(monkeypatch):
    calls = []
    real = pl.packed_linear
    monkeypatch.setattr(pl, "packed_linear", lambda *a: calls.append(a[1].shape) or real(*a))
    mlp, x = _mlp(), torch.randn(4, 32)
    with torch.inference_mode(), pl.packing_store(), pl.packed_linears():
        mlp(x)
        assert calls == [(64, 32), (16, 64)]
        bf = _mlp().to(torch.bfloat16)
        want = F.linear(x.bfloat16(), bf[0].weight, bf[0].bias)
        assert torch.equal(bf[0](x.bfloat16()), want)
    assert len(calls) == 2
    with torch.inference_mode(), pl.packed_linears(enabled=False):
        mlp(x)
    assert len(calls) == 2


def test_a_weight_changed_in_place_is_packed_again():
    lin, x = torch.nn.Linear(32, 8), torch.randn(3, 32)
    with torch.no_grad(), pl.packing_store(), pl.packed_linears():
        first = lin(x)
        lin.weight.mul_(-2.0)  # same storage, new version
        second = lin(x)
        torch.testing.assert_close(second, F.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(first, second)


def test_weights_made_in_inference_mode_are_packed_too():
    with torch.inference_mode():
        lin, x = torch.nn.Linear(32, 8), torch.randn(3, 32)
        with pl.packing_store(), pl.packed_linears():
            got = lin(x)
        torch.testing.assert_close(got, F.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-6)


def test_store_holds_packed_weights_for_its_block_only():
    lin, x = torch.nn.Linear(32, 8), torch.randn(3, 32)
    with torch.inference_mode(), pl.packing_store():
        with pl.packing_store():  # nested: the outer store stays
            with pl.packed_linears():
                lin(x)
        assert len(pl._local.store) == 1
    assert pl._local.store is None


def test_compiled_block_stays_one_graph_with_the_packed_op():
    from torch._dynamo.testing import CompileCounterWithBackend

    mlp, x = _mlp(), torch.randn(6, 1, 32)

    def f(m, x):
        with pl.packed_linears():
            return m(x) + 1

    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(f, backend=counter, fullgraph=True)
    with torch.inference_mode(), pl.packing_store():
        got = compiled(mlp, x)
    assert counter.frame_count == 1
    assert any("packed_linear" in str(n.target) for g in counter.graphs for n in g.graph.nodes)
    torch.testing.assert_close(got, mlp(x) + 1, rtol=1e-5, atol=1e-6)
