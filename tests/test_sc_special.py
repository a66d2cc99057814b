"""attreg_sc.special: digamma / lgamma with a fast float32 CPU derivative."""

import hypothesis.extra.numpy as hnp
import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from attreg_sc.distributions import negative_binomial_log_prob
from attreg_sc.special import digamma, lgamma

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


def test_lgamma_values_gradient_and_second_derivative():
    y = (torch.rand(300) * 50 + 1e-3).requires_grad_()
    out = lgamma(y)
    assert torch.equal(out.detach(), torch.lgamma(y.detach()))
    (g,) = torch.autograd.grad(out.sum(), y, create_graph=True)
    ref = torch.digamma(y.detach().double())
    assert float(((g.detach().double() - ref).abs() / ref.abs().clamp_min(1)).max()) < 2e-6
    (h,) = torch.autograd.grad(g.sum(), y)  # trigamma, from the series' own derivative
    tri = torch.polygamma(1, y.detach().double())
    assert float(((h.double() - tri).abs() / tri).max()) < 1e-4


def test_lgamma_under_torch_func_transforms():
    y = torch.rand(20) * 10 + 0.1
    per_sample = torch.func.vmap(torch.func.grad(lgamma))(y)
    assert torch.allclose(per_sample, torch.digamma(y), rtol=2e-6)
    _, tangent = torch.func.jvp(lgamma, (y,), (torch.ones(20),))
    assert torch.allclose(tangent, torch.digamma(y), rtol=2e-6)


@given(
    x=hnp.arrays(np.int64, (4, 9), elements=st.integers(0, 2000)),
    log_theta=hnp.arrays(np.float32, 9, elements=st.floats(-6.0, 8.0, width=32)),
)
def test_nb_gradients_equal_torch_lgamma_composition(x, log_theta):
    counts = torch.from_numpy(x).float()
    mu = torch.rand(4, 9, generator=torch.Generator().manual_seed(0)) * 100 + 0.01
    lt = torch.from_numpy(log_theta).requires_grad_()
    m = mu.clone().requires_grad_()
    ours = negative_binomial_log_prob(counts, m, lt.exp()).sum()
    g_theta, g_mu = torch.autograd.grad(ours, (lt, m))
    # reference: the same formula with torch.lgamma (float64)
    lt64, m64 = lt.detach().double().requires_grad_(), mu.double().requires_grad_()
    theta64, x64, eps = lt64.exp(), counts.double(), 1e-8
    log_theta_mu = torch.log(theta64 + m64 + eps)
    ref = (
        theta64 * (torch.log(theta64 + eps) - log_theta_mu)
        + x64 * (torch.log(m64 + eps) - log_theta_mu)
        + torch.lgamma(x64 + theta64)
        - torch.lgamma(theta64)
        - torch.lgamma(x64 + 1)
    ).sum()
    r_theta, r_mu = torch.autograd.grad(ref, (lt64, m64))
    assert torch.allclose(ours.double(), ref, rtol=1e-5, atol=1e-2)
    scale = r_theta.abs().max().clamp_min(1.0)
    assert float((g_theta.double() - r_theta).abs().max() / scale) < 1e-4
    assert torch.allclose(g_mu.double(), r_mu, rtol=1e-4, atol=1e-5)
