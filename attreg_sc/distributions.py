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
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from attreg_sc.special import digamma_difference, log_gamma_ratio

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
    if _sparse_path(x, mu, theta):
        return _negative_binomial_log_prob_sparse(x, mu, theta, eps)
    return _negative_binomial_log_prob_dense(x, mu, theta, eps)


#: the zero-aware path pays off below this share of non-zero counts
_SPARSE_BELOW = 0.5


def _sparse_path(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor) -> bool:
    """Counts on the CPU, float32, one theta per gene (or per cell and gene), no graph to
    the counts: the zero-aware form applies (behind :mod:`attreg.fast_paths`)."""
    from attreg.fast_paths import fast_paths_enabled

    return (
        fast_paths_enabled()
        and x.device.type == "cpu"
        and x.dim() == 2
        and x.dtype == mu.dtype == theta.dtype == torch.float32
        and mu.shape == x.shape
        and theta.dim() <= 2
        and torch.broadcast_shapes(theta.shape, mu.shape) == mu.shape
        and not x.requires_grad
        and not torch._C._functorch.is_functorch_wrapped_tensor(x)
        and not torch._C._functorch.is_functorch_wrapped_tensor(mu)
        and not torch._C._functorch.is_functorch_wrapped_tensor(theta)
        and fwAD.unpack_dual(mu).tangent is None  # forward-mode AD: the composition
        and fwAD.unpack_dual(theta).tangent is None
    )


def _negative_binomial_log_prob_sparse(x, mu, theta, eps):
    """The same values, with the count terms computed on the non-zero counts only.

    At ``x = 0`` the terms ``x (log mu - log(theta + mu))``, ``lgamma(x + theta) -
    lgamma(theta)`` and ``lgamma(x + 1)`` are exactly 0, so only
    ``theta (log theta - log(theta + mu))`` is computed for every count; single-cell
    counts are mostly zeros (PBMC 3k: 91%), which spares three full-size logarithms and
    lgammas and their derivatives. The non-zero terms are added in place of the zeros, and
    the derivatives are written out (:class:`_NegativeBinomialLogProb`).
    """
    x = x.contiguous()  # flat indices (a minibatch's counts already are)
    with torch.no_grad():
        nonzero = (x != 0).view(-1).nonzero().squeeze(1)
    if nonzero.numel() > _SPARSE_BELOW * x.numel():
        return _negative_binomial_log_prob_dense(x, mu, theta, eps)  # dense data
    return _NegativeBinomialLogProb.apply(x, mu, theta, eps, nonzero)


def _negative_binomial_log_prob_dense(x, mu, theta, eps):
    """The reference composition (autograd derives it)."""
    log_theta_mu = torch.log(theta + mu + eps)
    return (
        theta * (torch.log(theta + eps) - log_theta_mu)
        + x * (torch.log(mu + eps) - log_theta_mu)
        # lgamma(x + theta) - lgamma(theta), with a fast, accurate CPU derivative
        + log_gamma_ratio(x, theta)
        - torch.lgamma(x + 1)
    )


class _NegativeBinomialLogProb(torch.autograd.Function):
    """``log NB(x; mu, theta)`` of mostly-zero counts, its gradients in closed form.

    Forward: ``theta (log(theta + eps) - L)`` on every entry, ``L = log(theta + mu + eps)``,
    plus ``x (log(mu + eps) - L) + lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)`` on
    the ``nonzero`` entries (flat indices). Backward, with ``c = (theta + x) / (theta + mu
    + eps)``: ``d/dmu = x / (mu + eps) - c`` and ``d/dtheta = log(theta + eps) + theta /
    (theta + eps) - L - c + psi(x + theta) - psi(theta)``, each computed in a few passes
    over the minibatch instead of autograd's derivative of every operation of the
    composition (``benchmarks/bench_special.py``). A backward with ``create_graph=True``
    differentiates the reference composition instead, so higher derivatives stay exact.
    """

    @staticmethod
    def forward(ctx, x, mu, theta, eps, nonzero):
        s = (theta + mu).add_(eps)
        log_s = torch.log(s)
        log_theta = torch.log(theta + eps)
        out = torch.sub(log_theta, log_s).mul_(theta)
        xv = x.view(-1).index_select(0, nonzero)
        mu_v = mu.reshape(-1).index_select(0, nonzero)
        if theta.numel() == theta.shape[-1] == out.shape[-1]:  # one theta per gene
            theta_v = theta.reshape(-1).index_select(0, nonzero % out.shape[-1])
        else:
            theta_v = theta.expand_as(out).reshape(-1).index_select(0, nonzero)
        values = (
            torch.log(mu_v + eps).sub_(log_s.view(-1).index_select(0, nonzero)).mul_(xv)
            + torch.lgamma(xv + theta_v)
            - torch.lgamma(theta_v)
            - torch.lgamma(xv + 1)
        )
        out.view(-1).index_add_(0, nonzero, values)
        ctx.save_for_backward(x, mu, theta, nonzero)
        ctx.eps = eps
        ctx.intermediates = (s, log_s, log_theta, xv, mu_v, theta_v)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, mu, theta, nonzero = ctx.saved_tensors
        eps = ctx.eps
        if torch.is_grad_enabled():  # create_graph=True: the reference composition
            need = ctx.needs_input_grad[1:3]
            with torch.enable_grad():
                value = _negative_binomial_log_prob_dense(x, mu, theta, eps)
                wrt = [t for t, n in zip((mu, theta), need, strict=True) if n]
                grads = list(torch.autograd.grad(value, wrt, grad, create_graph=True))
            grad_mu = grads.pop(0) if need[0] else None
            grad_theta = grads.pop(0) if need[1] else None
            return None, grad_mu, grad_theta, None, None
        s, log_s, log_theta, xv, mu_v, theta_v = ctx.intermediates
        grad = grad.contiguous()
        grad_v = grad.view(-1).index_select(0, nonzero)
        c = (theta + x).div_(s)  # (theta + x) / (theta + mu + eps)
        grad_mu = grad_theta = None
        if ctx.needs_input_grad[1]:
            grad_mu = torch.mul(grad, c).neg_()
            grad_mu.view(-1).index_add_(0, nonzero, grad_v * xv / (mu_v + eps))
            grad_mu = grad_mu.sum_to_size(mu.shape)
        if ctx.needs_input_grad[2]:
            full = (log_theta + theta / (theta + eps)).sub(log_s).sub_(c).mul_(grad)
            full.view(-1).index_add_(0, nonzero, grad_v * digamma_difference(xv, theta_v))
            grad_theta = full.sum_to_size(theta.shape)
        return None, grad_mu, grad_theta, None, None


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
