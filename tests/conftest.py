import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", deadline=None, max_examples=30, derandomize=True)
settings.register_profile("dev", deadline=None, max_examples=30)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

torch.set_num_threads(min(2, torch.get_num_threads()))


def make_mlp(n_in: int, n_hidden: int = 8, n_out: int = 1, seed: int = 0, act=torch.nn.Tanh):
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(n_in, n_hidden), act(), torch.nn.Linear(n_hidden, n_out)
    ).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.7)
    return model


def nb_log_prob_reference(x, mu, theta, eps=1e-8):
    """``log NB(x; mu, theta)`` as the plain composition with ``torch.lgamma`` (the
    oracle of attreg_sc's fast forms; autograd derives it)."""
    log_theta_mu = torch.log(theta + mu + eps)
    return (
        theta * (torch.log(theta + eps) - log_theta_mu)
        + x * (torch.log(mu + eps) - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1)
    )


@pytest.fixture
def mlp():
    return make_mlp(5, 8, 2)


@pytest.fixture(params=[True, False], ids=["fast", "reference"])
def fast_paths_both_ways(request):
    """Run a numerical test with attreg's fast paths on and off (``attreg.fast_paths``):
    the reference math is always tested, and so are its accelerations."""
    import attreg

    if not request.param and request.node.get_closest_marker("fast_path_only"):
        pytest.skip("checks a fast path itself (its use or its extra accuracy)")
    with attreg.fast_paths(request.param):
        yield request.param
