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

Direction reducers close a loophole of the sum: a prior on the attributions of
``F = sum_k out_k`` is satisfied when the contributions of the other features cancel
in the sum while every output unit still depends on them. :class:`OutputUnits` puts a
prior on every unit (one attribution map each, batched in one pass) and
:class:`RandomDirections` on ``k`` random unit directions ``F_v = out @ v`` drawn afresh
on every call (seeded), a cheap stochastic estimate of the per-unit prior:

>>> RandomDirections(1, generator=torch.Generator().manual_seed(0)).n_directions
1
>>> OutputUnits(4).n_directions
4
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch

from attreg.transfer import to_device

__all__ = [
    "Reducer",
    "Sum",
    "Mean",
    "Index",
    "L2Norm",
    "LogProbabilitySum",
    "CallableReducer",
    "TargetReducer",
    "DirectionReducer",
    "Directions",
    "OutputUnits",
    "RandomDirections",
    "resolve_reducer",
    "apply_reducer",
]


class Reducer:
    """Base class: select an output, then reduce the non-batch dimensions.

    Parameters
    ----------
    output
        Which element of a tuple/dict output to reduce (``None``: the output itself).
    """

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

    def for_call(self, n: int) -> Reducer:
        """The reducer one attribution call of ``n`` samples uses: ``self`` for a
        deterministic reducer; a :class:`DirectionReducer` draws its directions here."""
        return self

    def __repr__(self) -> str:
        extra = "" if self.output is None else f"output={self.output!r}"
        return f"{type(self).__name__}({extra})"


def _flat(out: torch.Tensor) -> torch.Tensor:
    return out.reshape(out.shape[0], -1) if out.ndim > 1 else out.reshape(-1, 1)


class Sum(Reducer):
    """Sum over all non-batch dimensions (the scARE default).

    Parameters
    ----------
    output
        Which element of a tuple/dict output to reduce (``None``: the output itself).
    """

    def reduce(self, out: torch.Tensor) -> torch.Tensor:
        return _flat(out).sum(dim=1)

    def output_weights(
        self, n_outputs: int, device: torch.device | str | None = None
    ) -> torch.Tensor | None:
        return torch.ones(n_outputs, device=device) if self.output is None else None


class Mean(Reducer):
    """Mean over all non-batch dimensions.

    Parameters
    ----------
    output
        Which element of a tuple/dict output to reduce (``None``: the output itself).
    """

    def reduce(self, out: torch.Tensor) -> torch.Tensor:
        return _flat(out).mean(dim=1)

    def output_weights(
        self, n_outputs: int, device: torch.device | str | None = None
    ) -> torch.Tensor | None:
        if self.output is not None:
            return None
        return torch.full((n_outputs,), 1.0 / n_outputs, device=device)


class LogProbabilitySum(Reducer):
    """``sum_k log softmax(out)_k``: Ross et al.'s F for "right for the right reasons"
    (the input gradient of every class's log-probability at once).

    Parameters
    ----------
    output
        Which element of a tuple/dict output holds the logits (``None``: the output).
    """

    def reduce(self, out: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(_flat(out), dim=1).sum(dim=1)


class L2Norm(Reducer):
    """Euclidean norm over all non-batch dimensions.

    Parameters
    ----------
    output
        Which element of a tuple/dict output to reduce (``None``: the output itself).
    """

    def reduce(self, out: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(_flat(out), dim=1)


class Index(Reducer):
    """One output unit (``int``) or the sum over a slice / list of units of dim 1.

    Parameters
    ----------
    index
        One output unit, a slice or a list of units (summed).
    output
        Which element of a tuple/dict output to reduce (``None``: the output itself).
    """

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
    """Captum's ``target``: one output unit per sample (an int or a tensor ``(n,)``).

    Parameters
    ----------
    target
        One unit for all samples (``int``) or one per sample (a tensor ``(n,)``).
    output
        Which element of a tuple/dict output to reduce (``None``: the output itself).
    """

    def __init__(self, target: int | torch.Tensor, output: Hashable | None = None) -> None:
        super().__init__(output)
        self.target = target

    def reduce(self, out: torch.Tensor) -> torch.Tensor:
        out = _flat(out)
        if isinstance(self.target, int):
            if not -out.shape[1] <= self.target < out.shape[1]:
                raise ValueError(
                    f"target={self.target} but the output has {out.shape[1]} unit(s); give "
                    f"a unit 0..{out.shape[1] - 1}."
                )
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
    """Wrap any callable ``out -> (n,)``.

    Parameters
    ----------
    fn
        ``out -> (n,)``: one scalar per sample.
    """

    def __init__(self, fn: Callable[[Any], torch.Tensor]) -> None:
        super().__init__(None)
        self.fn = fn

    def __call__(self, out: Any) -> torch.Tensor:
        return self.fn(out)

    def __repr__(self) -> str:
        return f"CallableReducer({getattr(self.fn, '__name__', self.fn)!r})"


def _check_2d(out: torch.Tensor, who: str) -> None:
    if out.ndim != 2:
        raise ValueError(
            f"{who} explains directions of a 2-D output (n, n_outputs), got shape "
            f"{tuple(out.shape)}; select or flatten the output first."
        )


def _units_of(units: int | Sequence[int] | None, n_outputs: int) -> list[int]:
    if units is None:
        return list(range(n_outputs))
    if isinstance(units, int):
        units = range(units)
    units = [int(u) for u in units]
    bad = [u for u in units if not 0 <= u < n_outputs]
    if bad:
        raise ValueError(
            f"output units {bad} are out of range for an output with {n_outputs} units."
        )
    return units


class DirectionReducer(Reducer):
    r"""Explain ``m`` directions of a 2-D output: ``F_j(out) = out @ v_j`` for the rows
    ``v_j`` of a direction matrix ``V`` ``(m, n_outputs)``.

    An attribution method called with such a reducer returns one attribution map per
    direction, stacked on a new leading axis: ``(m, n, ...)`` (``(n, ...)`` when ``m =
    1``), all directions in one batched pass that shares the method's draws (EG
    references and alphas, IG baselines). An :class:`~attreg.AttributionPrior` compares
    each map with the ground truth and averages the losses over the directions.

    Subclasses define :attr:`n_directions` and :meth:`directions`; the matrix is drawn
    once per attribution call (:meth:`for_call`).

    Parameters
    ----------
    output
        Which element of a tuple/dict output to reduce (``None``: the output itself).
    """

    n_directions: int = 1

    def directions(
        self, n_outputs: int, device: torch.device | str | None = None
    ) -> torch.Tensor:  # pragma: no cover - abstract
        """The direction matrix ``(n_directions, n_outputs)`` for one call."""
        raise NotImplementedError

    def for_call(self, n: int) -> _DrawnDirections:
        return _DrawnDirections(self, n)

    def reduce(self, out: torch.Tensor) -> torch.Tensor:
        """``out @ v`` for a single direction (``m = 1``); see :meth:`for_call`."""
        return self.for_call(out.shape[0]).reduce(out)


class _DrawnDirections(Reducer):
    """A :class:`DirectionReducer` frozen for one call of ``n`` samples.

    The points of an attribution call are laid out repeat-major over ``m * n`` rows
    (direction ``j`` owns rows ``j * n ... (j + 1) * n - 1`` of every repeat), so row
    ``r`` is reduced along direction ``(r mod m n) // n``. The directions are drawn at
    the first use (when the output width is known) and kept for the whole call.
    """

    def __init__(self, parent: DirectionReducer, n: int) -> None:
        super().__init__(parent.output)
        self.parent, self.n, self.m = parent, n, parent.n_directions
        self._v: torch.Tensor | None = None

    def matrix(self, n_outputs: int, device: torch.device | str | None) -> torch.Tensor:
        if self._v is None:
            v = self.parent.directions(n_outputs, device)
            if v.shape != (self.m, n_outputs):
                raise ValueError(
                    f"{self.parent!r} returned directions of shape {tuple(v.shape)}; expected "
                    f"({self.m}, {n_outputs})."
                )
            self._v = v
        return self._v.to(device)

    def _row_direction(self, n_rows: int, device: torch.device | str | None) -> torch.Tensor:
        return (torch.arange(n_rows, device=device) % (self.m * self.n)) // self.n

    def row_output_weights(
        self, n_rows: int, n_outputs: int, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """``(n_rows, n_outputs)``: the direction each row of the stacked points is
        reduced along (what a closed-form gradient needs)."""
        v = self.matrix(n_outputs, device)
        return v.expand(n_rows, -1) if self.m == 1 else v[self._row_direction(n_rows, device)]

    def output_weights(
        self, n_outputs: int, device: torch.device | str | None = None
    ) -> torch.Tensor | None:
        if self.output is not None or self.m != 1:
            return None
        return self.matrix(n_outputs, device)[0]

    def reduce(self, out: torch.Tensor) -> torch.Tensor:
        _check_2d(out, repr(self.parent))
        v = self.matrix(out.shape[1], out.device).to(out.dtype)
        if self.m == 1:
            return out @ v[0]
        if out.shape[0] % (self.m * self.n):
            raise ValueError(
                f"{out.shape[0]} rows are not a multiple of {self.m} directions x {self.n} "
                "samples; call the reducer through an attribution method."
            )
        return (out * v[self._row_direction(out.shape[0], out.device)]).sum(dim=1)

    def __repr__(self) -> str:
        return f"{self.parent!r}.for_call(n={self.n})"


class Directions(DirectionReducer):
    """Fixed directions: the rows of ``matrix`` ``(m, n_outputs)``.

    Parameters
    ----------
    matrix
        ``(m, n_outputs)``: one direction per row.
    output
        Which element of a tuple/dict output to reduce (``None``: the output itself).

    Examples
    --------
    >>> import torch
    >>> Directions(torch.tensor([[1.0, -1.0]]))(torch.tensor([[3.0, 1.0]]))
    tensor([2.])
    """

    def __init__(self, matrix: torch.Tensor, output: Hashable | None = None) -> None:
        super().__init__(output)
        matrix = torch.as_tensor(matrix, dtype=torch.get_default_dtype())
        if matrix.ndim != 2 or matrix.shape[0] == 0:
            raise ValueError(
                f"directions must be a non-empty matrix (m, n_outputs), got shape "
                f"{tuple(matrix.shape)}."
            )
        if not torch.isfinite(matrix).all():
            raise ValueError("directions contain NaN or inf.")
        self.matrix = matrix
        self.n_directions = matrix.shape[0]

    def directions(self, n_outputs: int, device: torch.device | str | None = None) -> torch.Tensor:
        if self.matrix.shape[1] != n_outputs:
            raise ValueError(
                f"directions have {self.matrix.shape[1]} entries; the output has {n_outputs} units."
            )
        return self.matrix if device is None else to_device(self.matrix, device)

    def __repr__(self) -> str:
        return f"Directions(m={self.n_directions})"


class OutputUnits(DirectionReducer):
    """One direction per output unit: a prior on every unit (or on a block of units).

    Parameters
    ----------
    units
        The number of output units (all of them, ``0 ... units - 1``) or a list of unit
        indices (a block, e.g. the latent dimensions one gene set owns).

    Examples
    --------
    >>> import torch
    >>> from attreg.attr import ExpectedGradients
    >>> model = torch.nn.Linear(5, 3)
    >>> eg = ExpectedGradients(model, OutputUnits([0, 2]))
    >>> eg.attribute(torch.randn(8, 5)).shape   # one map per unit
    torch.Size([2, 8, 5])
    """

    def __init__(self, units: int | Sequence[int], output: Hashable | None = None) -> None:
        super().__init__(output)
        if isinstance(units, int):
            if units < 1:
                raise ValueError(f"units must be positive, got {units}.")
            self.units = list(range(units))
        else:
            self.units = [int(u) for u in units]
            if not self.units or len(set(self.units)) != len(self.units):
                raise ValueError(f"units must be a non-empty list of distinct indices: {units}.")
        self.n_directions = len(self.units)

    def directions(self, n_outputs: int, device: torch.device | str | None = None) -> torch.Tensor:
        units = _units_of(self.units, n_outputs)
        v = torch.zeros(len(units), n_outputs)
        v[torch.arange(len(units)), units] = 1.0
        return v if device is None else to_device(v, device)  # no blocking copy

    def __repr__(self) -> str:
        return f"OutputUnits({self.units})"


class RandomDirections(DirectionReducer):
    r"""``k`` random unit directions drawn afresh on every attribution call.

    With ``k = 1`` (default) ``F_v = out @ v`` for one ``v`` uniform on the unit sphere of
    the chosen units: it costs what the sum costs (and keeps closed-form gradients, see
    :meth:`~Reducer.output_weights`), while, over the steps of training, the prior sees
    every direction of the output. What holds exactly: the attributions are linear in
    ``v`` (``A(v) = sum_j v_j A(e_j)``), so ``E_v[A(v)^2] = mean_j A(e_j)^2`` elementwise
    (``E[v v^T] = I / d``); with ``orthogonal=True`` and ``k = d`` the ``k`` directions are a
    random rotation of the basis and ``sum_i A(v_i)^2 = sum_j A(e_j)^2`` holds for every
    draw. A loss that is not quadratic in the attributions (min-max scaling, MSE to a
    binary GT) is estimated with the bias of that nonlinearity: the random-direction loss
    is the expected loss of a random direction, not the mean loss of the units.

    Parameters
    ----------
    n_directions
        Directions per call, ``k``.
    units
        Restrict the directions to these output units (a latent block); ``None``: all.
    orthogonal
        Draw the ``k <= d`` directions orthonormal (rows of a Haar-random rotation).
    generator
        ``torch.Generator`` for the draws (reproducible runs).
    output
        Tuple position or dict key selected first (e.g. ``0`` for ``(mu, logvar)``).

    Examples
    --------
    >>> import torch
    >>> r = RandomDirections(2, orthogonal=True, generator=torch.Generator().manual_seed(0))
    >>> v = r.directions(5)
    >>> torch.allclose(v @ v.T, torch.eye(2), atol=1e-6)
    True
    """

    def __init__(
        self,
        n_directions: int = 1,
        *,
        units: int | Sequence[int] | None = None,
        orthogonal: bool = False,
        generator: torch.Generator | None = None,
        output: Hashable | None = None,
    ) -> None:
        super().__init__(output)
        if isinstance(n_directions, bool) or not isinstance(n_directions, int) or n_directions < 1:
            raise ValueError(f"n_directions must be a positive integer, got {n_directions!r}.")
        self.n_directions = n_directions
        self.units = units
        self.orthogonal = orthogonal
        self.generator = generator

    def directions(self, n_outputs: int, device: torch.device | str | None = None) -> torch.Tensor:
        units = _units_of(self.units, n_outputs)
        d, k = len(units), self.n_directions
        if self.orthogonal and k > d:
            raise ValueError(f"{k} orthogonal directions need at least {k} units, got {d}.")
        gen_device = self.generator.device if self.generator is not None else "cpu"
        g = torch.randn(k, d, generator=self.generator, device=gen_device)
        if self.orthogonal:
            q, r = torch.linalg.qr(g.T)  # (d, k); sign fix makes it Haar-distributed
            diag = torch.diagonal(r)
            g = (q * torch.where(diag < 0, -1.0, 1.0)).T
        else:
            g = g / torch.linalg.vector_norm(g, dim=1, keepdim=True).clamp_min(1e-12)
        v = torch.zeros(k, n_outputs, device=gen_device)
        v[:, units] = g
        return v if device is None else to_device(v, device)

    def __repr__(self) -> str:
        extra = "" if self.units is None else f", units={self.units}"
        orth = ", orthogonal=True" if self.orthogonal else ""
        return f"RandomDirections({self.n_directions}{extra}{orth})"


_NAMED = {
    "sum": Sum,
    "mean": Mean,
    "l2": L2Norm,
    "l2norm": L2Norm,
    "log_probability_sum": LogProbabilitySum,
    "random_direction": RandomDirections,
}


def resolve_reducer(reducer: str | Callable | None) -> Callable[[Any], torch.Tensor]:
    """Turn a name (``"sum"``, ``"mean"``, ``"l2"``, ``"random_direction"``), callable or
    ``None`` into a reducer.

    Parameters
    ----------
    reducer
        A name, a reducer, any callable ``out -> (n,)``, or ``None`` (the sum).
    """
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
    """Apply ``reducer`` and check that it returned one scalar per sample.

    Parameters
    ----------
    reducer
        The reducer.
    out
        The model's output.
    n
        Samples in the batch.
    """
    value = reducer(out)
    if not isinstance(value, torch.Tensor) or value.shape != (n,):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(
            f"reducer {reducer!r} returned {shape}; it must return one scalar per sample, "
            f"shape ({n},). Reduce every non-batch dimension (e.g. out.sum(dim=1))."
        )
    return value
