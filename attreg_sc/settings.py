"""The attribution prior's settings, declared once.

:class:`PriorSettings` is the one place where scARE's prior options, their defaults and
their checks live. The model (:class:`attreg_sc.SCARE` and every class made by
:func:`attreg_sc.with_prior`), the command line, saved files and the report all read and
write this object; a file's settings go through the same checks as the constructor's.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "PriorSettings", "REDUCERS", "DIRECTION_REDUCERS", "ATTRIBUTIONS", "TARGETS", "REFERENCES"
]

REDUCERS = ("random_direction", "per_dimension", "sum", "mean", "l2")
DIRECTION_REDUCERS = ("random_direction", "per_dimension")
ATTRIBUTIONS = ("eg", "ig")
TARGETS = ("encoder", "model")
REFERENCES = ("batch", "label")
AGGREGATIONS = ("sum", "squared_sum")
LOSSES = ("outside_share", "mse", "mae")
REPARAMETERIZERS = ("share", "abs_minmax", "abs_max", "sigmoid", "softmax", "identity")
#: largest n_samples / n_steps / n_directions accepted (each multiplies a step's cost)
MAX_DRAWS = 10_000


def _is_int(value: Any) -> bool:
    import numpy as np

    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    import numpy as np

    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


@dataclass(frozen=True)
class PriorSettings:
    """How scARE's attribution prior is computed and weighted.

    Every field is checked when the object is made (a bad value raises ``ValueError`` or
    ``TypeError`` naming the field and what it accepts), so a model never trains with a
    setting that makes the prior meaningless.

    Parameters
    ----------
    w_attr
        ``w_A``, the weight of ``L_A`` (0: no prior). The default, 30, was chosen by
        measurement with the default reducer and loss (docs/single_cell.md, "Which
        reducer").
    attribution
        ``"eg"`` (Expected Gradients, ``n_samples`` references from the minibatch) or
        ``"ig"`` (Integrated Gradients, ``n_steps`` from zeros).
    target
        ``"encoder"`` (``F`` of the latent mean; default) or ``"model"`` (``F`` of the log
        reconstructed mean; :class:`attreg_sc.SCARE` only).
    reducer
        ``F`` over the latent: ``"random_direction"`` (default: ``n_directions`` fresh
        random unit directions per step, so that every latent direction is constrained,
        not only their sum), ``"per_dimension"``, or the paper's ``"sum"``; ``"mean"``,
        ``"l2"``.
    reparameterizer, loss
        See :class:`attreg.AttributionPrior`. Default ``"share"`` / ``"outside_share"``:
        the loss is the share of each direction's attribution outside the GT genes.
    aggregation
        How several GTs' losses combine: ``"sum"`` or ``"squared_sum"``.
    n_samples, n_steps, n_directions
        EG references per cell, IG steps, random directions per step.
    w_exclusion
        Weight of the exclusion prior of a GT that owns a latent block, relative to the
        GT's weight.
    latent_blocks
        ``{GT name: n_dims or [latent dims]}``: the GT's prior acts on its own block of
        the latent (sizes are laid out consecutively from dimension 0).
    gt_weights
        ``{GT name: weight}`` (default 1 each).
    seed
        Seed of the prior's draws (EG references and alphas, random directions).
    target_share
        ``None`` (default): ``w_attr`` is a fixed weight. A number in ``(0, 1)``: the
        GT share each GT's prior aims at; its weight becomes a Lagrange multiplier that
        starts at ``w_attr`` (times the GT's ``gt_weights`` entry) and is updated by dual
        ascent after every training step (:class:`attreg.ShareTarget`, capped at 1000,
        with a warning naming the GT when the cap is reached short of the target). The
        multipliers and shares are in the history (``prior_weight_gt0``,
        ``prior_share_gt0``, ...). Needs the share reparameterizer and loss. Not the
        default: on the project's evaluation panel a target of 0.9 reached the share but
        fragmented the cell types of most gene sets (docs/single_cell.md, "The
        target-share evaluation panel").
    w_sparsity
        Weight, relative to ``w_attr``, of a prior that needs no GT: Erion et al.'s global
        sparsity, ``1 - Gini`` of the minibatch's mean absolute attribution per gene
        (:class:`attreg.penalties.GiniSparsity`, shifted to be >= 0), on the prior's
        directions. It concentrates the encoder's attribution on few genes (the scARE
        paper's recipe for gene panels, :mod:`attreg_sc.panel`); 0 (default): off. With no
        GT, ``set_prior(None, w_sparsity=...)`` trains with this prior alone.
    references
        Where EG draws each cell's references: ``"batch"`` (default: any other cell of
        the minibatch) or ``"label"`` (another cell of the minibatch with the same
        registered label, ``setup_anndata(labels_key=...)``, e.g. the cell type; a cell
        alone in its label, or of SCANVI's unlabelled category, draws any other cell).
        With ``"label"`` the prior shapes what
        distinguishes a cell from others of its type and leaves the differences between
        types to every gene, where FSSF looks for subclusters founded on the GT
        (measured in docs/single_cell.md, "References within the cell type"). EG only.

    Examples
    --------
    >>> s = PriorSettings(w_attr=10.0, reducer="sum")
    >>> s.to_dict()["reducer"], s.replace(seed=3).seed
    ('sum', 3)
    >>> PriorSettings(n_samples=0)
    Traceback (most recent call last):
    ...
    ValueError: n_samples must be an integer in 1..10000, got 0.
    """

    w_attr: float = 30.0
    attribution: str = "eg"
    target: str = "encoder"
    reducer: str = "random_direction"
    reparameterizer: str = "share"
    loss: str = "outside_share"
    aggregation: str = "sum"
    n_samples: int = 1
    n_steps: int = 20
    n_directions: int = 1
    w_exclusion: float = 1.0
    latent_blocks: Mapping[str, Any] = field(default_factory=dict)
    gt_weights: Mapping[str, float] = field(default_factory=dict)
    seed: int = 0
    target_share: float | None = None
    w_sparsity: float = 0.0
    references: str = "batch"

    def __post_init__(self) -> None:
        for name in ("w_attr", "w_exclusion", "w_sparsity"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
            object.__setattr__(self, name, float(value))
        for name, choices in (
            ("attribution", ATTRIBUTIONS),
            ("target", TARGETS),
            ("reducer", REDUCERS),
            ("reparameterizer", REPARAMETERIZERS),
            ("loss", LOSSES),
            ("aggregation", AGGREGATIONS),
            ("references", REFERENCES),
        ):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in choices:
                raise ValueError(f"unknown {name} {value!r}; use one of {list(choices)}.")
        for name in ("n_samples", "n_steps", "n_directions"):
            value = getattr(self, name)
            if not _is_int(value) or not 1 <= value <= MAX_DRAWS:
                raise ValueError(
                    f"{name} must be an integer in 1..{MAX_DRAWS}, got {value!r}."
                )
            object.__setattr__(self, name, int(value))
        if not _is_int(self.seed) or not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be an integer in 0..2**63-1, got {self.seed!r}.")
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "target_share", _target_share(self))
        if self.w_sparsity > 0 and self.w_attr == 0:
            raise ValueError(
                f"w_sparsity={self.w_sparsity} is relative to w_attr, and w_attr=0 turns "
                "every prior off: give w_attr > 0 (e.g. the default 30), or w_sparsity=0."
            )
        if self.references != "batch" and self.attribution != "eg":
            raise ValueError(
                f"references={self.references!r} chooses EG's references; attribution="
                f"{self.attribution!r} has none. Use attribution='eg' or references='batch'."
            )
        object.__setattr__(self, "latent_blocks", _blocks(self.latent_blocks))
        object.__setattr__(self, "gt_weights", _weights(self.gt_weights))

    # -- building and reading ----------------------------------------------------------
    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The field names (what a constructor or a file may set)."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "the settings") -> PriorSettings:
        """Settings from a plain mapping (a saved file's, the CLI's); unknown keys and bad
        values are refused, naming ``source`` and the field.

        Examples
        --------
        >>> PriorSettings.from_dict({"w_attr": 5}).w_attr
        5.0
        >>> PriorSettings.from_dict({"w_atr": 5}, source="model.pt")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: model.pt: unknown prior setting(s) ['w_atr']; known: ['w_attr', ...]
        """
        if not isinstance(values, Mapping):
            raise ValueError(f"{source}: the prior settings must be a mapping, got "
                             f"{type(values).__name__}.")
        unknown = sorted(map(str, set(values) - set(cls.names())))
        if unknown:
            raise ValueError(
                f"{source}: unknown prior setting(s) {unknown}; known: {list(cls.names())}"
            )
        try:
            return cls(**dict(values))
        except (TypeError, ValueError) as err:
            raise type(err)(f"{source}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain values (what a file stores)."""
        out = dataclasses.asdict(self)
        out["latent_blocks"] = {k: (v if isinstance(v, int) else list(v))
                                for k, v in self.latent_blocks.items()}
        out["gt_weights"] = dict(self.gt_weights)
        return out

    def replace(self, **changes: Any) -> PriorSettings:
        """A copy with ``changes`` (checked like the constructor's)."""
        unknown = sorted(set(changes) - set(self.names()))
        if unknown:
            raise TypeError(f"unknown prior setting(s) {unknown}; use {list(self.names())}.")
        return dataclasses.replace(self, **changes)

    def resolve_blocks(self, gt_names: list[str], n_latent: int) -> dict[str, list[int]]:
        """``{GT name: latent dims}`` for these GTs and ``n_latent`` dimensions; sizes are
        laid out consecutively from 0. Names that are not GTs, and blocks that overlap or
        leave the latent, are refused."""
        unknown = sorted(set(self.latent_blocks) - set(gt_names))
        if unknown:
            raise KeyError(f"latent_blocks names {unknown} are not GT names {gt_names}.")
        unknown = sorted(set(self.gt_weights) - set(gt_names))
        if unknown:
            raise KeyError(f"gt_weights names {unknown} are not GT names {gt_names}.")
        out: dict[str, list[int]] = {}
        start = 0
        for name, spec in self.latent_blocks.items():
            if isinstance(spec, int):
                dims = list(range(start, start + spec))
                start += spec
            else:
                dims = list(spec)
            if any(not 0 <= d < n_latent for d in dims):
                raise ValueError(
                    f"latent block {name!r} = {dims} must be dimensions in 0..{n_latent - 1}."
                )
            out[name] = dims
        taken = [d for dims in out.values() for d in dims]
        if len(set(taken)) != len(taken):
            raise ValueError(f"latent blocks overlap: {out}; give each GT its own dimensions.")
        return out


def _target_share(s: PriorSettings) -> float | None:
    value = s.target_share
    if value is None:
        return None
    if not _is_number(value) or not math.isfinite(value) or not 0 < value < 1:
        raise ValueError(f"target_share must be None or a number in (0, 1), got {value!r}.")
    if s.reparameterizer != "share" or s.loss != "outside_share":
        raise ValueError(
            "target_share needs reparameterizer='share' and loss='outside_share' (the GT "
            f"share is one minus that loss), got {s.reparameterizer!r} and {s.loss!r}."
        )
    if not 1e-3 <= s.w_attr <= 1e3:
        raise ValueError(
            "with target_share, w_attr is the multiplier's starting value and must be in "
            f"[0.001, 1000], got {s.w_attr}."
        )
    return float(value)


def _blocks(blocks: Any) -> dict[str, Any]:
    if blocks is None:
        return {}
    if not isinstance(blocks, Mapping):
        raise TypeError(f"latent_blocks must be a dict {{GT name: dims}}, got "
                        f"{type(blocks).__name__}.")
    out: dict[str, Any] = {}
    for name, spec in blocks.items():
        if _is_int(spec):
            if not 1 <= spec <= 100_000:
                raise ValueError(f"latent block {name!r} needs 1..100000 dimensions, got {spec}.")
            out[str(name)] = int(spec)
            continue
        if isinstance(spec, (str, bytes)) or not hasattr(spec, "__iter__"):
            raise TypeError(
                f"latent block {name!r} must be a number of dimensions or a list of them, "
                f"got {spec!r}."
            )
        dims = list(spec)
        if not dims or not all(_is_int(d) and 0 <= d < 100_000 for d in dims):
            raise ValueError(
                f"latent block {name!r} = {dims!r} must be a non-empty list of dimensions."
            )
        if len(set(dims)) != len(dims):
            raise ValueError(f"latent block {name!r} = {dims} repeats a dimension.")
        out[str(name)] = [int(d) for d in dims]
    return out


def _weights(weights: Any) -> dict[str, float]:
    if weights is None:
        return {}
    if not isinstance(weights, Mapping):
        raise TypeError(f"gt_weights must be a dict {{GT name: weight}}, got "
                        f"{type(weights).__name__}.")
    out = {}
    for name, w in weights.items():
        if not _is_number(w) or not math.isfinite(w) or w < 0:
            raise ValueError(f"gt_weights[{name!r}] must be a finite number >= 0, got {w!r}.")
        out[str(name)] = float(w)
    return out
