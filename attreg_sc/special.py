"""``lgamma(x + theta) - lgamma(theta)`` with a fast, accurate CPU derivative.

The negative-binomial log-likelihood contains ``lgamma(x + theta) - lgamma(theta)``; its
gradient with respect to the inverse dispersion ``theta`` is
``digamma(x + theta) - digamma(theta)`` on every entry of the minibatch. PyTorch's CPU
``torch.digamma`` is a scalar loop (it shifts its argument up to 10 one step at a time):
on a ``128 x 3346`` float32 minibatch it takes about 3 ms on 2 cores, 4x
``torch.lgamma`` and a quarter of a whole plain scARE training step
(``benchmarks/bench_special.py``). :func:`digamma` computes the same function with a few
whole-tensor operations,

.. math:: \\psi(y) = \\psi(y + 3) - \\frac1y - \\frac1{y + 1} - \\frac1{y + 2},\\qquad
          \\psi(z) \\approx \\ln z - \\frac1{2z} - \\sum_{n=1}^{5}
          \\frac{B_{2n}}{2n\\,z^{2n}}\\quad (z \\ge 3),

whose series truncation error is below ``5e-8`` relative at ``z >= 3``, under float32's
rounding: measured maximum relative error against float64 ``torch.digamma`` below
``1e-6`` on ``y`` from ``1e-6`` to ``1e12`` (tested), as for float32 ``torch.digamma``.

:func:`digamma_difference` computes ``psi(x + theta) - psi(theta)`` with the two
logarithms merged into ``log1p(x / (theta + 3))``, so that the difference keeps its
relative accuracy when ``theta`` is large (the two digammas agree in all but their last
digits there, and subtracting float32 values would leave rounding noise that the chain
rule through ``log theta`` multiplies by ``theta``). It is exactly 0 where ``x = 0``.
:func:`log_gamma_ratio` is ``lgamma(x + theta) - lgamma(theta)`` (the same values as
the two ``torch.lgamma`` calls) with that derivative.

The fast paths serve float32 CPU tensors and first derivatives. Other dtypes (float64
needs more series terms), devices (CUDA's digamma is fast), ``create_graph=True``
backward passes and forward-mode derivatives use ``torch.digamma``, so everything stays
differentiable to any order. The domain is ``y > 0`` (``x >= 0`` counts, ``theta > 0``).

Examples
--------
>>> import torch
>>> y = torch.tensor([0.5, 3.0, 250.0])
>>> torch.allclose(digamma(y), torch.digamma(y), rtol=1e-6)
True
>>> x, theta = torch.tensor([0.0, 2.0, 7.0]), torch.tensor([0.3, 5.0, 800.0])
>>> theta = theta.requires_grad_(True)
>>> log_gamma_ratio(x, theta).sum().backward()
>>> bool(theta.grad[0] == 0)  # psi(0 + theta) - psi(theta)
True
"""

from __future__ import annotations

import torch

from attreg.fast_paths import fast_paths_enabled

__all__ = ["digamma", "digamma_difference", "log_gamma_ratio"]

# -B_2n / (2n) for n = 1..5: the asymptotic series of digamma in 1 / z^2; the first
# omitted term is 691 / (32760 z^12) < 5e-8 relative at z >= 3
_SERIES = (-1 / 12, 1 / 120, -1 / 252, 1 / 240, -1 / 132)
_SHIFT = 3.0


def _fast_path(*tensors: torch.Tensor) -> bool:
    return fast_paths_enabled() and all(
        t.device.type == "cpu"
        and t.dtype == torch.float32
        and t.layout == torch.strided
        and not torch._C._functorch.is_functorch_wrapped_tensor(t)
        for t in tensors
    )


@torch.no_grad()
def _digamma_without_log(y: torch.Tensor) -> torch.Tensor:
    """``psi(y) - ln(y + 3)`` for float32 ``y > 0``, in three buffers (no autograd)."""
    out = y + _SHIFT
    r = out.reciprocal_()
    r2 = r * r
    out = torch.mul(r2, _SERIES[-1]).add_(_SERIES[-2])
    for c in reversed(_SERIES[:-2]):
        out.mul_(r2).add_(c)
    out.mul_(r2).sub_(r, alpha=0.5)  # psi(y + 3) - ln(y + 3)
    for k in (0.0, 1.0, 2.0):
        torch.add(y, k, out=r).reciprocal_()
        out.sub_(r)
    return out


def digamma(y: torch.Tensor) -> torch.Tensor:
    """``torch.digamma(y)`` for ``y > 0``; fast for float32 CPU tensors (see the module).

    Differentiable: a tensor that requires grad (with grad mode on) gets
    ``torch.digamma``.
    """
    if not _fast_path(y) or (y.requires_grad and torch.is_grad_enabled()):
        return torch.digamma(y)
    return _digamma_without_log(y).add_(torch.log(y + _SHIFT))


def digamma_difference(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``digamma(x + theta) - digamma(theta)``, accurate for large ``theta``; 0 at ``x = 0``.

    ``x >= 0`` and ``theta > 0`` broadcast against each other (e.g. counts ``(n, genes)``
    and one ``theta`` per gene, whose digamma is then computed once per gene).
    """
    if not _fast_path(x, theta) or (
        torch.is_grad_enabled() and (x.requires_grad or theta.requires_grad)
    ):
        return torch.digamma(x + theta) - torch.digamma(theta)
    # no graph is recorded here: nothing requires grad, or grad mode is off
    out = _digamma_without_log(x + theta).sub_(_digamma_without_log(theta))
    return out.add_(torch.div(x, theta + _SHIFT).log1p_())


class _LogGammaRatio(torch.autograd.Function):
    """``lgamma(x + theta) - lgamma(theta)``; first derivatives by the fast functions."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return torch.lgamma(x + theta) - torch.lgamma(theta)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, theta = ctx.saved_tensors
        # with create_graph=True grad mode is on here: torch's digamma keeps the result
        # differentiable (the fast functions fall back to it by themselves)
        grad_x = grad_theta = None
        if ctx.needs_input_grad[1]:
            grad_theta = (grad * digamma_difference(x, theta)).sum_to_size(theta.shape)
        if ctx.needs_input_grad[0]:
            grad_x = (grad * digamma(x + theta)).sum_to_size(x.shape)
        return grad_x, grad_theta

    @staticmethod
    def jvp(ctx, x_tangent: torch.Tensor | None, theta_tangent: torch.Tensor | None):
        x, theta = ctx.saved_tensors
        psi_sum = torch.digamma(x + theta)
        out = torch.zeros_like(psi_sum)
        if x_tangent is not None:
            out = out + x_tangent * psi_sum
        if theta_tangent is not None:
            out = out + theta_tangent * (psi_sum - torch.digamma(theta))
        return out


def log_gamma_ratio(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``lgamma(x + theta) - lgamma(theta)`` (the same values as ``torch.lgamma``) whose
    derivatives use :func:`digamma_difference` / :func:`digamma`; ``x >= 0``, ``theta > 0``.
    """
    if not _fast_path(x, theta) or not (x.requires_grad or theta.requires_grad):
        return torch.lgamma(x + theta) - torch.lgamma(theta)
    return _LogGammaRatio.apply(x, theta)
