"""attreg.cpu_matmul: the same products and gradients (to second order) as torch."""

import contextlib

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings
from torch import nn

import attreg
from attreg import cpu_matmul

# every test here runs with the fast paths on and off (conftest.fast_paths_both_ways)
pytestmark = pytest.mark.usefixtures("fast_paths_both_ways")

needs_onednn = pytest.mark.skipif(
    cpu_matmul.set_cpu_matmul("auto") != "onednn", reason="no working oneDNN in this build"
)


@contextlib.contextmanager
def onednn_everywhere():
    """oneDNN for every float32 CPU product, however small; back to 'auto' afterwards."""
    old = cpu_matmul.MIN_MACS
    cpu_matmul.MIN_MACS = 0
    try:
        assert cpu_matmul.set_cpu_matmul("onednn") == "onednn"
        yield
    finally:
        cpu_matmul.MIN_MACS = old
        cpu_matmul.set_cpu_matmul("auto")


def _uses_onednn(t: torch.Tensor) -> bool:
    """Whether the autograd graph of ``t`` contains a oneDNN product."""
    todo, seen = [t.grad_fn], set()
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if type(fn).__name__ == "_OneDNNLinearBackward":
            return True
        todo += [nxt for nxt, _ in fn.next_functions]
    return False


def _matrix(rows, cols, layout, g):
    """Row-major ('c'), a transposed view ('t') or every other column of a wider buffer ('s')."""
    if layout == "c":
        return torch.randn(rows, cols, generator=g)
    if layout == "t":
        return torch.randn(cols, rows, generator=g).t()
    return torch.randn(rows, 2 * cols, generator=g)[:, ::2]


def _operands(n, k, m, layout, seed):
    g = torch.Generator().manual_seed(seed)
    x, w = _matrix(n, k, layout[0], g), _matrix(m, k, layout[1], g)
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    return x, w, torch.randn(m, generator=g).requires_grad_()


@pytest.mark.fast_path_only
@needs_onednn
@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40),
    k=st.integers(1, 40),
    m=st.integers(1, 40),
    layout=st.sampled_from(["cc", "ct", "tc", "tt", "sc", "cs", "ts"]),
    with_bias=st.booleans(),
    seed=st.integers(0, 99),
)
def test_linear_matches_torch_to_second_order(n, k, m, layout, with_bias, seed):
    x, w, b = _operands(n, k, m, layout, seed)
    bias = b if with_bias else None
    with onednn_everywhere():
        ours = cpu_matmul.linear(x, w, bias)
        # strided slices go to torch (oneDNN's reference kernel for them is 100x slower)
        if "s" not in layout:
            assert _uses_onednn(ours)
        elif min(n, k, m) >= 2:  # a real slice (a 1-wide one is still dense)
            assert not _uses_onednn(ours)
    ref = torch.nn.functional.linear(x, w, bias)
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-4)
    # first-order gradients kept differentiable, then a second-order gradient
    v = torch.randn_like(ref)
    with onednn_everywhere():
        g1 = torch.autograd.grad((ours * v).sum(), (x, w), create_graph=True)
        (g2,) = torch.autograd.grad((g1[0] ** 2).sum(), w)
    r1 = torch.autograd.grad((ref * v).sum(), (x, w), create_graph=True)
    for a, c in zip(g1, r1, strict=True):
        assert torch.allclose(a, c, atol=1e-4, rtol=1e-4)
    (r2,) = torch.autograd.grad((r1[0] ** 2).sum(), w)
    assert torch.allclose(g2, r2, atol=1e-3, rtol=1e-4)


@needs_onednn
def test_matmul_batched_input_and_broadcast_gradient():
    a = torch.randn(3, 5, 7, requires_grad=True)
    b = torch.randn(7, 11, requires_grad=True)
    with onednn_everywhere():
        out = cpu_matmul.matmul(a, b)
        assert torch.allclose(out, a @ b, atol=1e-5)
        out.sum().backward()  # the incoming gradient is a stride-0 broadcast
    assert torch.allclose(a.grad, torch.ones(3, 5, 11) @ b.detach().t(), atol=1e-4)
    assert torch.allclose(b.grad, a.detach().reshape(-1, 7).t() @ torch.ones(15, 11), atol=1e-4)


@pytest.mark.fast_path_only
@needs_onednn
@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 30),
    k=st.integers(1, 30),
    m=st.integers(1, 30),
    transposed_weight=st.booleans(),
    seed=st.integers(0, 99),
)
def test_linear_mul_matches_the_composition_to_second_order(n, k, m, transposed_weight, seed):
    """``linear_mul(x, w, o) = linear(x, w) * o`` in one oneDNN kernel: values, gradients of
    all three inputs, and a second-order gradient."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=g).requires_grad_()
    w = _matrix(m, k, "t" if transposed_weight else "c", g).detach().requires_grad_()
    o = torch.randn(n, m, generator=g).requires_grad_()
    with onednn_everywhere():
        ours = cpu_matmul.linear_mul(x, w, o)
        assert type(ours.grad_fn).__name__ == "_OneDNNLinearMulBackward"
    ref = torch.nn.functional.linear(x, w) * o
    assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-4)
    v = torch.randn_like(ref)
    with onednn_everywhere():
        g1 = torch.autograd.grad((ours * v).sum(), (x, w, o), create_graph=True)
        (g2,) = torch.autograd.grad((g1[0] ** 2).sum() + (g1[2] ** 2).sum(), w)
    r1 = torch.autograd.grad((ref * v).sum(), (x, w, o), create_graph=True)
    for a, c in zip(g1, r1, strict=True):
        assert torch.allclose(a, c, atol=1e-4, rtol=1e-4)
    (r2,) = torch.autograd.grad((r1[0] ** 2).sum() + (r1[2] ** 2).sum(), w)
    assert torch.allclose(g2, r2, atol=1e-3, rtol=1e-4)


def test_linear_mul_function_gradgradcheck_and_fallbacks():
    """The fused function's backward formulas (run in float64, where its forward is the
    composition), and the unfused fallbacks: float64 and a factor of another shape."""
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    o = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(cpu_matmul._OneDNNLinearMul.apply, (x, w, o))
    assert type(cpu_matmul.linear_mul(x, w, o).grad_fn).__name__ == "MulBackward0"
    row = torch.randn(1, 5)  # broadcast factor: the composition, same value
    a, b = torch.randn(4, 3), torch.randn(5, 3)
    assert torch.allclose(cpu_matmul.linear_mul(a, b, row), (a @ b.t()) * row, atol=1e-5)


def test_other_dtypes_devices_and_backend_torch_use_torch(monkeypatch):
    monkeypatch.setattr(cpu_matmul, "MIN_MACS", 0)
    x64 = torch.randn(4, 3, dtype=torch.float64)
    w64 = torch.randn(2, 3, dtype=torch.float64)
    assert cpu_matmul.linear(x64, w64).grad_fn is None  # float64: plain F.linear
    assert cpu_matmul.set_cpu_matmul("torch") == "torch"
    x = torch.randn(4, 3, requires_grad=True)
    assert not _uses_onednn(cpu_matmul.linear(x, torch.randn(2, 3)))
    cpu_matmul.set_cpu_matmul("auto")


def test_bad_backend_names_are_rejected(monkeypatch):
    with pytest.raises(ValueError, match="unknown CPU matmul backend 'mkl'"):
        attreg.set_cpu_matmul("mkl")
    monkeypatch.setattr(cpu_matmul, "_requested", "fast")
    monkeypatch.setattr(cpu_matmul, "_resolved", None)
    with pytest.raises(ValueError, match="ATTREG_CPU_MATMUL='fast'"):
        cpu_matmul.cpu_matmul_backend()


def test_onednn_requested_without_onednn_is_an_error(monkeypatch):
    monkeypatch.setattr(cpu_matmul, "_onednn_works", lambda: False)
    with pytest.raises(RuntimeError, match="no working oneDNN"):
        cpu_matmul.set_cpu_matmul("onednn")
    assert cpu_matmul.set_cpu_matmul("auto") == "torch"
    cpu_matmul.set_cpu_matmul("auto")


def test_linear_module_is_a_drop_in_for_nn_linear():
    torch.manual_seed(0)
    ref = nn.Linear(300, 16)
    ours = cpu_matmul.Linear(300, 16)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(64, 300)
    assert isinstance(ours, nn.Linear)
    assert torch.allclose(ours(x), ref(x), atol=1e-5)


@pytest.mark.fast_path_only
@needs_onednn
@pytest.mark.parametrize("method", ["eg", "ig"])
def test_prior_gradients_equal_under_both_backends(monkeypatch, method):
    """The LinearPrefix EG and IG paths (with oneDNN: the input gradient times x - x' in
    one fused product): same attributions and parameter gradients either way."""
    monkeypatch.setattr(cpu_matmul, "MIN_MACS", 0)
    torch.manual_seed(0)
    enc = attreg.LinearPrefix(nn.Linear(40, 16), nn.Sequential(nn.Tanh(), nn.Linear(16, 3)))
    x = torch.randn(32, 40)
    gt = (torch.arange(40) < 10).float()
    out = {}
    for backend in ("torch", "onednn"):
        cpu_matmul.set_cpu_matmul(backend)
        enc.zero_grad()
        prior = attreg.AttributionPrior(
            enc,
            gt,
            method=method,
            reparameterizer="abs_minmax",
            generator=torch.Generator().manual_seed(1),
        )
        loss = prior(x)
        loss.backward()
        if backend == "onednn":  # (after the loss: this draws from the same generator)
            assert type(prior.attributions(x).grad_fn).__name__ == "_OneDNNLinearMulBackward"
        grads = [
            torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in enc.parameters()
        ]
        out[backend] = (loss.detach(), grads)
    cpu_matmul.set_cpu_matmul("auto")
    assert torch.allclose(out["torch"][0], out["onednn"][0], atol=1e-6)
    for a, b in zip(out["torch"][1], out["onednn"][1], strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_linear_traces_into_one_torch_compile_graph():
    # under torch.compile the oneDNN autograd Function would break the graph: the compiler
    # gets torch's own linear instead (fullgraph=True fails on any graph break)
    w = torch.randn(300, 700, requires_grad=True)
    x = torch.randn(64, 700)
    compiled = torch.compile(lambda x, w: cpu_matmul.linear(x, w), backend="eager", fullgraph=True)
    out = compiled(x, w)
    assert torch.allclose(out, x @ w.t(), atol=1e-4)
    out.sum().backward()
    assert torch.allclose(w.grad, x.sum(0).expand(300, -1), atol=1e-3)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: cpu_matmul.linear(torch.randn(4, 5), torch.randn(3, 6)), r"\(4, 5\).*\(3, 6\)"),
        (lambda: cpu_matmul.matmul(torch.randn(4, 5), torch.randn(6, 3)), r"5 != 6"),
        (
            lambda: cpu_matmul.linear(torch.randn(4, 5), torch.randn(3, 5), torch.randn(4)),
            "bias of shape",
        ),
        (
            lambda: cpu_matmul.linear_mul(torch.randn(4, 5), torch.randn(3, 6), torch.randn(4, 3)),
            "cannot be multiplied",
        ),
    ],
)
def test_shape_errors_name_the_shapes(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()
