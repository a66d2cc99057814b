r"""The input gradient of a LayerNorm -> ReLU -> Dropout -> Linear block in closed form.

An attribution prior on the encoder differentiates ``F = w . mean(h)`` with respect to
the first layer's output ``h`` and then differentiates that gradient again (to train).
With autograd this is the block's forward, its backward, and the backward of the
backward: about 40 small operations and a dozen graph nodes per step, LayerNorm's double
backward alone the largest of them. For one block the gradient is short: with
:math:`\hat h = (h - \mu) r` (:math:`r` the reciprocal standard deviation of the row),
the gate :math:`q = 1[\gamma \hat h + \beta > 0]\,d` (ReLU times the scaled dropout mask
:math:`d`) and :math:`c = w^\top W` (the output layer folded with the reducer),

.. math:: u = q\,c\,\gamma,\qquad
          \frac{\partial F}{\partial h} = r\,\bigl(u - \bar u - \hat h\,\overline{u \hat h}\bigr)

(bars: means over the row), and its vector-Jacobian products with respect to ``h``,
``gamma`` and ``c`` are a dozen row operations more (``beta`` and the bias only move the
gate, so their gradient is zero, as autograd finds). :class:`NormReLUInputGradient` is
that pair as one autograd Function: the same values and parameter gradients as autograd
(tested to second order), at a fraction of the operations.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

__all__ = ["NormReLUInputGradient", "norm_relu_input_gradient"]


def _row_mean(t: torch.Tensor) -> torch.Tensor:
    return t.mean(dim=-1, keepdim=True)


class NormReLUInputGradient(torch.autograd.Function):
    """``dF/dh`` of ``F = c . (relu(layer_norm(h) * gamma + beta) * drop)`` per row.

    Inputs: ``h`` ``(n, H)``, ``gamma``, ``beta``, ``c`` ``(H,)`` or one per row
    ``(n, H)``, ``drop`` ``(n, H)`` (the scaled dropout mask, or ``None``) and the
    LayerNorm ``eps``. Differentiable once (its
    backward is hand-written): enough to train on a loss of the gradient.
    """

    @staticmethod
    def forward(ctx, h, gamma, beta, c, drop, eps):
        xhat, _, rstd = torch.native_layer_norm(h, (h.shape[-1],), None, None, eps)
        gate = torch.addcmul(beta, xhat, gamma) > 0
        gate = gate.to(h.dtype) if drop is None else drop * gate
        u = gate * (c * gamma)
        u_mean = _row_mean(u)
        m = _row_mean(u * xhat)
        u_centered = u.sub_(u_mean)
        grad = (xhat * m).neg_().add_(u_centered).mul_(rstd)  # r (u - mean u - xhat m)
        ctx.save_for_backward(xhat, rstd, gate, u_centered, m, grad, gamma, c)
        return grad

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        xhat, rstd, gate, u_centered, m, grad, gamma, c = ctx.saved_tensors
        g_mean = _row_mean(grad_out)
        g_xhat = _row_mean(grad_out * xhat)
        d_h = d_gamma = d_c = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]:
            # dL/du = r (G - mean G - xhat mean(G xhat)); u = gate * c * gamma
            d_u = (grad_out - g_mean).sub_(xhat * g_xhat).mul_(rstd)
            d_ug = d_u.mul_(gate)
            if c.ndim == 1:  # one c for every row
                d_cg = d_ug.sum(dim=0)
                d_gamma = d_cg * c if ctx.needs_input_grad[1] else None
                d_c = d_cg * gamma if ctx.needs_input_grad[3] else None
            else:  # a c per row (one output direction per row)
                d_gamma = (d_ug * c).sum(dim=0) if ctx.needs_input_grad[1] else None
                d_c = d_ug * gamma if ctx.needs_input_grad[3] else None
        if ctx.needs_input_grad[0]:
            # dL/dh = -r [xhat (mean(G g) - 2 r m mean(G xhat))
            #             + r (m (G - mean G) + mean(G xhat) (u - mean u))]
            coef = _row_mean(grad_out * grad).sub_(2 * rstd * m * g_xhat)
            d_h = (grad_out - g_mean).mul_(m).addcmul_(u_centered, g_xhat).mul_(rstd)
            d_h = d_h.addcmul_(xhat, coef).mul_(-rstd)
        return d_h, d_gamma, None, d_c, None, None


def norm_relu_input_gradient(
    h: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    c: torch.Tensor,
    drop: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """``dF/dh`` for ``F = c . (relu(layer_norm(h) * gamma + beta) * drop)``, row by row.

    Parameters
    ----------
    h
        ``(n, H)`` pre-normalization activations.
    gamma, beta
        The LayerNorm's affine parameters ``(H,)``.
    c
        ``(H,)``: the output layer folded with the reducer's weights, ``w @ W``; or
        ``(n, H)``, one per row (a reducer with a direction per row).
    drop
        The dropout mask scaled by ``1 / (1 - p)`` (``(n, H)``), or ``None``.
    eps
        The LayerNorm's epsilon.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> h = torch.randn(4, 8, requires_grad=True)
    >>> norm, c = torch.nn.LayerNorm(8), torch.randn(8)
    >>> (auto,) = torch.autograd.grad((torch.relu(norm(h)) @ c).sum(), h)
    >>> closed = norm_relu_input_gradient(h, norm.weight, norm.bias, c, eps=norm.eps)
    >>> torch.allclose(auto, closed, atol=1e-6)
    True
    """
    return NormReLUInputGradient.apply(h, gamma, beta.detach(), c, drop, eps)
