"""Building scARE's attribution priors on a latent encoder from
:class:`~attreg_sc.settings.PriorSettings`: the one recipe of every model's training plan."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from attreg.constraint import ShareTarget
from attreg.prior import (
    AttributionPenalty,
    AttributionPrior,
    ExclusionPrior,
    PriorSet,
    make_method,
)
from attreg.reducers import Index, OutputUnits, RandomDirections, Reducer, resolve_reducer
from attreg_sc.settings import DIRECTION_REDUCERS, REDUCERS, PriorSettings

logger = logging.getLogger(__name__)

__all__ = ["REDUCERS", "DIRECTION_REDUCERS", "latent_reducer", "build_prior_set"]



def latent_reducer(
    name: str,
    units: list[int] | None,
    n_latent: int,
    n_directions: int,
    generator: torch.Generator,
    target_kind: str = "encoder",
) -> Reducer:
    """``F`` over the latent dimensions ``units`` (``None``: all) for reducer ``name``.

    Parameters
    ----------
    name
        Reducer name (:data:`REDUCERS`).
    units
        Latent dimensions ``F`` acts on (``None``: all).
    n_latent
        Latent dimensions of the model.
    n_directions
        Directions per step (``random_direction``).
    generator
        Random generator of the directions.
    target_kind
        ``"encoder"`` or ``"model"`` (always the sum).

    Examples
    --------
    >>> import torch
    >>> f = latent_reducer("random_direction", None, 4, 2, torch.Generator().manual_seed(0))
    >>> type(f).__name__
    'RandomDirections'
    """
    if target_kind == "model" or (units is None and name in ("sum", "mean", "l2")):
        return resolve_reducer("sum" if name in DIRECTION_REDUCERS else name)
    units = list(range(n_latent)) if units is None else units
    if name == "random_direction":
        return RandomDirections(n_directions, units=units, generator=generator)
    if name == "per_dimension":
        return OutputUnits(units)
    if name == "sum":
        return Index(units)
    raise ValueError(f"reducer {name!r} cannot act on a latent block; use a direction reducer.")


def build_prior_set(
    target: Callable,
    ground_truths: Mapping[str, Any],
    *,
    n_latent: int,
    generator: torch.Generator,
    settings: PriorSettings | None = None,
    latent_blocks: Mapping[str, list[int]] | None = None,
) -> PriorSet:
    """One :class:`attreg.AttributionPrior` per GT (named ``gt0``, ``gt1``, ... in the
    order of ``ground_truths``), plus an :class:`attreg.ExclusionPrior` per GT that owns a
    latent block; priors over the same latent units share one attribution pass.

    ``ground_truths`` maps names to a boolean vector over the features (one GT for every
    sample) or to anything else (a GT matrix given per call through ``gts=``).

    Parameters
    ----------
    target
        The explained function (the encoder's latent mean, or a :class:`attreg.LinearPrefix`).
    ground_truths
        ``{name: bool vector | GT given per call}``.
    n_latent
        Latent dimensions.
    generator
        Random generator of the draws.
    settings
        The prior's settings (default :class:`~attreg_sc.settings.PriorSettings()`); its
        ``w_attr`` is applied by the caller, not here, except with a ``target_share``:
        then it is each GT's starting multiplier (and the caller applies 1).
    latent_blocks
        ``{GT name: latent dimensions}`` (resolved:
        :meth:`~attreg_sc.settings.PriorSettings.resolve_blocks`).

    Examples
    --------
    >>> import numpy as np, torch
    >>> enc = torch.nn.Linear(6, 3)
    >>> priors = build_prior_set(enc, {"g": np.array([1, 1, 0, 0, 0, 0], bool)},
    ...                          n_latent=3, generator=torch.Generator().manual_seed(0))
    >>> float(priors(torch.randn(8, 6))) >= 0
    True
    """
    s = PriorSettings() if settings is None else settings
    if s.target == "model" and s.reducer in DIRECTION_REDUCERS:
        logger.info("target='model' explains the log reconstruction: reducer 'sum' is used")
    latent_blocks = dict(latent_blocks or {})
    methods: dict[tuple | None, Any] = {}

    def method_for(units: list[int] | None):
        key = None if units is None else tuple(units)
        if key not in methods:  # one attribution pass per distinct set of units
            # counts and GTs were validated before training: no per-step checks
            f = latent_reducer(s.reducer, units, n_latent, s.n_directions, generator, s.target)
            methods[key] = make_method(target, s.attribution, f, check_inputs=False)
        return methods[key]

    common = dict(
        n_samples=s.n_samples, n_steps=s.n_steps, generator=generator, check_inputs=False
    )
    all_dims = list(range(n_latent))
    priors: dict[str, AttributionPrior] = {}
    # a target share: each GT's weight is its own multiplier (w_attr inside it, not outside)
    scale = 1.0 if s.target_share is None else s.w_attr
    for i, (name, g) in enumerate(ground_truths.items()):
        vector = torch.from_numpy(g.astype(np.float32)) if isinstance(g, np.ndarray) else None
        block = latent_blocks.get(name)
        weight = s.gt_weights.get(name, 1.0) * scale
        share = None
        if s.target_share is not None and weight > 0:
            share = ShareTarget(
                s.target_share, initial_weight=weight, min_weight=min(1e-3, weight),
                max_weight=max(1e3, weight),
            )
        priors[f"gt{i}"] = AttributionPrior(
            target,
            vector,
            method=method_for(block),
            reparameterizer=s.reparameterizer,
            loss=s.loss,
            weight=weight,
            target_share=share,
            **common,
        )
        priors[f"gt{i}"].name = str(name)  # messages name the user's GT
        rest = [d for d in all_dims if block is not None and d not in block]
        if rest and vector is not None and s.w_exclusion > 0:
            priors[f"gt{i}_exclusion"] = ExclusionPrior(
                target, vector, method=method_for(rest), weight=weight * s.w_exclusion, **common
            )
    if s.w_sparsity > 0:  # GT-free: 1 - Gini of the mean |attribution| (>= 0, as the others)
        priors["sparsity"] = AttributionPenalty(
            target, _gini_penalty, method=method_for(None), weight=s.w_sparsity * scale,
            **common,
        )
    return PriorSet(priors, s.aggregation)


def _gini_penalty(attributions: torch.Tensor) -> torch.Tensor:
    """``1 - Gini(mean_i |a_i|)``: :class:`attreg.penalties.GiniSparsity` plus one."""
    from attreg.functional import gini_sparsity_loss

    return 1.0 + gini_sparsity_loss(attributions)
