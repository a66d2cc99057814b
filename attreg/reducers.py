"""Reducers ``F``: turn a model output into one scalar per sample.

An attribution explains a scalar. A reducer maps whatever the target module returns
(a tensor ``(n, ...)``, a tuple such as ``(mu, logvar)``, or a dict) to a tensor of
shape ``(n,)``. Every reducer takes an optional ``output`` selector (tuple position or
dict key) applied first.

Examples
--------
>>> import torch
>>> out = (torch.ones(4, 3), torch.zeros(4, 3))   # e.g. (mu, logvar) of an encoder
>>> Sum(output=0)(out)
tensor([3., 3., 3., 3.])
>>> Index(1)(torch.arange(6.).reshape(2, 3))
tensor([1., 4.])
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import torch

from attreg.transfer import to_device

__all__ = [
    "Reducer",
    "Sum",
    "Mean",
    "Index",
    "L2Norm",
    "CallableReducer",
    "TargetReducer",
    "resolve_reducer",
    "apply_reducer",
]


class Reducer:
    """Base class: select an output, then reduce the non-batch dimensions."""

    def __init__(self, output: Hashable | None = None) -> None:
        self.output = output

    def select(self, out: Any) -> torch.Tensor:
        if self.output is not None:
            try:
                out = out[self.output]
            except (KeyError, IndexError, TypeError) as err:
                raise ValueError(
                    f"reducer could not select output {self.output!r} from a "
                    f"{type(out).__name__}; use a tuple position or dict key the module returns."
                ) from err
        elif isinstance(out, (tuple, list, dict)):
            raise ValueError(
                f"the module returns a {type(out).__name__}; tell the reducer which element "
                "to explain, e.g. Sum(output=0) for the first element of (mu, logvar)."
            )
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"reducer expects a tensor output, got {type(out).__name__}.")
        return out

    def reduce(self, out: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def output_weights(
        self, n_outputs: int, device: torch.device | str | None = None
    ) -> torch.Tensor | None:
        """``w`` with ``F(out) = out @ w`` for a 2-D output ``(n, n_outputs)`` when the
        reduction is that linear map (and no output is selected); else ``None``.

        A forward function with a closed-form gradient (see
        :func:`attreg.attr.gradients_at`) needs ``dF/dout = w`` to be one constant vector.
        ``w`` is made on ``device`` (default: the CPU), without a host synchronisation.
        """
        return None

    def __call__(self, out: Any) -> torch.Tensor:
        return self.reduce(self.select(out))

    def __repr__(self) -> str:
        extra = "" if self.output is None else f"output={self.output!r}"
        return f"{type(self).__name__}({extra})"


def _flat(out: torch.Tensor) -> torch.Tensor:
    return out.reshape(out.shape[0], -1) if out.ndim > 1 else out.reshape(-1, 1)


class Sum(Reducer):
    """Sum over all non-batch dimensions (the scARE default)."""

    def reduce(self, out: torch.Tensor) -> torch.Tensor:
        return _flat(out).sum(dim=1)

    def output_weights(
        self, n_outputs: int, device: torch.device | str | None = None
    ) -> torch.Tensor | None:
        return torch.ones(n_outputs, device=device) if self.output is None else None


class Mean(Reducer):
    """Mean over all non-batch dimensions."""

    def reduce(self, out: torch.Tensor) -> torch.Tensor:
        return _flat(out).mean(dim=1)

    def output_weights(
        self, n_outputs: int, device: torch.device | str | None = None
    ) -> torch.Tensor | None:
        if self.output is not None:
            return None
        return torch.full((n_outputs,), 1.0 / n_outputs, device=device)


class L2Norm(Reducer):
    """Euclidean norm over all non-batch dimensions."""

    def reduce(self, out: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(_flat(out), dim=1)


class Index(Reducer):
    """One output unit (``int``) or the sum over a slice / list of units of dim 1."""

    def __init__(self, index: int | slice | list[int], output: Hashable | None = None) -> None:
        super().__init__(output)
        self.index = index

    def reduce(self, out: torch.Tensor) -> torch.Tensor:
        if out.ndim < 2:
            raise ValueError(
                f"Index({self.index!r}) needs an output with a feature dimension, got shape "
                f"{tuple(out.shape)}."
            )
        sel = out[:, self.index]
        return sel if isinstance(self.index, int) and sel.ndim == 1 else _flat(sel).sum(dim=1)

    def output_weights(
        self, n_outputs: int, device: torch.device | str | None = None
    ) -> torch.Tensor | None:
        if self.output is not None:
            return None
        units = torch.arange(n_outputs)[self.index]  # IndexError where reduce() would fail
        w = torch.zeros(n_outputs).index_add_(0, units.reshape(-1), torch.ones(units.numel()))
        return w if device is None else to_device(w, device)


class TargetReducer(Reducer):
    """Captum's ``target``: one output unit per sample (an int or a tensor ``(n,)``)."""

    def __init__(self, target: int | torch.Tensor, output: Hashable | None = None) -> None:
        super().__init__(output)
        self.target = target

    def reduce(self, out: torch.Tensor) -> torch.Tensor:
        out = _flat(out)
        if isinstance(self.target, int):
            return out[:, self.target]
        target = torch.as_tensor(self.target, device=out.device).reshape(-1)
        if target.numel() != out.shape[0]:
            raise ValueError(
                f"target has {target.numel()} entries but the batch (including expanded "
                f"steps/samples) has {out.shape[0]}; give one target per input sample."
            )
        return out.gather(1, target.long().unsqueeze(1)).squeeze(1)

    def output_weights(
        self, n_outputs: int, device: torch.device | str | None = None
    ) -> torch.Tensor | None:
        if self.output is not None or not isinstance(self.target, int):
            return None  # a target per sample is no single weight vector
        w = torch.zeros(n_outputs).index_fill_(0, torch.arange(n_outputs)[[self.target]], 1.0)
        return w if device is None else to_device(w, device)


class CallableReducer(Reducer):
    """Wrap any callable ``out -> (n,)``."""

    def __init__(self, fn: Callable[[Any], torch.Tensor]) -> None:
        super().__init__(None)
        self.fn = fn

    def __call__(self, out: Any) -> torch.Tensor:
        return self.fn(out)

    def __repr__(self) -> str:
        return f"CallableReducer({getattr(self.fn, '__name__', self.fn)!r})"


_NAMED = {"sum": Sum, "mean": Mean, "l2": L2Norm, "l2norm": L2Norm}


def resolve_reducer(reducer: str | Callable | None) -> Callable[[Any], torch.Tensor]:
    """Turn a name (``"sum"``, ``"mean"``, ``"l2"``), callable or ``None`` into a reducer."""
    if reducer is None:
        return Sum()
    if isinstance(reducer, Reducer):
        return reducer
    if isinstance(reducer, str):
        try:
            return _NAMED[reducer.lower()]()
        except KeyError:
            raise ValueError(
                f"unknown reducer {reducer!r}; use one of {sorted(_NAMED)} or a callable."
            ) from None
    if callable(reducer):
        return CallableReducer(reducer)
    raise TypeError(f"reducer must be a name or a callable, got {type(reducer).__name__}.")


def apply_reducer(reducer: Callable[[Any], torch.Tensor], out: Any, n: int) -> torch.Tensor:
    """Apply ``reducer`` and check that it returned one scalar per sample."""
    value = reducer(out)
    if not isinstance(value, torch.Tensor) or value.shape != (n,):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(
            f"reducer {reducer!r} returned {shape}; it must return one scalar per sample, "
            f"shape ({n},). Reduce every non-batch dimension (e.g. out.sum(dim=1))."
        )
    return value
