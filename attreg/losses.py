"""Losses between reparameterized attributions and a ground truth (module forms).

Examples
--------
>>> import torch
>>> loss = MSELoss()
>>> float(loss(torch.tensor([[1., 0.]]), torch.tensor([1., 0.])))
0.0
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from attreg import functional as AF

__all__ = ["MSELoss", "MAELoss", "ExcludedShareLoss", "OutsideShareLoss", "resolve_loss"]


class _FeatureWeightedLoss(nn.Module):
    def __init__(self, feature_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        if feature_weight is not None:
            self.register_buffer("feature_weight", torch.as_tensor(feature_weight).float())
        else:
            self.feature_weight = None


class MSELoss(_FeatureWeightedLoss):
    """Mean squared error, optionally weighted per feature.

    Parameters
    ----------
    feature_weight
        Per-feature weights (``None``: 1).
    """

    def forward(self, scores: torch.Tensor, ground_truth: torch.Tensor) -> torch.Tensor:
        return AF.mse_loss(scores, ground_truth, self.feature_weight)


class MAELoss(_FeatureWeightedLoss):
    """Mean absolute error, optionally weighted per feature.

    Parameters
    ----------
    feature_weight
        Per-feature weights (``None``: 1).
    """

    def forward(self, scores: torch.Tensor, ground_truth: torch.Tensor) -> torch.Tensor:
        return AF.mae_loss(scores, ground_truth, self.feature_weight)


class ExcludedShareLoss(nn.Module):
    """Mean share of attribution on the features marked 1 in the "ground truth" (here: the
    features to stay insensitive to); see :func:`attreg.functional.excluded_share_loss`."""

    feature_weight = None

    def forward(self, scores: torch.Tensor, excluded: torch.Tensor) -> torch.Tensor:
        return AF.excluded_share_loss(scores, excluded)


class OutsideShareLoss(nn.Module):
    """Share of attribution outside the ground truth (1 - GT share), meant for the
    ``"share"`` reparameterization; see :func:`attreg.functional.outside_share_loss`."""

    feature_weight = None

    def forward(self, scores: torch.Tensor, ground_truth: torch.Tensor) -> torch.Tensor:
        return AF.outside_share_loss(scores, ground_truth)


def resolve_loss(
    spec: str | Callable, feature_weight: torch.Tensor | None = None
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``"mse"``/``"mae"``/``"outside_share"`` or a callable ``(scores, gt) -> scalar`` ->
    a loss callable.

    Parameters
    ----------
    spec
        ``"mse"``, ``"mae"``, ``"outside_share"`` or a callable ``(scores, gt) -> scalar``.
    feature_weight
        Per-feature weights for the named losses.
    """
    if isinstance(spec, str):
        if spec.lower() == "outside_share":
            if feature_weight is not None:
                raise ValueError("feature_weight applies to 'mse' and 'mae' only.")
            return OutsideShareLoss()
        table = {"mse": MSELoss, "l2": MSELoss, "mae": MAELoss, "l1": MAELoss}
        try:
            return table[spec.lower()](feature_weight)
        except KeyError:
            raise ValueError(
                f"unknown loss {spec!r}; use 'mse', 'mae' or a callable (scores, gt) -> scalar."
            ) from None
    if callable(spec):
        if feature_weight is not None:
            raise ValueError("feature_weight applies to the named losses only.")
        return spec
    raise TypeError(f"loss must be a name or a callable, got {type(spec).__name__}.")
