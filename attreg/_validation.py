"""Input checks shared by the attribution methods, the priors and the losses.

Every check raises before any computation with a message that names the problem
and the fix.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "check_finite",
    "check_no_batchnorm_in_train_mode",
    "validate_ground_truth",
    "coupling_modules",
]

_COUPLING_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm,)


def check_finite(tensor: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``tensor`` holds NaN or infinite values."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        n_bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(
            f"{name} contains {n_bad} NaN or infinite value(s); attributions and their "
            "loss would be NaN. Clean or impute the data before computing attributions."
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


def check_no_batchnorm_in_train_mode(found: list[tuple[str, nn.Module]]) -> None:
    """Raise ``ValueError`` if any of the given BatchNorm modules is in train mode."""
    for name, m in found:
        if m.training:
            raise ValueError(
                f"Submodule '{name or type(m).__name__}' ({type(m).__name__}) is in train "
                "mode: it normalises with batch statistics, which couples the samples "
                "of a minibatch, so per-sample attributions would be wrong. Use "
                "nn.LayerNorm instead, put that module in eval mode (running "
                "statistics), or pass check_batchnorm=False if you accept the coupling."
            )


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
