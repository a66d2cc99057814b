"""Reparameterizers: map attributions to ``[0, 1]`` so they compare with a binary GT.

Module forms of the functions in :mod:`attreg.functional`; stateless and composable.

Examples
--------
>>> import torch
>>> a = torch.tensor([[0., -2., 1.]])
>>> AbsMinMax()(a)
tensor([[0.0000, 1.0000, 0.5000]])
>>> Compose(AbsMax(), Sigmoid(temperature=0.5))(a).shape
torch.Size([1, 3])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from attreg import functional as AF

__all__ = [
    "Sigmoid",
    "AbsMinMax",
    "AbsMax",
    "Softmax",
    "Share",
    "Identity",
    "Compose",
    "resolve_reparameterizer",
]


class Sigmoid(nn.Module):
    """``sigmoid(a / temperature)``.

    Parameters
    ----------
    temperature
        ``a`` is divided by it before the sigmoid.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.temperature = temperature

    def forward(self, attributions: torch.Tensor) -> torch.Tensor:
        return AF.sigmoid(attributions, self.temperature)


class AbsMinMax(nn.Module):
    """``|a|`` min-max scaled per sample; constant rows give 0 (no NaN)."""

    def forward(self, attributions: torch.Tensor) -> torch.Tensor:
        return AF.abs_minmax(attributions)


class AbsMax(nn.Module):
    """``|a| / max |a|`` per sample; zero rows give 0."""

    def forward(self, attributions: torch.Tensor) -> torch.Tensor:
        return AF.abs_max(attributions)


class Softmax(nn.Module):
    """Softmax of ``|a| / temperature`` over each sample's features.

    Parameters
    ----------
    temperature
        ``|a|`` is divided by it before the softmax.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, attributions: torch.Tensor) -> torch.Tensor:
        return AF.softmax(attributions, self.temperature)


class Share(nn.Module):
    """``|a| / sum |a|`` per sample (see :func:`attreg.functional.share`)."""

    def forward(self, attributions: torch.Tensor) -> torch.Tensor:
        return AF.share(attributions)


class Identity(nn.Module):
    """No change."""

    def forward(self, attributions: torch.Tensor) -> torch.Tensor:
        return attributions


class Compose(nn.Sequential):
    """Apply reparameterizers in order."""


_NAMED: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": Sigmoid,
    "abs_minmax": AbsMinMax,
    "abs_max": AbsMax,
    "softmax": Softmax,
    "share": Share,
    "identity": Identity,
    "none": Identity,
}


def resolve_reparameterizer(spec: str | Callable | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Name (``"sigmoid"``, ``"abs_minmax"``, ``"abs_max"``, ``"softmax"``, ``"share"``,
    ``"identity"``),
    callable or ``None`` (identity) -> a callable.

    Parameters
    ----------
    spec
        A name, a callable ``attributions -> scores``, or ``None`` (identity).
    """
    if spec is None:
        return Identity()
    if isinstance(spec, str):
        try:
            return _NAMED[spec.lower()]()
        except KeyError:
            raise ValueError(
                f"unknown reparameterizer {spec!r}; use one of {sorted(_NAMED)} or a callable."
            ) from None
    if callable(spec):
        return spec
    raise TypeError(f"reparameterizer must be a name or callable, got {type(spec).__name__}.")
