import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given
from hypothesis import strategies as st

import attreg
from attreg_sc.distributions import (
    kl_normal,
    negative_binomial_log_prob,
    zero_inflated_negative_binomial_log_prob,
)
from tests.conftest import nb_log_prob_reference

# every test here runs with the fast paths on and off (conftest.fast_paths_both_ways)
pytestmark = pytest.mark.usefixtures("fast_paths_both_ways")

counts = hnp.arrays(np.int64, 6, elements=st.integers(0, 500))
pos = hnp.arrays(np.float64, 6, elements=st.floats(1e-2, 1e3))


@given(x=counts, mu=pos, theta=pos)
def test_nb_equals_scipy_nbinom(x, mu, theta):
    ours = negative_binomial_log_prob(
        torch.from_numpy(x).double(), torch.from_numpy(mu), torch.from_numpy(theta), eps=0.0
    )
    ref = scipy.stats.nbinom.logpmf(x, theta, theta / (theta + mu))
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-6, atol=1e-6)


def test_nb_equals_torch_distribution():
    x = torch.tensor([0.0, 1, 5, 40])
    mu = torch.tensor([0.5, 2.0, 5.0, 30.0])
    theta = torch.tensor([0.3, 4.0, 10.0, 100.0])
    d = torch.distributions.NegativeBinomial(total_count=theta, logits=mu.log() - theta.log())
    assert torch.allclose(
        negative_binomial_log_prob(x, mu, theta, eps=0.0), d.log_prob(x), atol=1e-5
    )


@given(x=counts, mu=pos, theta=pos, pi=st.floats(0.01, 0.99))
def test_zinb_equals_mixture(x, mu, theta, pi):
    logits = torch.full((6,), float(np.log(pi / (1 - pi))), dtype=torch.float64)
    ours = zero_inflated_negative_binomial_log_prob(
        torch.from_numpy(x).double(), torch.from_numpy(mu), torch.from_numpy(theta), logits, eps=0.0
    )
    log_nb = scipy.stats.nbinom.logpmf(x, theta, theta / (theta + mu))
    ref = np.where(x == 0, np.logaddexp(np.log(pi), np.log1p(-pi) + log_nb), np.log1p(-pi) + log_nb)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-5, atol=1e-5)


def test_kl_matches_torch_distributions():
    m, v = torch.randn(4, 3), torch.rand(4, 3) + 0.1
    pm, pv = torch.randn(4, 3), torch.rand(4, 3) + 0.1
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(m, v.sqrt()), torch.distributions.Normal(pm, pv.sqrt())
    ).sum(-1)
    assert torch.allclose(kl_normal(m, v, pm, pv), ref, atol=1e-5)
    std = torch.distributions.kl_divergence(
        torch.distributions.Normal(m, v.sqrt()), torch.distributions.Normal(0.0, 1.0)
    ).sum(-1)
    assert torch.allclose(kl_normal(m, v), std, atol=1e-5)
    assert float(kl_normal(torch.zeros(1, 3), torch.ones(1, 3)).abs().max()) < 1e-7


@pytest.mark.parametrize("theta", [1e-3, 1e6])
def test_nb_is_finite_at_extreme_dispersion(theta):
    x = torch.tensor([0.0, 3.0, 1000.0])
    lp = negative_binomial_log_prob(x, torch.tensor([1.0, 3.0, 900.0]), torch.full((3,), theta))
    assert torch.isfinite(lp).all()


def _sparse_counts(shape, seed=0):
    """Counts with about 90% zeros, as single-cell minibatches have."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(shape, generator=g) < 0.1
    return torch.poisson(torch.rand(shape, generator=g) * 20, generator=g).mul_(keep)


# per gene, per gene with a cell axis, per cell and gene, per cell (as many cells as genes,
# so that a per-cell theta has as many entries as a per-gene one)
@pytest.mark.parametrize("theta_shape", [(50,), (1, 50), (50, 50), (50, 1)])
def test_nb_of_sparse_counts_value_and_gradients_match_the_composition(theta_shape):
    x = _sparse_counts((50, 50))
    g = torch.Generator().manual_seed(1)
    mu = (torch.rand(50, 50, generator=g) * 30 + 0.01).requires_grad_()
    theta = (torch.rand(theta_shape, generator=g) * 10 + 0.05).requires_grad_()
    weight = torch.rand(50, 50, generator=g)  # a non-uniform upstream gradient
    out = negative_binomial_log_prob(x, mu, theta)
    if attreg.fast_paths_enabled():  # the closed-form Function runs on these counts
        assert type(out.grad_fn).__name__ == "_NegativeBinomialLogProbBackward"
    g_mu, g_theta = torch.autograd.grad((out * weight).sum(), (mu, theta))
    m64, t64 = mu.detach().double().requires_grad_(), theta.detach().double().requires_grad_()
    ref = nb_log_prob_reference(x.double(), m64, t64)
    r_mu, r_theta = torch.autograd.grad((ref * weight.double()).sum(), (m64, t64))
    torch.testing.assert_close(out.detach().double(), ref.detach(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(g_mu.double(), r_mu, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g_theta.double(), r_theta, rtol=1e-4, atol=1e-4)


def test_nb_of_sparse_counts_second_derivatives_are_exact():
    x = _sparse_counts((8, 30), seed=2)
    g = torch.Generator().manual_seed(3)
    mu = (torch.rand(8, 30, generator=g) * 10 + 0.1).requires_grad_()
    theta = (torch.rand(1, 30, generator=g) * 5 + 0.1).requires_grad_()

    def second(fn, m, t):
        (gm,) = torch.autograd.grad(fn(x.to(m.dtype), m, t).sum(), (m,), create_graph=True)
        return torch.autograd.grad((gm**2).sum(), (m, t))

    ours = second(negative_binomial_log_prob, mu, theta)
    ref = second(
        nb_log_prob_reference, mu.detach().double().requires_grad_(),
        theta.detach().double().requires_grad_(),
    )  # fmt: skip
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)


def test_nb_of_sparse_counts_under_forward_mode_and_torch_func():
    import torch.autograd.forward_ad as fwAD

    x = _sparse_counts((6, 40), seed=4)
    mu = torch.rand(6, 40) * 5 + 0.1
    theta = torch.rand(40) * 3 + 0.2
    tangent = torch.randn(6, 40)
    ref = torch.func.jvp(lambda m: nb_log_prob_reference(x, m, theta), (mu,), (tangent,))[1]
    with fwAD.dual_level():
        out = negative_binomial_log_prob(x, fwAD.make_dual(mu, tangent), theta)
        torch.testing.assert_close(fwAD.unpack_dual(out).tangent, ref, rtol=1e-4, atol=1e-4)
    ours = torch.func.grad(lambda m: negative_binomial_log_prob(x, m, theta).sum())(mu)
    exact = torch.func.grad(lambda m: nb_log_prob_reference(x, m, theta).sum())(mu)
    torch.testing.assert_close(ours, exact, rtol=1e-5, atol=1e-5)


def test_nb_of_non_contiguous_counts_equals_contiguous():
    x = _sparse_counts((30, 12), seed=5).T  # a transposed view
    mu, theta = torch.rand(12, 30) * 4 + 0.1, torch.rand(30) + 0.5
    torch.testing.assert_close(
        negative_binomial_log_prob(x, mu, theta),
        negative_binomial_log_prob(x.contiguous(), mu, theta),
    )
