"""The one primitive every attribution method uses: gradients of ``F`` at many points.

Samples must be independent (no BatchNorm in train mode): then the gradient of
``sum_i F(x_i)`` with respect to the stacked points equals the per-sample gradients
``dF(x_i)/dx_i`` (what ``torch.func.vmap(torch.func.grad(F))`` computes), at the cost
of one forward and one backward pass for the whole stack.

A forward function may also know its gradient in closed form: an object with a method
``reduced_gradient(points, reducer, *args, create_graph) -> Tensor | None`` returns
``dF/dpoints`` itself (with its graph to the parameters when ``create_graph``), or
``None`` where it cannot (an unsupported reducer or architecture), and ``gradients_at``
then uses autograd. attreg_sc's encoder does this for its LayerNorm -> ReLU -> Dropout
block (a handful of row operations instead of an autograd graph differentiated twice).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from attreg.fast_paths import fast_paths_enabled
from attreg.reducers import apply_reducer

__all__ = [
    "as_forward_args",
    "gradients_at",
    "expand_additional_args",
    "forward_reduced",
    "in_functorch_transform",
]


_DETACHED = (
    "the model's output {what}: its forward detaches the input (x.detach(), .numpy(), "
    ".item(), torch.no_grad() inside forward), so no attribution can be computed. Keep the "
    "input in the graph from the forward's first line to its output."
)

def as_forward_args(args: Any) -> tuple:
    """``additional_forward_args`` as a tuple (``None`` -> ``()``, one value -> ``(value,)``)."""
    if args is None:
        return ()
    return args if isinstance(args, tuple) else (args,)


def expand_additional_args(args: Any, n: int, repeats: int) -> tuple:
    """Repeat every tensor argument whose first dimension is ``n`` ``repeats`` times.

    The stacked points are laid out repeat-major (``[x_0 ... x_{n-1}] * repeats``), so
    tensors are repeated with ``Tensor.repeat``; other arguments pass unchanged.
    """
    args = as_forward_args(args)
    if repeats == 1:
        return args
    out = []
    for a in args:
        if isinstance(a, torch.Tensor) and a.ndim >= 1 and a.shape[0] == n:
            out.append(a.repeat(repeats, *([1] * (a.ndim - 1))))
        else:
            out.append(a)
    return tuple(out)


def forward_reduced(
    forward_func: Callable, points: torch.Tensor, reducer: Callable, args: Sequence = ()
) -> torch.Tensor:
    """``F(points)``: the forward function followed by the reducer, shape ``(len(points),)``."""
    return apply_reducer(reducer, forward_func(points, *args), points.shape[0])


def in_functorch_transform(t: torch.Tensor) -> bool:
    """Whether ``t`` is a torch.func transform's tensor (``grad``, ``vmap``, ``jvp``)."""
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(t))


def gradients_at(
    forward_func: Callable,
    points: torch.Tensor,
    reducer: Callable,
    *,
    n: int,
    additional_forward_args: Any = None,
    create_graph: bool = False,
    internal_batch_size: int | None = None,
) -> torch.Tensor:
    """Gradients ``dF/dx`` at ``points``, a repeat-major stack of ``repeats`` x ``n`` rows.

    Parameters
    ----------
    forward_func
        Callable ``(points, *additional_forward_args) -> output``.
    points
        Tensor ``(repeats * n, ...)``.
    reducer
        Output -> one scalar per row.
    n
        Number of original samples (rows of one repeat).
    additional_forward_args
        Extra arguments; tensors with first dimension ``n`` are repeated to match.
    create_graph
        Keep the graph of the gradient so that a loss on it can be differentiated
        with respect to the model parameters (``True`` while training a prior).
    internal_batch_size
        At most this many rows per forward/backward pass (rounded to whole repeats of
        ``n``, at least one repeat); ``None`` processes all rows at once. Chunked calls
        always use autograd.

    Returns
    -------
    torch.Tensor
        ``dF/dpoints``, shaped like ``points``.

    Examples
    --------
    >>> from attreg.reducers import Sum
    >>> points = torch.randn(6, 3)            # two repeats of n = 3 samples
    >>> g = gradients_at(lambda x: x.square(), points, Sum(), n=3)
    >>> torch.allclose(g, 2 * points)
    True
    """
    total = points.shape[0]
    if total % n:
        raise ValueError(f"points has {total} rows, not a multiple of n={n}.")
    repeats = total // n
    per_chunk = repeats
    if internal_batch_size is not None:
        if internal_batch_size < 1:
            raise ValueError(f"internal_batch_size must be >= 1, got {internal_batch_size}.")
        per_chunk = max(1, internal_batch_size // n)
    if in_functorch_transform(
        points
    ):  # torch.func.grad / vmap: no requires_grad_, no autograd.grad
        args = expand_additional_args(additional_forward_args, n, repeats)
        value, pullback = torch.func.vjp(
            lambda p: forward_reduced(forward_func, p, reducer, args), points
        )
        (grad,) = pullback(torch.ones_like(value))
        return grad
    closed_form = getattr(forward_func, "reduced_gradient", None) if fast_paths_enabled() else None
    if closed_form is not None and per_chunk >= repeats:
        args = expand_additional_args(additional_forward_args, n, repeats)
        with torch.enable_grad() if create_graph else torch.no_grad():
            grad = closed_form(points, reducer, *args, create_graph=create_graph)
        if grad is not None:
            return grad if create_graph else grad.detach()
    grads = []
    with torch.enable_grad():
        for start in range(0, repeats, per_chunk):
            stop = min(repeats, start + per_chunk)
            # the whole stack when it is one chunk (a slice's backward zero-fills a copy)
            chunk = points if per_chunk >= repeats else points[start * n : stop * n]
            if not create_graph:
                chunk = chunk.detach()
            if not chunk.requires_grad:
                chunk = chunk.detach().requires_grad_()
            args = expand_additional_args(additional_forward_args, n, stop - start)
            value = forward_reduced(forward_func, chunk, reducer, args)
            if not value.requires_grad:
                raise RuntimeError(_DETACHED.format(what="is not connected to autograd at all"))
            (grad,) = torch.autograd.grad(
                value.sum(), chunk, create_graph=create_graph, allow_unused=True
            )
            if grad is None:
                warnings.warn(_DETACHED.format(what="does not depend on the input through "
                                               "autograd; its attributions are all zero"),
                              UserWarning, stacklevel=3)
            grads.append(torch.zeros_like(chunk) if grad is None else grad)
    grad = grads[0] if len(grads) == 1 else torch.cat(grads, dim=0)
    return grad if create_graph else grad.detach()
