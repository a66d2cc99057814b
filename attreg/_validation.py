"""Input checks shared by the attribution methods, the priors and the losses.

Every check raises before any computation with a message that names the problem
and the fix.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = [
    "BatchStatisticsProbe",
    "check_finite",
    "check_input_dtype",
    "check_no_batchnorm_in_train_mode",
    "check_noise_sd",
    "check_positive_int",
    "check_row_index",
    "check_target",
    "coupling_modules",
    "validate_ground_truth",
]

_COUPLING_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm,)


def check_finite(tensor: torch.Tensor, name: str, fix: str | None = None) -> None:
    """Raise ``ValueError`` if ``tensor`` holds NaN or infinite values (``fix``: what to
    do about it; default: clean the data)."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        n_bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(
            f"{name} contains {n_bad} NaN or infinite value(s); attributions and their "
            "loss would be NaN. "
            + (fix or "Clean or impute the data before computing attributions.")
        )


def coupling_modules(module: Callable) -> list[tuple[str, nn.Module]]:
    """Return the submodules of ``module`` that couple the samples of a batch.

    BatchNorm in train mode normalises each sample with statistics of the whole
    batch, so the gradient of one sample's output reaches the other samples' inputs
    and per-sample attributions computed with one backward pass are wrong.
    """
    if not isinstance(module, nn.Module):
        return []
    return [(name, m) for name, m in module.named_modules() if isinstance(m, _COUPLING_TYPES)]


_BATCH_NORM_FUNCTIONS = (torch.nn.functional.batch_norm, torch.batch_norm)

_COUPLING_FIX = (
    "Use nn.LayerNorm instead, put that module in eval mode (running statistics), or "
    "pass check_batchnorm=False if you accept the coupling."
)


class BatchStatisticsProbe(TorchFunctionMode):
    """A function mode that raises when a forward pass normalises with batch statistics.

    It sees every call of ``torch.nn.functional.batch_norm`` (which ``nn.BatchNorm*``
    modules use) and of ``torch.batch_norm``, including modules added after an
    attribution object was built and the functional form called directly in a
    ``forward``. Attribution methods run their first call, and the first call after the
    target's set of modules or their train/eval modes change, under this probe.

    What it cannot see: other ways of mixing samples (``x.mean(0)``, attention across
    the batch dimension, a custom autograd function or C++ extension that normalises
    over the batch). Those make per-sample attributions wrong without any error.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _BATCH_NORM_FUNCTIONS:
            training = kwargs.get("training", args[5] if len(args) > 5 else False)
            if training:
                raise ValueError(
                    f"the forward pass calls {func.__module__}.{func.__name__} with "
                    "training=True: it normalises with the statistics of the whole "
                    "batch, which couples the samples of a minibatch, so per-sample "
                    f"attributions would be wrong. {_COUPLING_FIX}"
                )
        return func(*args, **kwargs)


def check_no_batchnorm_in_train_mode(found: list[tuple[str, nn.Module]]) -> None:
    """Raise ``ValueError`` if any of the given BatchNorm modules is in train mode."""
    for name, m in found:
        if m.training:
            raise ValueError(
                f"Submodule '{name or type(m).__name__}' ({type(m).__name__}) is in train "
                "mode: it normalises with batch statistics, which couples the samples "
                f"of a minibatch, so per-sample attributions would be wrong. {_COUPLING_FIX}"
            )


def check_positive_int(value: Any, name: str) -> int:
    """``value`` if it is an int >= 1 (not a bool), else a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return value


def check_noise_sd(value: Any, name: str = "stdevs") -> float:
    """``value`` as a float if it is finite and >= 0, else a ``ValueError`` naming ``name``."""
    sd = float(value)
    if not sd >= 0 or sd == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    return sd


def check_target(target: Any) -> None:
    """Raise unless ``target`` is ``None``, a non-negative int or an integer tensor/array.

    A float (``0.7``) would be truncated and a bool read as 0/1: both are refused.
    """
    if target is None:
        return
    if isinstance(target, bool) or (
        isinstance(target, numbers.Number) and not isinstance(target, numbers.Integral)
    ):
        raise TypeError(
            f"target must be an int (one output unit) or an integer tensor (one per "
            f"sample), got {target!r}; a float or bool would silently select a unit."
        )
    if isinstance(target, numbers.Integral):
        if target < 0:
            raise ValueError(
                f"target={target} is negative; give the output unit's position 0..n-1."
            )
        return
    t = torch.as_tensor(target)
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(
            f"target must hold integers (one output unit per sample), got dtype {t.dtype}; "
            "convert with target.long()."
        )


def check_row_index(index: Any, n_rows: int, name: str = "index") -> torch.Tensor:
    """``index`` as a long tensor after checking it selects rows ``0..n_rows-1``.

    Negative positions are refused: ``-1`` would silently pick the last row of a
    per-sample ground truth instead of the sample's own row.
    """
    t = torch.as_tensor(index)
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"{name} must hold row positions (integers), got dtype {t.dtype}.")
    if t.numel():
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= n_rows:
            raise IndexError(
                f"{name} holds positions in [{lo}, {hi}] but the ground truth has {n_rows} "
                f"rows; give row positions 0..{n_rows - 1} (negative positions are not "
                "counted from the end)."
            )
    return t.long()


def check_input_dtype(inputs: torch.Tensor, module: Any) -> None:
    """Raise ``TypeError`` when ``inputs`` and the first floating parameter of ``module``
    have different dtypes (float64 data into a float32 model, half inputs)."""
    if not isinstance(module, nn.Module):
        return
    for p in module.parameters():
        if p.is_floating_point():
            if p.dtype != inputs.dtype:
                raise TypeError(
                    f"inputs are {inputs.dtype} but the model's parameters are {p.dtype}; "
                    f"convert the inputs with inputs.to({p.dtype}) (or the model with "
                    f"model.to({inputs.dtype}))."
                )
            return


def validate_ground_truth(
    gt: torch.Tensor,
    n_features: int | None = None,
    n_samples: int | None = None,
    *,
    allow_all_ones: bool = False,
    name: str = "ground truth",
) -> torch.Tensor:
    """Check a ground-truth vector ``(n_features,)`` or matrix ``(n_samples, n_features)``.

    Parameters
    ----------
    gt
        Binary (or in ``[0, 1]``) ground truth.
    n_features
        Expected width (number of input features), if known.
    n_samples
        Expected number of rows of a matrix ground truth, if known.
    allow_all_ones
        Accept a ground truth where every feature is 1 (the prior then only asks
        for large attributions everywhere, which is rarely what is meant).
    name
        Name used in the error messages.

    Returns
    -------
    torch.Tensor
        The ground truth as a floating-point tensor (a new tensor when converted).

    Examples
    --------
    >>> import torch
    >>> validate_ground_truth(torch.tensor([1, 0, 0]), n_features=3)
    tensor([1., 0., 0.])
    """
    if not isinstance(gt, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor, got {type(gt).__name__}; convert it with "
            "torch.as_tensor(gt, dtype=torch.float32)."
        )
    if gt.dtype == torch.bool or not gt.is_floating_point():
        if gt.is_complex():
            raise TypeError(f"{name} must be real (binary or in [0, 1]), got {gt.dtype}.")
        gt = gt.to(torch.get_default_dtype())
    if gt.ndim not in (1, 2):
        raise ValueError(
            f"{name} must be a vector (n_features,) shared by all samples or a matrix "
            f"(n_samples, n_features), got shape {tuple(gt.shape)}."
        )
    if gt.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(gt.shape)}); give at least one feature.")
    check_finite(gt, name)
    if bool(((gt < 0) | (gt > 1)).any()):
        raise ValueError(
            f"{name} must be binary or in [0, 1]; found values in "
            f"[{float(gt.min()):g}, {float(gt.max()):g}]. Use 1 for features the model "
            "should be sensitive to and 0 for the rest."
        )
    if n_features is not None and gt.shape[-1] != n_features:
        raise ValueError(
            f"{name} has {gt.shape[-1]} features but the inputs have {n_features}; build "
            "the ground truth over the same features, in the same order, as the inputs."
        )
    if gt.ndim == 2 and n_samples is not None and gt.shape[0] != n_samples:
        raise ValueError(
            f"{name} matrix has {gt.shape[0]} rows but the minibatch has {n_samples} "
            "samples; pass the rows of the minibatch (gt[batch_index]) or a vector."
        )
    if not bool((gt > 0).any()):
        raise ValueError(
            f"{name} has no positive feature (all zeros); the prior would only push every "
            "attribution down. Check that the feature names matched."
        )
    if not allow_all_ones and bool((gt >= 1).all()):
        raise ValueError(
            f"{name} marks every feature as important (all ones), which carries no "
            "information; pass allow_all_ones=True if this is intended."
        )
    return gt
