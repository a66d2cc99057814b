"""Base class of the attribution methods (captum's call shape)."""

from __future__ import annotations

import contextlib
import functools
import logging
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from attreg._validation import (
    BatchStatisticsProbe,
    check_finite,
    check_input_dtype,
    check_no_batchnorm_in_train_mode,
    check_target,
    coupling_modules,
)
from attreg.attr._gradients import expand_additional_args, forward_reduced
from attreg.attr.tuple_inputs import PackedForward, TuplePacking, pack_argument
from attreg.reducers import DirectionReducer, Reducer, TargetReducer, resolve_reducer

__all__ = [
    "Attribution",
    "PathAttribution",
    "LinearPrefixPathAttribution",
    "n_directions",
    "tile_rows",
    "untile_rows",
]

logger = logging.getLogger(__name__)


def n_directions(reducer: Any) -> int:
    """How many attribution maps one call with ``reducer`` returns (``m``; 1 for a
    scalar reducer)."""
    return int(getattr(reducer, "m", 1)) if isinstance(reducer, Reducer) else 1


def tile_rows(t: torch.Tensor | None, m: int, dim: int = 0) -> torch.Tensor | None:
    """``m`` copies of ``t`` stacked along ``dim`` (direction-major), for ``m`` directions
    that share one set of draws."""
    if t is None or m == 1:
        return t
    reps = [1] * t.ndim
    reps[dim] = m
    return t.repeat(*reps)


def untile_rows(attr: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """``(m * n, ...)`` attributions -> ``(m, n, ...)`` (unchanged for ``m = 1``)."""
    return attr if m == 1 else attr.reshape(m, n, *attr.shape[1:])


class Attribution:
    """Common machinery: forward function, reducer, differentiability, checks.

    Parameters
    ----------
    forward_func
        Any callable ``(inputs, *additional_forward_args) -> output``; usually an
        ``nn.Module`` (the whole model or one submodule such as an encoder).
    reducer
        ``F``: output -> one scalar per sample. A name (``"sum"``, ``"mean"``, ``"l2"``),
        a :class:`attreg.reducers.Reducer` or any callable. Default ``"sum"``.
    differentiable
        Build the graph of the attributions (``create_graph=True``) so that a loss on
        them trains the parameters of ``forward_func``. ``False`` (default for post-hoc
        use) returns detached attributions and costs less.
    check_batchnorm
        Raise if the forward pass normalises with batch statistics (it couples the
        samples): ``nn.BatchNorm*`` in train mode, checked on every call (also modules
        added later), and any call of ``F.batch_norm(..., training=True)``, seen by
        :class:`~attreg._validation.BatchStatisticsProbe` on the first call and again
        whenever the target's modules or their train/eval modes change.
    check_inputs
        Check ``inputs`` for NaN/inf on every call (one pass over the data and a host
        synchronisation; turn off when the data were validated upstream).
    """

    def __init__(
        self,
        forward_func: Callable,
        reducer: str | Callable | None = None,
        *,
        differentiable: bool = False,
        check_batchnorm: bool = True,
        check_inputs: bool = True,
    ) -> None:
        if not callable(forward_func):
            raise TypeError(
                f"forward_func must be callable (an nn.Module or function), got "
                f"{type(forward_func).__name__}."
            )
        self.forward_func = _uncompiled(forward_func, differentiable)
        self.reducer = resolve_reducer(reducer)
        self.differentiable = differentiable
        self.check_batchnorm = check_batchnorm
        self.check_inputs = check_inputs
        self._probed: Any = _NOT_PROBED

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "attribute" in cls.__dict__:
            cls.attribute = _probe_batch_statistics(cls.__dict__["attribute"])

    def attribute_future(self) -> None:
        """captum's asynchronous ``attribute_future``: as in captum's gradient methods, not
        implemented; :meth:`attribute` computes the attributions synchronously.

        Raises
        ------
        NotImplementedError
            Always.
        """
        raise NotImplementedError(
            f"attribute_future is not implemented for {type(self).__name__} (as in captum's "
            "gradient methods); call attribute(), which computes synchronously."
        )

    def _module_state(self) -> Any:
        """What the batch-statistics probe depends on: the target's modules and modes."""
        if not isinstance(self.forward_func, nn.Module):
            return None
        return tuple((id(m), m.training) for m in self.forward_func.modules())

    # -- helpers used by subclasses -------------------------------------------------
    def _prepare(self, inputs: torch.Tensor, target: Any) -> tuple[torch.Tensor, Callable]:
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(
                f"inputs must be a torch.Tensor of shape (n_samples, ...), got "
                f"{type(inputs).__name__}."
            )
        if inputs.ndim < 1 or inputs.shape[0] == 0:
            raise ValueError(
                f"inputs must have a non-empty batch dimension, got shape {tuple(inputs.shape)}."
            )
        if not inputs.is_floating_point():
            raise TypeError(
                f"inputs must be floating point to take gradients, got {inputs.dtype}; "
                "convert with inputs.float()."
            )
        if self.check_inputs:
            check_finite(inputs, "inputs")
        check_input_dtype(inputs, self.forward_func)
        check_target(target)
        if isinstance(target, torch.Tensor) and target.ndim == 0:
            target = int(target)  # captum: a 0-dim tensor selects one unit for the batch
        if isinstance(target, numbers.Integral):
            target = int(target)  # numpy integers select one unit, like an int
        if self.check_batchnorm:
            check_no_batchnorm_in_train_mode(coupling_modules(self.forward_func))
        reducer = self.reducer
        if target is not None:
            if isinstance(reducer, DirectionReducer):
                raise ValueError(
                    f"target= selects one output unit per sample; the reducer {reducer!r} "
                    "already chooses directions. Pass one of them, not both."
                )
            output = reducer.output if isinstance(reducer, Reducer) else None
            reducer = _RepeatedTarget(target, output, inputs.shape[0])
        elif isinstance(reducer, Reducer):
            reducer = reducer.for_call(inputs.shape[0])  # draws a direction reducer's v
        if not self.differentiable:
            inputs = inputs.detach()
        return inputs, reducer

    @property
    def multiplies_by_inputs(self) -> bool:
        """captum's name: whether attributions are multiplied by ``inputs - baselines``."""
        return bool(getattr(self, "multiply_by_inputs", False))

    def compute_convergence_delta(
        self,
        attributions: Any,
        start_point: Any,
        end_point: Any,
        target: Any = None,
        additional_forward_args: Any = None,
    ) -> torch.Tensor:
        """captum's completeness check: ``sum(attributions) - (F(end) - F(start))`` per
        sample (tensors or tuples of tensors; ``start_point`` may be one row or numbers).

        Examples
        --------
        >>> import torch, attreg
        >>> model = torch.nn.Linear(3, 1)
        >>> ig = attreg.IntegratedGradients(model)
        >>> x = torch.randn(4, 3)
        >>> attr = ig.attribute(x, n_steps=4)
        >>> bool(ig.compute_convergence_delta(attr, torch.zeros(1, 3), x).abs().max() < 1e-5)
        True
        """
        forward = self.forward_func
        if start_point is None:  # captum: no baselines means zeros
            start_point = (
                0.0 if not isinstance(end_point, (tuple, list)) else [0.0] * len(end_point)
            )
        if isinstance(end_point, (tuple, list)):
            packing = TuplePacking(list(end_point))
            forward = PackedForward(forward, packing)
            end = packing.pack(list(end_point))
            start = packing.pack(
                list(start_point) if isinstance(start_point, (tuple, list)) else [start_point]
            )
            attributions = packing.pack(list(attributions))
        else:
            end = end_point
            start = (
                start_point
                if isinstance(start_point, torch.Tensor)
                else torch.full_like(end, float(start_point))
            )
        n = end.shape[0]
        if start.shape[0] not in (1, n) or start.shape[1:] != end.shape[1:]:
            raise ValueError(
                f"start_point of shape {tuple(start.shape)} does not match end_point "
                f"{tuple(end.shape)}: give one row or one per sample (for attributions "
                "averaged over several baselines, pass the baseline each sample used)."
            )
        start = torch.broadcast_to(start.to(end.dtype), end.shape)
        _, reducer = self._prepare(end, target)
        with torch.no_grad():
            args = expand_additional_args(additional_forward_args, n, 2)
            values = forward_reduced(forward, torch.cat([end, start]), reducer, args)
            total = attributions.detach().reshape(n, -1).sum(1)
            return total - (values[:n] - values[n:])

    def attribute(self, inputs: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover

    def __call__(self, inputs: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.attribute(inputs, *args, **kwargs)

    def __repr__(self) -> str:
        name = getattr(self.forward_func, "__class__", type(self.forward_func)).__name__
        return (
            f"{type(self).__name__}(forward_func={name}, reducer={self.reducer!r}, "
            f"differentiable={self.differentiable})"
        )


_NOT_PROBED = object()


def _uncompiled(forward_func: Callable, differentiable: bool) -> Callable:
    """A ``torch.compile``-d module's original module (the same parameters) for
    differentiable attributions: compiled graphs (aot_autograd) have no double backward.
    The model's own forward passes stay compiled."""
    original = getattr(forward_func, "_orig_mod", None)
    if differentiable and isinstance(forward_func, nn.Module) and isinstance(original, nn.Module):
        logger.info(
            "differentiable attributions run the torch.compile-d module's original "
            "(eager) forward: compiled graphs have no double backward"
        )
        return original
    return forward_func


def _probe_batch_statistics(attribute: Callable) -> Callable:
    """Run ``attribute`` under :class:`BatchStatisticsProbe` when the target is new or
    its modules/modes changed since the last probed call (one probed call per change)."""

    @functools.wraps(attribute)
    def probed(self: Attribution, *args: Any, **kwargs: Any) -> Any:
        inputs = args[0] if args else kwargs.get("inputs")
        if isinstance(inputs, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in inputs):
            if inputs:  # a tuple of tensors (captum's several inputs); else the usual error
                return _attribute_tuple(self, probed, inputs, args[1:], kwargs)
        with _twice_differentiable_attention(self.differentiable):
            if not self.check_batchnorm:
                return attribute(self, *args, **kwargs)
            state = self._module_state()
            if self._probed is not _NOT_PROBED and state == self._probed:
                return attribute(self, *args, **kwargs)
            with BatchStatisticsProbe():
                out = attribute(self, *args, **kwargs)
            self._probed = state
            return out

    return probed


def _attribute_tuple(
    self: Attribution, attribute: Callable, inputs: Any, args: tuple, kwargs: dict
) -> Any:
    """Tuple inputs: pack, attribute the packed tensor, split the attributions back."""
    packing = TuplePacking(list(inputs))
    kwargs = dict(kwargs)
    kwargs.pop("inputs", None)
    for name in ("baselines", "references"):
        if name in kwargs:
            kwargs[name] = pack_argument(kwargs[name], packing, name)
    args = tuple(
        pack_argument(a, packing, "baselines") if i == 0 else a for i, a in enumerate(args)
    )
    # this method and any it wraps (a NoiseTunnel's inner method) see the packed tensor
    chain, m = [], self
    while isinstance(m, Attribution):
        chain.append((m, m.forward_func))
        m = getattr(m, "method", None)
    for m, original in chain:
        m.forward_func = PackedForward(original, packing)
    try:
        out = attribute(self, packing.pack(list(inputs)), *args, **kwargs)
    finally:
        for m, original in chain:
            m.forward_func = original
    if isinstance(out, tuple):  # (attributions, convergence delta)
        return (packing.split(out[0]), *out[1:])
    return packing.split(out)


class PathAttribution(Attribution):
    """An :class:`Attribution` that averages gradients between inputs and references
    and, by default, multiplies the average by ``x - x'`` (IG, EG, GradientShap).

    Parameters
    ----------
    forward_func, reducer, differentiable, check_batchnorm, check_inputs
        See :class:`Attribution`.
    multiply_by_inputs
        Multiply the averaged gradients by ``x - x'``; ``False`` keeps the gradients alone.
    """

    def __init__(
        self,
        forward_func: Callable,
        reducer: str | Callable | None = None,
        *,
        differentiable: bool = False,
        multiply_by_inputs: bool = True,
        check_batchnorm: bool = True,
        check_inputs: bool = True,
    ) -> None:
        super().__init__(
            forward_func,
            reducer,
            differentiable=differentiable,
            check_batchnorm=check_batchnorm,
            check_inputs=check_inputs,
        )
        self.multiply_by_inputs = multiply_by_inputs


class LinearPrefixPathAttribution(PathAttribution):
    """A :class:`PathAttribution` that, for an :class:`~attreg.attr.LinearPrefix` target,
    may interpolate in the hidden space (IG and EG).

    Parameters
    ----------
    forward_func, reducer, differentiable, multiply_by_inputs, check_batchnorm, check_inputs
        See :class:`PathAttribution`.
    use_linear_prefix
        Interpolate in the hidden space of a ``LinearPrefix`` target (same attributions,
        cheaper; with the fast paths on).
    """

    def __init__(
        self,
        forward_func: Callable,
        reducer: str | Callable | None = None,
        *,
        use_linear_prefix: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(forward_func, reducer, **kwargs)
        self.use_linear_prefix = use_linear_prefix


def _twice_differentiable_attention(differentiable: bool) -> contextlib.AbstractContextManager:
    """Differentiable attributions are differentiated twice; the fused attention kernels
    of ``scaled_dot_product_attention`` (flash, memory-efficient, cuDNN) have no double
    backward, so the attribution pass uses the math kernel (same values). Elsewhere, the
    model's own forward passes keep the fused kernels."""
    if not differentiable:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


class _RepeatedTarget(TargetReducer):
    """A per-sample target that follows the repeat-major stacking of the points."""

    def __init__(self, target: Any, output: Any, n: int) -> None:
        super().__init__(target, output)
        self.n = n

    def reduce(self, out: torch.Tensor) -> torch.Tensor:
        if isinstance(self.target, int):
            return super().reduce(out)
        target = torch.as_tensor(self.target).reshape(-1)
        if target.numel() != self.n:
            raise ValueError(
                f"target has {target.numel()} entries for {self.n} samples; give one per sample."
            )
        reps = out.shape[0] // self.n
        return TargetReducer(target.repeat(reps), None).reduce(out)
