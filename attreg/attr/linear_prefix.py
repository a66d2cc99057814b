"""Targets that begin with a linear layer: path attributions in the hidden space.

Most models whose attributions we regularize begin with ``nn.Linear`` on the input
(an MLP encoder on genes, a tabular classifier). For such a target
``F(x) = rest(W x + b)``, every point of a straight path is mapped linearly:

.. math:: W (x' + \\alpha (x - x')) + b = h' + \\alpha (h - h'),\\quad h = W x + b,

and the input gradient is ``dF/dx = (dF/dh) W``. So EG and IG can interpolate the
(small) hidden activations instead of the (wide) inputs, push only the hidden points
through ``rest``, and map the gradient back with one matrix product — exactly the same
attributions (tested against the generic path) at a fraction of the cost:

* EG (k = 1, references from the minibatch): no first-layer forward at all when the
  caller passes the activations ``h`` of its own forward pass (``input_activations=``),
  because ``h' = h[perm]``; the gradient through ``h`` then merges with the task loss's.
* IG (m steps): one product ``(sum_s w_s g_s) W`` instead of ``m`` first-layer passes.

Wrap a target as ``LinearPrefix(linear, rest)``; it is an ``nn.Module`` whose forward is
``rest(linear(x), *args)``, so every method also works on it generically.

Examples
--------
>>> import torch
>>> from torch import nn
>>> import attreg
>>> lin, rest = nn.Linear(50, 8), nn.Sequential(nn.Tanh(), nn.Linear(8, 1))
>>> target = LinearPrefix(lin, rest)
>>> x = torch.randn(16, 50)
>>> fast = attreg.IntegratedGradients(target).attribute(x, n_steps=8)
>>> slow = attreg.IntegratedGradients(target, use_linear_prefix=False).attribute(x, n_steps=8)
>>> torch.allclose(fast, slow, atol=1e-5)
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from attreg import cpu_matmul

__all__ = ["LinearPrefix"]


class LinearPrefix(nn.Module):
    """``rest(linear(x), *args)``: a target split after its linear input layer.

    Parameters
    ----------
    linear
        The first layer, applied to the input (``nn.Linear``).
    rest
        Everything after it: ``rest(h, *additional_forward_args) -> output``.
    """

    def __init__(self, linear: nn.Linear, rest: Callable[..., Any]) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}.")
        self.linear = linear
        self.rest = rest

    def forward(self, x: torch.Tensor, *args: Any) -> Any:
        return self.rest(self.linear(x), *args)

    def check_activations(self, activations: torch.Tensor | None, n: int) -> None:
        """Raise unless ``activations`` (a caller's ``linear(inputs)``) is ``(n, out)``;
        checked on every path, also when the fast paths are off and it goes unused."""
        expected = (n, self.linear.out_features)
        if activations is not None and tuple(activations.shape) != expected:
            raise ValueError(
                f"input_activations has shape {tuple(activations.shape)}; expected "
                f"{expected} = linear(inputs)."
            )

    def input_gradient(self, hidden_gradient: torch.Tensor) -> torch.Tensor:
        """``dF/dx = (dF/dh) W`` for hidden gradients of shape ``(..., n_hidden)``."""
        return cpu_matmul.matmul(hidden_gradient, self.linear.weight)

    def input_gradient_times(
        self, hidden_gradient: torch.Tensor, factor: torch.Tensor
    ) -> torch.Tensor:
        """``((dF/dh) W) * factor`` for ``(n, n_hidden)`` hidden gradients and an ``(n,
        n_features)`` factor (``x - x'`` in EG/IG), fused into one product on the CPU."""
        return cpu_matmul.linear_mul(hidden_gradient, self.linear.weight.t(), factor)
