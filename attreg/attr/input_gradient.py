"""Cheap attributions: the plain input gradient and gradient x input."""

from __future__ import annotations

from typing import Any

import torch

from attreg.attr._base import Attribution, n_directions, tile_rows, untile_rows
from attreg.attr._gradients import expand_additional_args, gradients_at

__all__ = ["InputGradient", "InputXGradient"]


class InputGradient(Attribution):
    """``dF/dx`` at the input (captum's ``Saliency`` without the absolute value).

    Parameters
    ----------
    forward_func
        The model or function explained: ``forward_func(inputs, *additional_forward_args)``.
    reducer
        ``F``: how the output becomes one scalar per sample (:mod:`attreg.reducers`;
        ``None``: the sum, or captum's ``target=`` at the call).
    differentiable
        Keep the graph (``create_graph=True``) so that a loss on the attributions trains
        the model's parameters.
    check_batchnorm
        Refuse BatchNorm in train mode (it couples the samples of a batch).
    check_inputs
        Check the inputs (finite values, dtype) on every call.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(3, 1, bias=False)
    >>> g = InputGradient(model).attribute(torch.randn(2, 3))
    >>> torch.allclose(g, model.weight.expand(2, 3))
    True
    """

    multiply_by_inputs = False

    def attribute(
        self,
        inputs: torch.Tensor,
        target: int | torch.Tensor | None = None,
        additional_forward_args: Any = None,
    ) -> torch.Tensor:
        """Attributions shaped like ``inputs`` (``(m, *inputs.shape)`` for a reducer with
        ``m > 1`` directions)."""
        inputs, reducer = self._prepare(inputs, target)
        n, m = inputs.shape[0], n_directions(reducer)
        points = tile_rows(inputs, m)
        grad = gradients_at(
            self.forward_func,
            points,
            reducer,
            n=n * m,
            additional_forward_args=expand_additional_args(additional_forward_args, n, m),
            create_graph=self.differentiable,
        )
        return untile_rows(points * grad if self.multiply_by_inputs else grad, m, n)


class InputXGradient(InputGradient):
    """``x * dF/dx`` (captum's ``InputXGradient``).

    Parameters
    ----------
    forward_func
        The model or function explained: ``forward_func(inputs, *additional_forward_args)``.
    reducer
        ``F``: how the output becomes one scalar per sample (:mod:`attreg.reducers`;
        ``None``: the sum, or captum's ``target=`` at the call).
    differentiable
        Keep the graph (``create_graph=True``) so that a loss on the attributions trains
        the model's parameters.
    check_batchnorm
        Refuse BatchNorm in train mode (it couples the samples of a batch).
    check_inputs
        Check the inputs (finite values, dtype) on every call.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(3, 1, bias=False)
    >>> x = torch.randn(2, 3)
    >>> torch.allclose(InputXGradient(model).attribute(x), x * model.weight)
    True
    """

    multiply_by_inputs = True
