import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given
from hypothesis import strategies as st

from attreg_sc.distributions import (
    kl_normal,
    negative_binomial_log_prob,
    zero_inflated_negative_binomial_log_prob,
)

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
