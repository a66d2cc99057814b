"""Count likelihoods and KL terms (pure torch).

The negative binomial is parameterized by its mean ``mu`` and inverse dispersion
``theta`` (``Var = mu + mu^2 / theta``), as in scVI; it equals
``torch.distributions.NegativeBinomial(total_count=theta, logits=log(mu) - log(theta))``
and ``scipy.stats.nbinom(n=theta, p=theta / (theta + mu))`` (both tested).

Examples
--------
>>> import torch
>>> x = torch.tensor([0., 3.]); mu = torch.tensor([1., 2.]); theta = torch.tensor([5., 5.])
>>> negative_binomial_log_prob(x, mu, theta).shape
torch.Size([2])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attreg_sc.special import log_gamma_ratio

__all__ = [
    "negative_binomial_log_prob",
    "zero_inflated_negative_binomial_log_prob",
    "kl_normal",
]


def negative_binomial_log_prob(
    x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Elementwise ``log NB(x; mu, theta)``, stable for small and large ``theta``.

    Parameters
    ----------
    x
        Counts.
    mu
        Means (> 0).
    theta
        Inverse dispersions (> 0), broadcastable to ``mu``.
    eps
        Added inside the logarithms.
    """
    log_theta_mu = torch.log(theta + mu + eps)
    return (
        theta * (torch.log(theta + eps) - log_theta_mu)
        + x * (torch.log(mu + eps) - log_theta_mu)
        # lgamma(x + theta) - lgamma(theta), with a fast, accurate CPU derivative
        + log_gamma_ratio(x, theta)
        - torch.lgamma(x + 1)
    )


def zero_inflated_negative_binomial_log_prob(
    x: torch.Tensor,
    mu: torch.Tensor,
    theta: torch.Tensor,
    zi_logits: torch.Tensor,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Elementwise ``log ZINB(x; mu, theta, pi)`` with ``pi = sigmoid(zi_logits)``.

    Parameters
    ----------
    x
        Counts.
    mu
        Means of the NB component (> 0).
    theta
        Inverse dispersions (> 0).
    zi_logits
        Logits of the zero-inflation probability ``pi``.
    eps
        Added inside the logarithms.
    """
    softplus_neg = F.softplus(-zi_logits)
    log_theta_mu = torch.log(theta + mu + eps)
    pow_theta = theta * (torch.log(theta + eps) - log_theta_mu)
    case_zero = F.softplus(pow_theta - zi_logits) - softplus_neg
    case_nonzero = -zi_logits - softplus_neg + negative_binomial_log_prob(x, mu, theta, eps)
    return torch.where(x < 1e-8, case_zero, case_nonzero)


def kl_normal(
    mean: torch.Tensor,
    var: torch.Tensor,
    prior_mean: torch.Tensor | float = 0.0,
    prior_var: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """``KL(N(mean, var) || N(prior_mean, prior_var))`` summed over the last dimension.

    Parameters
    ----------
    mean, var
        The posterior's mean and variance.
    prior_mean, prior_var
        The prior's mean and variance.
    """
    prior_mean = torch.as_tensor(prior_mean, dtype=mean.dtype, device=mean.device)
    prior_var = torch.as_tensor(prior_var, dtype=mean.dtype, device=mean.device)
    kl = 0.5 * (torch.log(prior_var / var) + (var + (mean - prior_mean) ** 2) / prior_var - 1.0)
    return kl.sum(dim=-1)
