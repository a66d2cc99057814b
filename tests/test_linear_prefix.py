"""The LinearPrefix fast path gives the generic path's attributions and gradients."""

import pytest
import torch
from torch import nn

from attreg import AttributionPrior, ExpectedGradients, IntegratedGradients, LinearPrefix
from attreg.attr import QUADRATURE_RULES

# every test here runs with the fast paths on and off (conftest.fast_paths_both_ways)
pytestmark = pytest.mark.usefixtures("fast_paths_both_ways")


class Rest(nn.Module):
    def __init__(self):
        super().__init__()
        self.cov = nn.Linear(2, 8, bias=False)
        self.body = nn.Sequential(nn.LayerNorm(8), nn.ELU(), nn.Linear(8, 3))

    def forward(self, h, c):
        return self.body(h + self.cov(c))


def make(seed=0):
    torch.manual_seed(seed)
    return LinearPrefix(nn.Linear(12, 8), Rest()).double()


def data(n=9):
    x = torch.rand(n, 12, dtype=torch.float64)
    c = nn.functional.one_hot(torch.arange(n) % 2, 2).double()
    return x, c


@pytest.mark.parametrize("refs", ["batch", "background"])
@pytest.mark.parametrize("k", [1, 3])
def test_eg_fast_equals_generic(refs, k):
    t = make()
    x, c = data()
    ref = "batch" if refs == "batch" else torch.rand(5, 12, dtype=torch.float64)
    out = []
    for fast in (True, False):
        eg = ExpectedGradients(t, use_linear_prefix=fast)
        g = torch.Generator().manual_seed(3)
        out.append(eg.attribute(x, ref, additional_forward_args=(c,), n_samples=k, generator=g))
    assert torch.allclose(out[0], out[1], atol=1e-12)


@pytest.mark.parametrize("rule", QUADRATURE_RULES)
@pytest.mark.parametrize("baseline", [None, "tensor"])
def test_ig_fast_equals_generic(rule, baseline):
    t = make()
    x, c = data()
    b = None if baseline is None else torch.rand(12, dtype=torch.float64)
    fast = IntegratedGradients(t).attribute(x, b, additional_forward_args=(c,), method=rule)
    slow = IntegratedGradients(t, use_linear_prefix=False).attribute(
        x, b, additional_forward_args=(c,), method=rule
    )
    assert torch.allclose(fast, slow, atol=1e-10)


@pytest.mark.parametrize("method", ["eg", "ig"])
def test_prior_parameter_gradients_equal_and_activations_reuse(method):
    x, c = data()
    grads = []
    for fast, reuse in ((False, False), (True, False), (True, True)):
        t = make()
        m = (ExpectedGradients if method == "eg" else IntegratedGradients)(
            t, differentiable=True, use_linear_prefix=fast
        )
        prior = AttributionPrior(
            t,
            torch.tensor([1.0] * 4 + [0.0] * 8),
            method=m,
            n_steps=6,
            generator=torch.Generator().manual_seed(0),
            reparameterizer="abs_minmax",
        )
        h = t.linear(x) if reuse else None
        prior(x, additional_forward_args=(c,), input_activations=h).backward()
        grads.append({n: p.grad.clone() for n, p in t.named_parameters() if p.grad is not None})
    for other in grads[1:]:
        assert other.keys() == grads[0].keys()
        for n in grads[0]:
            assert torch.allclose(other[n], grads[0][n], atol=1e-10), n
    assert grads[0]["linear.weight"].abs().sum() > 0


def test_bad_input_activations():
    t = make()
    x, c = data()
    with pytest.raises(ValueError, match="input_activations has shape"):
        ExpectedGradients(t).attribute(
            x, additional_forward_args=(c,), input_activations=torch.zeros(3, 8, dtype=x.dtype)
        )
    with pytest.raises(TypeError, match="nn.Linear"):
        LinearPrefix(nn.Identity(), nn.Identity())
