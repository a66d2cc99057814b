"""Property tests (hypothesis) for the building blocks that had only examples: EG's
closed form on linear models and its draws, LinearPrefix against the generic path on
random shapes, and a prior's parameter gradient against finite differences."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import attreg
from attreg.attr import ExpectedGradients, IntegratedGradients, LinearPrefix
from attreg.attr.expected_gradients import batch_reference_index

# every test here runs with the fast paths on and off (conftest.fast_paths_both_ways)
pytestmark = pytest.mark.usefixtures("fast_paths_both_ways")


@given(st.integers(1, 6), st.integers(1, 5), st.integers(1, 4), st.integers(0, 2**16))
@settings(max_examples=25)
def test_eg_on_a_linear_model_is_the_closed_form(n, d, k, seed):
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(d, 1).double()
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    ref = torch.randn(1, d, generator=g, dtype=torch.float64)
    attr = ExpectedGradients(model).attribute(x, references=ref, n_samples=k, generator=g)
    assert torch.allclose(attr, (x - ref) * model.weight, atol=1e-12)
    # completeness against the reference, for any alpha draws
    assert torch.allclose(attr.sum(1), (model(x) - model(ref)).squeeze(1), atol=1e-10)


@given(st.integers(2, 40), st.integers(1, 8), st.integers(0, 2**16))
def test_batch_references_are_never_the_sample_itself(n, k, seed):
    idx = batch_reference_index(n, k, torch.Generator().manual_seed(seed), torch.device("cpu"))
    assert idx.shape == (k, n)
    assert bool((idx != torch.arange(n)).all())
    assert int(idx.min()) >= 0 and int(idx.max()) < n


@given(st.integers(2, 8), st.integers(0, 2**16))
@settings(max_examples=20)
def test_same_generator_state_same_attributions(n, seed):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    x = torch.randn(n, 4)
    eg = ExpectedGradients(model)
    a = eg.attribute(x, n_samples=3, generator=torch.Generator().manual_seed(seed))
    b = eg.attribute(x, n_samples=3, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(a, b)


@given(
    st.integers(2, 7),
    st.integers(1, 9),
    st.integers(1, 6),
    st.integers(1, 3),
    st.integers(0, 2**16),
    st.sampled_from(["eg", "ig"]),
)
@settings(max_examples=30)
def test_linear_prefix_equals_the_generic_path(n, d, h, k, seed, method):
    torch.manual_seed(seed)
    target = LinearPrefix(
        nn.Linear(d, h).double(), nn.Sequential(nn.Softplus(), nn.Linear(h, 2)).double()
    )
    x = torch.randn(n, d, dtype=torch.float64)
    out = {}
    for prefix in (True, False):
        if method == "eg":
            m = ExpectedGradients(target, use_linear_prefix=prefix)
            out[prefix] = m.attribute(x, n_samples=k, generator=torch.Generator().manual_seed(seed))
        else:
            m = IntegratedGradients(target, use_linear_prefix=prefix)
            out[prefix] = m.attribute(x, n_steps=k + 2)
    assert torch.allclose(out[True], out[False], atol=1e-10)


@given(st.integers(0, 2**16), st.sampled_from(["share", "abs_minmax", "sigmoid"]))
@settings(max_examples=10)
def test_prior_parameter_gradient_matches_finite_differences(seed, reparameterizer):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    x = torch.randn(6, 5, dtype=torch.float64)
    gt = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])
    loss = "outside_share" if reparameterizer == "share" else "mse"
    prior = attreg.AttributionPrior(
        model, gt, method="ig", n_steps=8, reparameterizer=reparameterizer, loss=loss
    )
    w = model[0].weight
    (grad,) = torch.autograd.grad(prior(x), w)
    eps = 1e-6
    for i, j in [(0, 0), (1, 3), (3, 4)]:
        with torch.no_grad():
            w[i, j] += eps
        up = float(prior(x).detach())
        with torch.no_grad():
            w[i, j] -= 2 * eps
        down = float(prior(x).detach())
        with torch.no_grad():
            w[i, j] += eps
        fd = (up - down) / (2 * eps)
        assert float(grad[i, j]) == pytest.approx(fd, rel=1e-4, abs=1e-7)
