"""Penalties on attributions that need no ground truth (Erion et al., 2021).

Module forms of :func:`attreg.functional.total_variation`,
:func:`~attreg.functional.graph_laplacian_penalty` and
:func:`~attreg.functional.gini_sparsity_loss`; use them with
:class:`attreg.AttributionPenalty` (alone or in a :class:`attreg.PriorSet` next to
ground-truth priors).

Examples
--------
>>> import torch
>>> tv = TotalVariation(shape=(2, 2))
>>> tv(torch.tensor([[0.0, 1.0, 0.0, 1.0]])).item()
2.0
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from attreg import functional as AF

__all__ = ["GiniSparsity", "GraphLaplacian", "TotalVariation", "resolve_penalty"]


class TotalVariation(nn.Module):
    """Total variation of attribution maps (smooth maps over an image grid).

    Parameters
    ----------
    shape
        The grid of one sample's attributions, e.g. ``(28, 28)`` or ``(3, 32, 32)``:
        flat attributions ``(n, H*W)`` are viewed as ``(n, *shape)``. ``None``: the
        attributions already have their spatial shape.
    p
        1 (anisotropic TV, Erion et al.) or 2 (squared differences).
    """

    def __init__(self, shape: Sequence[int] | None = None, p: int = 1) -> None:
        super().__init__()
        if p not in (1, 2):
            raise ValueError(f"p must be 1 or 2, got {p!r}.")
        self.shape = None if shape is None else tuple(int(s) for s in shape)
        self.p = p

    def forward(self, attributions: torch.Tensor) -> torch.Tensor:
        a = attributions if self.shape is None else attributions.reshape(-1, *self.shape)
        return AF.total_variation(a, self.p)


class GraphLaplacian(nn.Module):
    """``phi^T L phi`` over a feature graph, ``phi = mean_i |a_i|`` (similar importance
    for linked features, e.g. interacting genes).

    Parameters
    ----------
    adjacency
        ``(d, d)`` symmetric non-negative weights, dense or sparse (``torch.sparse_coo``
        or ``sparse_csr``; kept sparse).
    """

    def __init__(self, adjacency: torch.Tensor) -> None:
        super().__init__()
        if adjacency.ndim != 2 or adjacency.shape[0] != adjacency.shape[1]:
            raise ValueError(f"adjacency must be square (d, d), got {tuple(adjacency.shape)}.")
        dense = (
            adjacency.to_dense()
            if adjacency.is_sparse or adjacency.layout != torch.strided
            else adjacency
        )
        if not bool(torch.isfinite(dense).all()) or bool((dense < 0).any()):
            raise ValueError("adjacency weights must be finite and >= 0.")
        if not torch.allclose(dense, dense.T):
            raise ValueError("adjacency must be symmetric (an undirected feature graph).")
        if adjacency.layout == torch.sparse_csr:
            adjacency = adjacency.to_sparse_coo()
        self.register_buffer(
            "adjacency", adjacency.coalesce() if adjacency.is_sparse else adjacency
        )

    def forward(self, attributions: torch.Tensor) -> torch.Tensor:
        return AF.graph_laplacian_penalty(attributions, self.adjacency)


class GiniSparsity(nn.Module):
    """``-Gini(mean_i |a_i|)``: global importance concentrated on few features."""

    def forward(self, attributions: torch.Tensor) -> torch.Tensor:
        return AF.gini_sparsity_loss(attributions)


def resolve_penalty(spec) -> nn.Module:
    """``"total_variation"``, ``"gini"`` or a callable ``attributions -> scalar``.

    Parameters
    ----------
    spec
        A name or a callable ``attributions -> scalar``.
    """
    if isinstance(spec, str):
        table = {"total_variation": TotalVariation, "tv": TotalVariation, "gini": GiniSparsity}
        try:
            return table[spec.lower()]()
        except KeyError:
            raise ValueError(
                f"unknown penalty {spec!r}; use 'total_variation', 'gini', a GraphLaplacian "
                "or a callable attributions -> scalar."
            ) from None
    if callable(spec):
        return spec
    raise TypeError(f"penalty must be a name or a callable, got {type(spec).__name__}.")
