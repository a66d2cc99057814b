"""attreg_sc.special: digamma and the NB's lgamma ratio with fast float32 CPU derivatives."""

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from attreg_sc.distributions import negative_binomial_log_prob
from attreg_sc.special import digamma, digamma_difference, log_gamma_ratio
from tests.conftest import nb_log_prob_reference

# every test here runs with the fast paths on and off (conftest.fast_paths_both_ways)
pytestmark = pytest.mark.usefixtures("fast_paths_both_ways")

# the NB's domain: x + theta with theta > 0, from tiny dispersions to huge counts
positive = st.floats(
    float(np.float32(1e-6)),
    float(np.float32(1e12)),
    allow_nan=False,
    allow_infinity=False,
    width=32,
)


def _relative_error(ours: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    ref = torch.digamma(y.double())
    return (ours.double() - ref).abs() / ref.abs().clamp_min(1.0)


@given(y=hnp.arrays(np.float32, hnp.array_shapes(max_dims=2, max_side=40), elements=positive))
def test_digamma_matches_float64_reference(y):
    t = torch.from_numpy(y)
    # float32 torch.digamma's own error is about 1e-6; ours must be as accurate
    assert float(_relative_error(digamma(t), t).max()) < 2e-6


def test_digamma_on_a_dense_grid_and_fallbacks():
    y = torch.logspace(-6, 12, 200_001, dtype=torch.float32)
    assert float(_relative_error(digamma(y), y).max()) < 2e-6
    # known values: psi(1) = -Euler-Mascheroni, psi(1/2) = -gamma - 2 ln 2
    gamma = 0.5772156649015329
    got = digamma(torch.tensor([1.0, 0.5]))
    assert torch.allclose(got.double(), torch.tensor([-gamma, -gamma - 2 * np.log(2)]).double())
    # float64 (needs more series terms) falls back to torch.digamma, bit for bit
    y64 = torch.rand(50, dtype=torch.float64) * 20 + 1e-3
    assert torch.equal(digamma(y64), torch.digamma(y64))


def test_log_gamma_ratio_values_gradients_and_second_derivatives():
    g = torch.Generator().manual_seed(0)
    x = torch.poisson(torch.rand(30, 8, generator=g) * 5, generator=g).requires_grad_()
    theta = (torch.rand(8, generator=g) * 50 + 1e-2).requires_grad_()
    out = log_gamma_ratio(x, theta)
    x64, t64 = x.detach().double(), theta.detach().double()
    assert torch.equal(
        out.detach(), torch.lgamma(x + theta).detach() - torch.lgamma(theta).detach()
    )
    ref_x = torch.digamma(x64 + t64)
    ref_t = (torch.digamma(x64 + t64) - torch.digamma(t64)).sum(0)
    # first derivatives (the fast functions), then with create_graph=True (torch.digamma)
    for create_graph in (False, True):
        g_x, g_t = torch.autograd.grad(out.sum(), (x, theta), create_graph=create_graph)
        assert torch.allclose(g_x.detach().double(), ref_x, rtol=2e-6, atol=1e-6)
        assert torch.allclose(g_t.detach().double(), ref_t, rtol=1e-5, atol=1e-5)
        out = log_gamma_ratio(x, theta)
    # create_graph=True: second derivatives through torch.digamma (trigamma)
    (h_t,) = torch.autograd.grad(g_t.sum(), theta)
    tri = (torch.polygamma(1, x64 + t64) - torch.polygamma(1, t64)).sum(0)
    assert torch.allclose(h_t.double(), tri, rtol=1e-4, atol=1e-5)


@pytest.mark.fast_path_only
@given(
    x=hnp.arrays(np.float32, 12, elements=st.integers(0, 3000).map(float)),
    theta=hnp.arrays(np.float32, 12, elements=st.floats(float(np.float32(1e-4)), 1e7, width=32)),
)
def test_digamma_difference_keeps_relative_accuracy(x, theta):
    xt, tt = torch.from_numpy(x), torch.from_numpy(theta)
    ref = torch.digamma(xt.double() + tt.double()) - torch.digamma(tt.double())
    ours = digamma_difference(xt, tt).double()
    # relative to the difference itself (psi(x + theta) - psi(theta) ~ x / theta when
    # theta is large), not to the digammas: subtracting two float32 digammas fails this
    assert bool(((ours - ref).abs() <= 1e-5 * ref.abs() + 1e-7).all())
    assert bool((ours[xt == 0] == 0).all())


@pytest.mark.fast_path_only
def test_log_gamma_ratio_under_torch_func_transforms():
    x, theta = torch.tensor([0.0, 1.0, 4.0, 30.0]), torch.tensor([0.5, 2.0, 9.0, 300.0])
    per_sample = torch.func.vmap(torch.func.grad(log_gamma_ratio, argnums=1))(x, theta)
    ref = torch.digamma(x + theta) - torch.digamma(theta)
    assert torch.allclose(per_sample, ref, rtol=1e-5, atol=1e-6)
    _, tangent = torch.func.jvp(lambda t: log_gamma_ratio(x, t), (theta,), (torch.ones(4),))
    assert torch.allclose(tangent, ref, rtol=1e-5, atol=1e-6)
    # forward-mode AD on a tensor that also requires grad goes through the Function's jvp
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        dual = fwAD.make_dual(theta.clone().requires_grad_(), torch.ones(4))
        out = log_gamma_ratio(x, dual)
        assert type(out.grad_fn).__name__ == "_LogGammaRatioBackward"
        assert torch.allclose(fwAD.unpack_dual(out).tangent.detach(), ref, rtol=1e-5, atol=1e-6)


def _nb_gradients(nb, counts, mu, log_theta, dtype):
    lt = log_theta.to(dtype).requires_grad_()
    m = mu.to(dtype).requires_grad_()
    value = nb(counts.to(dtype), m, lt.exp()).sum()
    return (value.double(), *(g.double() for g in torch.autograd.grad(value, (lt, m))))


EPS32 = float(np.finfo(np.float32).eps)


@given(
    x=hnp.arrays(np.int64, (4, 9), elements=st.integers(0, 2000)),
    log_theta=hnp.arrays(np.float32, 9, elements=st.floats(-6.0, 8.0, width=32)),
)
def test_nb_value_and_gradients_within_float32_rounding(x, log_theta):
    counts, lt = torch.from_numpy(x).float(), torch.from_numpy(log_theta)
    mu = torch.rand(4, 9, generator=torch.Generator().manual_seed(0)) * 100 + 0.01
    ours = _nb_gradients(negative_binomial_log_prob, counts, mu, lt, torch.float32)
    exact = _nb_gradients(nb_log_prob_reference, counts, mu, lt, torch.float64)
    # forward-error bounds of float32 evaluation: a few roundings of each term's size
    # (the theta gradient is taken through log theta, so its terms carry a factor theta;
    # at large theta they cancel to a small gradient and only the bound is meaningful)
    x64, mu64, theta = counts.double(), mu.double(), lt.double().exp()
    log_tm = torch.log(theta + mu64).abs()
    value_terms = (
        theta * (theta.log().abs() + log_tm)
        + x64 * (mu64.log().abs() + log_tm)
        + torch.lgamma(x64 + theta).abs()
        + torch.lgamma(theta).abs()
        + torch.lgamma(x64 + 1)
    )
    theta_terms = theta * (
        theta.log().abs()
        + log_tm
        + 1
        + (theta + x64) / (theta + mu64)
        + torch.digamma(x64 + theta).abs()
        + torch.digamma(theta).abs()
    )
    value, g_theta, g_mu = ours
    assert float((value - exact[0]).abs()) <= 8 * EPS32 * float(value_terms.sum()) + 1e-6
    assert bool(((g_theta - exact[1]).abs() <= 8 * EPS32 * theta_terms.sum(0) + 1e-6).all())
    mu_terms = x64 / mu64 + (x64 + theta) / (theta + mu64)
    assert bool(((g_mu - exact[2]).abs() <= 8 * EPS32 * mu_terms + 1e-7).all())
