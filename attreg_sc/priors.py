"""Building scARE's attribution priors on a latent encoder: the one recipe shared by
:class:`attreg_sc.SCARE` and the scvi-tools plans (:mod:`attreg_sc.scvi_tools`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from attreg.prior import AttributionPrior, ExclusionPrior, PriorSet, make_method
from attreg.reducers import Index, OutputUnits, RandomDirections, Reducer, resolve_reducer

logger = logging.getLogger(__name__)

__all__ = ["REDUCERS", "DIRECTION_REDUCERS", "latent_reducer", "build_prior_set"]

REDUCERS = ("random_direction", "per_dimension", "sum", "mean", "l2")
DIRECTION_REDUCERS = ("random_direction", "per_dimension")


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
    attribution: str = "eg",
    target_kind: str = "encoder",
    reducer: str = "random_direction",
    reparameterizer: str = "share",
    loss: str = "outside_share",
    aggregation: str = "sum",
    n_samples: int = 1,
    n_steps: int = 20,
    n_directions: int = 1,
    w_exclusion: float = 1.0,
    latent_blocks: Mapping[str, list[int]] | None = None,
    gt_weights: Mapping[str, float] | None = None,
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
    attribution, target_kind, reducer, reparameterizer, loss, aggregation
        As in :class:`attreg_sc.SCARE` (``target_kind`` is its ``target``).
    n_samples, n_steps, n_directions, w_exclusion
        As in :class:`attreg_sc.SCARE`.
    latent_blocks
        ``{GT name: latent dimensions}``.
    gt_weights
        ``{GT name: weight}`` (default 1).

    Examples
    --------
    >>> import numpy as np, torch
    >>> enc = torch.nn.Linear(6, 3)
    >>> priors = build_prior_set(enc, {"g": np.array([1, 1, 0, 0, 0, 0], bool)},
    ...                          n_latent=3, generator=torch.Generator().manual_seed(0))
    >>> float(priors(torch.randn(8, 6))) >= 0
    True
    """
    if target_kind == "model" and reducer in DIRECTION_REDUCERS:
        logger.info("target='model' explains the log reconstruction: reducer 'sum' is used")
    latent_blocks, gt_weights = dict(latent_blocks or {}), dict(gt_weights or {})
    methods: dict[tuple | None, Any] = {}

    def method_for(units: list[int] | None):
        key = None if units is None else tuple(units)
        if key not in methods:  # one attribution pass per distinct set of units
            # counts and GTs were validated before training: no per-step checks
            f = latent_reducer(reducer, units, n_latent, n_directions, generator, target_kind)
            methods[key] = make_method(target, attribution, f, check_inputs=False)
        return methods[key]

    common = dict(n_samples=n_samples, n_steps=n_steps, generator=generator, check_inputs=False)
    all_dims = list(range(n_latent))
    priors: dict[str, AttributionPrior] = {}
    for i, (name, g) in enumerate(ground_truths.items()):
        vector = torch.from_numpy(g.astype(np.float32)) if isinstance(g, np.ndarray) else None
        block = latent_blocks.get(name)
        weight = gt_weights.get(name, 1.0)
        priors[f"gt{i}"] = AttributionPrior(
            target,
            vector,
            method=method_for(block),
            reparameterizer=reparameterizer,
            loss=loss,
            weight=weight,
            **common,
        )
        rest = [d for d in all_dims if block is not None and d not in block]
        if rest and vector is not None and w_exclusion > 0:
            priors[f"gt{i}_exclusion"] = ExclusionPrior(
                target, vector, method=method_for(rest), weight=weight * w_exclusion, **common
            )
    return PriorSet(priors, aggregation)
