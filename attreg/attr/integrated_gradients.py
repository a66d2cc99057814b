"""Integrated Gradients (Sundararajan et al., 2017), differentiable."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from attreg._validation import check_finite
from attreg.attr._base import (
    LinearPrefixPathAttribution,
    n_directions,
    tile_rows,
    untile_rows,
)
from attreg.attr._gradients import expand_additional_args, forward_reduced, gradients_at
from attreg.attr.linear_prefix import LinearPrefix
from attreg.attr.quadrature import quadrature
from attreg.fast_paths import fast_paths_enabled
from attreg.transfer import to_device

__all__ = ["IntegratedGradients", "call_baselines", "resolve_baselines"]


def call_baselines(baselines: Any, inputs: torch.Tensor) -> Any:
    """A callable ``baselines`` evaluated in either of captum's forms, ``fn(inputs)`` or
    ``fn()``; anything else unchanged."""
    if callable(baselines) and not isinstance(baselines, torch.Tensor):
        takes_inputs = bool(inspect.signature(baselines).parameters)
        return baselines(inputs) if takes_inputs else baselines()
    return baselines


def resolve_baselines(
    baselines: torch.Tensor | float | Callable | None, inputs: torch.Tensor
) -> torch.Tensor:
    """Baseline tensor shaped like ``inputs``: ``None``/0 (zeros), a scalar, a tensor
    broadcastable to ``inputs`` (e.g. one row), or a callable ``fn(inputs)`` or ``fn()``
    (captum's forms) returning one of those."""
    if baselines is None:
        return torch.zeros_like(inputs)
    baselines = call_baselines(baselines, inputs)
    if isinstance(baselines, (int, float)):
        return torch.full_like(inputs, float(baselines))
    if not isinstance(baselines, torch.Tensor):
        raise TypeError(
            f"baselines must be None, a number, a tensor or a callable, got "
            f"{type(baselines).__name__}."
        )
    try:
        return torch.broadcast_to(baselines.to(inputs.device, inputs.dtype), inputs.shape)
    except RuntimeError as err:
        raise ValueError(
            f"baselines of shape {tuple(baselines.shape)} cannot broadcast to inputs of shape "
            f"{tuple(inputs.shape)}; give one baseline row or one per sample."
        ) from err


class IntegratedGradients(LinearPrefixPathAttribution):
    r"""Integrated Gradients along the straight path from a baseline ``x'`` to ``x``.

    .. math:: \mathrm{IG}_j(x) = (x_j - x'_j) \sum_s w_s
              \frac{\partial F(x' + \alpha_s (x - x'))}{\partial x_j}

    All ``n_steps`` points of all samples go through the model in one forward and one
    backward pass (split by ``internal_batch_size`` to bound memory). Cost: about
    ``n_steps`` times a forward+backward of the target; with ``differentiable=True``
    the training step also back-propagates through that graph. For training, prefer
    :class:`~attreg.attr.ExpectedGradients` (``n_samples=1`` costs one extra pass).

    Parameters
    ----------
    forward_func, reducer, differentiable, check_batchnorm
        See :class:`~attreg.attr._base.Attribution`.
    multiply_by_inputs
        Multiply the path-averaged gradient by ``x - x'`` (IG proper). ``False`` returns
        the averaged gradient only.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(3, 1)
    >>> ig = IntegratedGradients(model)
    >>> x = torch.randn(5, 3)
    >>> attr = ig.attribute(x, n_steps=8)
    >>> torch.allclose(attr.sum(1), (model(x) - model(torch.zeros_like(x))).squeeze(1), atol=1e-5)
    True
    """

    def attribute(
        self,
        inputs: torch.Tensor,
        baselines: torch.Tensor | float | Callable | None = None,
        target: int | torch.Tensor | None = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        return_convergence_delta: bool = False,
        input_activations: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Attributions shaped like ``inputs``.

        Parameters
        ----------
        inputs
            ``(n_samples, ...)``.
        baselines
            ``None`` (zeros), number, tensor broadcastable to ``inputs``, or callable.
        target
            captum's ``target``: output unit (int or one per sample) to explain; overrides
            the reducer's reduction.
        additional_forward_args
            Extra arguments of ``forward_func`` (tensors with a batch dimension are
            repeated for every step).
        n_steps
            Number of points on the path.
        method
            ``"gausslegendre"`` (default) or ``"riemann_left|right|middle|trapezoid"``.
        internal_batch_size
            Rows per forward pass (bounds memory).
        return_convergence_delta
            Also return ``sum(attr) - (F(x) - F(x'))`` per sample (completeness error).
        input_activations
            For a :class:`~attreg.attr.LinearPrefix` target: ``linear(inputs)`` if the
            caller already has it.
        """
        inputs, reducer = self._prepare(inputs, target)
        if input_activations is not None and isinstance(self.forward_func, LinearPrefix):
            self.forward_func.check_activations(input_activations, inputs.shape[0])
        base = resolve_baselines(baselines, inputs)
        if self.check_inputs and baselines is not None:
            check_finite(base, "baselines")
        if not self.differentiable:
            base = base.detach()
        n0, m = inputs.shape[0], n_directions(reducer)
        if m > 1:  # one map per direction: the batch tiled m times, direction-major
            inputs, base = tile_rows(inputs, m), tile_rows(base, m)
            input_activations = tile_rows(input_activations, m)
            additional_forward_args = expand_additional_args(additional_forward_args, n0, m)
        alphas, weights = quadrature(method, n_steps, dtype=inputs.dtype)
        alphas = to_device(alphas, inputs.device)
        weights = to_device(weights, inputs.device)
        n = inputs.shape[0]
        delta = inputs - base
        target = self.forward_func
        prefix = self.use_linear_prefix and fast_paths_enabled()
        if prefix and isinstance(target, LinearPrefix) and inputs.ndim == 2:
            with torch.enable_grad():
                h_x = target.linear(inputs) if input_activations is None else input_activations
                if baselines is None:  # linear(0) is the bias: no product needed
                    bias = target.linear.bias
                    h_b = (
                        torch.zeros_like(h_x) if bias is None else bias.expand_as(h_x).to(h_x.dtype)
                    )
                else:
                    h_b = target.linear(base)
                hidden = self._path_average(
                    target.rest,
                    h_b,
                    h_x - h_b,
                    alphas,
                    weights,
                    reducer,
                    additional_forward_args,
                    internal_batch_size,
                )
                # (x - x') * (sum_s w_s g_s) W in one fused product
                attr = (
                    target.input_gradient_times(hidden, delta)
                    if self.multiply_by_inputs
                    else target.input_gradient(hidden)
                )
            if not self.differentiable:
                attr = attr.detach()
        else:
            avg_grad = self._path_average(
                target,
                base,
                delta,
                alphas,
                weights,
                reducer,
                additional_forward_args,
                internal_batch_size,
            )
            attr = delta * avg_grad if self.multiply_by_inputs else avg_grad
        if not return_convergence_delta:
            return untile_rows(attr, m, n0)
        with torch.no_grad():
            args = expand_additional_args(additional_forward_args, n, 2)
            ends = forward_reduced(self.forward_func, torch.cat([inputs, base]), reducer, args)
            err = attr.detach().reshape(n, -1).sum(1) - (ends[:n] - ends[n:])
        return untile_rows(attr, m, n0), untile_rows(err, m, n0)

    def _path_average(
        self,
        forward_func: Callable,
        start: torch.Tensor,
        delta: torch.Tensor,
        alphas: torch.Tensor,
        weights: torch.Tensor,
        reducer: Callable,
        additional_forward_args: Any,
        internal_batch_size: int | None,
    ) -> torch.Tensor:
        """``sum_s w_s dF/dz(start + alpha_s delta)``, a chunk of steps at a time.

        The points of one chunk are built, pushed through ``forward_func`` and reduced to
        a weighted sum before the next chunk is built, so memory is bounded by the chunk
        (``internal_batch_size`` rows, or :data:`AUTO_CHUNK_ELEMENTS` elements), not by
        ``n_steps`` times the batch.
        """
        n, n_steps = start.shape[0], alphas.shape[0]
        per_chunk = steps_per_chunk(n_steps, n, start[0].numel(), internal_batch_size)
        total = None
        for s0 in range(0, n_steps, per_chunk):
            k = min(n_steps, s0 + per_chunk) - s0
            shape = (k,) + (1,) * start.ndim
            a = alphas[s0 : s0 + k].view(shape).to(start.dtype)
            points = (start.unsqueeze(0) + a * delta.unsqueeze(0)).reshape(k * n, *start.shape[1:])
            grads = gradients_at(
                forward_func,
                points,
                reducer,
                n=n,
                additional_forward_args=additional_forward_args,
                create_graph=self.differentiable,
            ).reshape(k, *start.shape)
            part = (weights[s0 : s0 + k].view(shape).to(grads.dtype) * grads).sum(dim=0)
            total = part if total is None else total + part
        return total


#: Without ``internal_batch_size``, IG builds at most this many path-point elements at
#: once (256 MiB of float32); larger ``n_steps x batch`` products are chunked by steps.
AUTO_CHUNK_ELEMENTS = 2**26


def steps_per_chunk(n_steps: int, n: int, row_numel: int, internal_batch_size: int | None) -> int:
    """Path steps per forward/backward pass: ``internal_batch_size // n`` rows' worth (at
    least one step), or as many as fit in :data:`AUTO_CHUNK_ELEMENTS`."""
    if internal_batch_size is not None:
        if isinstance(internal_batch_size, bool) or internal_batch_size < 1:
            raise ValueError(
                f"internal_batch_size must be a positive integer, got {internal_batch_size!r}."
            )
        return max(1, min(n_steps, internal_batch_size // n))
    return max(1, min(n_steps, AUTO_CHUNK_ELEMENTS // max(1, n * row_numel)))
