r"""A prior that aims at a share of attribution, not at a weight.

A fixed weight ``w_A`` asks more of a large ground truth than of a small one: the same
weight that puts 90% of a model's attribution on 1,000 features puts 30% on 60. A
*target share* states the goal instead ("90% of the attribution on the GT features")
and lets training find the weight: the constraint :math:`s \ge \tau` on the GT share
:math:`s` (one minus the ``outside_share`` loss) is enforced with a Lagrange multiplier
:math:`\lambda` updated by dual ascent after every training step, as GECO (Rezende &
Viola, 2018) does for a VAE's reconstruction constraint:

.. math::

    \bar s_t = \rho\, \bar s_{t-1} + (1 - \rho)\, s_t, \qquad
    \log \lambda_{t+1} = \mathrm{clip}\big(\log \lambda_t + \eta\,(\tau - \bar s_t),\;
    \log \lambda_{\min},\; \log \lambda_{\max}\big)

The prior's loss is the constraint's exact penalty :math:`\lambda_t \max(0, \tau - s_t)`
with :math:`s_t = 1 - L_A` of the minibatch: it pushes the share up to the target and
not beyond. (A loss :math:`\lambda_t L_A` without the hinge, GECO's form, oscillates
here: the multiplier, lagging the share, drives it to about 1, then falls until the
share collapses, and again: see docs/concepts.md, "Target shares".) The update is
multiplicative (a weight may need to move by orders of magnitude between ground
truths), driven by a moving average
of the share (a minibatch's share is noisy; the average keeps :math:`\lambda` from
chasing it) and capped: a target the model cannot reach raises :math:`\lambda` to
``max_weight`` and no further, so the task loss cannot collapse, and
:class:`ShareConstraint` warns once, naming the prior and the share reached, when the
multiplier has stayed at the cap short of the target for 200 steps while the share
stopped rising (by less than 0.02; a multiplier that sits at the cap while the model
catches up is not warned about). Calls in evaluation
mode weight the shortfall by the starting weight, so that a validation objective
compares epochs on one scale (early stopping on a loss whose weight keeps rising would
stop the run because of the weight).

:func:`dual_ascent_step` is the update as a pure function; :class:`ShareConstraint`
holds its state (buffers: saved in ``state_dict``, no host synchronisation per step);
``AttributionPrior(..., target_share=...)`` uses it.

Examples
--------
>>> import torch
>>> c = ShareConstraint(ShareTarget(0.9, initial_weight=1.0))
>>> for _ in range(50):  # the share stays below the target: the weight rises
...     c.update(torch.tensor(0.5))
>>> c.multiplier > 1.0
True
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ShareTarget", "ShareConstraint", "dual_ascent_step"]

#: calls between the host-side checks of a capped multiplier (each one synchronises)
_CHECK_EVERY = 50
#: consecutive checks at the cap, short of the target and with the share no longer rising,
#: before the warning (a multiplier can sit at the cap while the model catches up: a
#: transient, not an unreachable target)
_CAPPED_CHECKS = 4


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}.")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    return value


@dataclass(frozen=True)
class ShareTarget:
    """The settings of a target share, declared once.

    Parameters
    ----------
    target
        The GT share to reach, in ``(0, 1)``: the mean over rows (and directions) of the
        share of each attribution map on the GT features.
    initial_weight
        :math:`\\lambda_0`, the weight before the first update (> 0).
    rate
        :math:`\\eta`: change of :math:`\\log\\lambda` per step and unit of shortfall
        (``0.05``: a share 0.5 below its target multiplies the weight by about 1.025 per
        step, 12x per 100 steps).
    smoothing
        :math:`\\rho` of the share's moving average, in ``[0, 1)``.
    min_weight, max_weight
        Bounds of :math:`\\lambda` (``0 < min_weight <= initial_weight <= max_weight``).
        The cap is what keeps an unreachable target from overwhelming the task loss.

    Examples
    --------
    >>> ShareTarget(0.9).max_weight
    1000.0
    >>> ShareTarget(1.2)
    Traceback (most recent call last):
    ...
    ValueError: target share must be in (0, 1), got 1.2.
    """

    target: float
    initial_weight: float = 1.0
    rate: float = 0.05
    smoothing: float = 0.9
    min_weight: float = 1e-3
    max_weight: float = 1e3

    def __post_init__(self) -> None:
        for name in ("target", "initial_weight", "rate", "smoothing", "min_weight",
                     "max_weight"):
            object.__setattr__(self, name, _number(name, getattr(self, name)))
        if not 0.0 < self.target < 1.0:
            raise ValueError(f"target share must be in (0, 1), got {self.target}.")
        if not self.rate > 0:
            raise ValueError(f"rate must be > 0, got {self.rate}.")
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing}.")
        if not 0 < self.min_weight <= self.initial_weight <= self.max_weight:
            raise ValueError(
                "the weights must satisfy 0 < min_weight <= initial_weight <= max_weight, "
                f"got {self.min_weight}, {self.initial_weight}, {self.max_weight}."
            )


def dual_ascent_step(
    log_multiplier: torch.Tensor,
    share_average: torch.Tensor,
    share: torch.Tensor,
    settings: ShareTarget,
    first: bool | torch.Tensor = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One dual-ascent update: ``(log_multiplier, share_average)`` after observing
    ``share``. Pure: the inputs are not modified.

    Parameters
    ----------
    log_multiplier
        :math:`\\log\\lambda_t` (a scalar tensor).
    share_average
        :math:`\\bar s_{t-1}`.
    share
        The step's GT share :math:`s_t` (detached).
    settings
        Target, rate, smoothing and bounds.
    first
        The first observation: the average starts at ``share``.

    Examples
    --------
    >>> s = ShareTarget(0.8, rate=0.1)
    >>> lm, avg = dual_ascent_step(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0.3),
    ...                            s, first=True)
    >>> round(float(avg), 3), round(float(lm), 3)  # 0.1 * (0.8 - 0.3)
    (0.3, 0.05)
    """
    share = share.detach().to(log_multiplier.dtype)
    blended = settings.smoothing * share_average + (1.0 - settings.smoothing) * share
    average = torch.where(torch.as_tensor(first, device=share.device), share, blended)
    step = log_multiplier + settings.rate * (settings.target - average)
    bounded = step.clamp(math.log(settings.min_weight), math.log(settings.max_weight))
    return bounded, average


class ShareConstraint(nn.Module):
    """The state of a target share: :math:`\\log\\lambda`, the share's moving average and
    the number of updates (buffers, so they travel with ``state_dict`` and checkpoints).

    Parameters
    ----------
    settings
        A :class:`ShareTarget`.
    name
        Used in the warning (e.g. the prior's or the GT's name).

    Examples
    --------
    >>> import torch
    >>> c = ShareConstraint(ShareTarget(0.5, initial_weight=2.0))
    >>> c.update(torch.tensor(0.5)); round(c.multiplier, 6)  # on target: unchanged
    2.0
    >>> c.state()["share"]
    0.5
    """

    def __init__(self, settings: ShareTarget, name: str | None = None) -> None:
        super().__init__()
        if not isinstance(settings, ShareTarget):
            raise TypeError(f"settings must be a ShareTarget, got {type(settings).__name__}.")
        self.settings = settings
        self.name = name
        self._warned = False
        self._updates = 0  # host-side count: the cap's check needs no synchronisation to time
        self._capped = 0  # consecutive checks found at the cap short of the target
        self._capped_from = 0.0  # the share at the first of them
        self.register_buffer(
            "log_multiplier", torch.tensor(math.log(settings.initial_weight), dtype=torch.float64)
        )
        self.register_buffer("share_average", torch.tensor(float("nan"), dtype=torch.float64))
        self.register_buffer("steps", torch.tensor(0, dtype=torch.int64))

    def weight(self, like: torch.Tensor) -> torch.Tensor:
        """:math:`\\lambda` as a tensor of ``like``'s dtype and device (no host sync)."""
        return self.log_multiplier.exp().to(device=like.device, dtype=like.dtype)

    @torch.no_grad()
    def update(self, share: torch.Tensor) -> None:
        """Observe one training step's GT share and move :math:`\\lambda` (in place on the
        buffers; on the device, without a host synchronisation except every
        ``_CHECK_EVERY`` updates, when a capped multiplier is checked). Under
        ``torch.distributed`` the share is averaged over the ranks first, so that every
        rank holds the same multiplier."""
        share = share.detach().to(self.log_multiplier.device, torch.float64)
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():  # one multiplier for all ranks
            share = share.clone()
            dist.all_reduce(share)
            share = share / dist.get_world_size()
        lm, avg = dual_ascent_step(
            self.log_multiplier, self.share_average, share, self.settings, first=self.steps == 0
        )
        self.log_multiplier.copy_(lm)
        self.share_average.copy_(avg)
        self.steps += 1
        self._updates += 1
        if not self._warned and self._updates % _CHECK_EVERY == 0:
            self._check_cap()

    def _check_cap(self) -> None:
        s = self.settings
        state = self.state()
        capped = state["weight"] >= s.max_weight * (1 - 1e-6)
        if not (capped and state["share"] < s.target - 0.02):
            self._capped = 0
            return
        if self._capped == 0:
            self._capped_from = state["share"]
        self._capped += 1
        if self._capped < _CAPPED_CHECKS:
            return
        if state["share"] >= self._capped_from + 0.02:  # still rising: the model catches up
            self._capped, self._capped_from = 1, state["share"]
            return
        # at the cap, short of the target, and stalled
        self._warned = True
        who = f"prior {self.name!r}" if self.name else "the prior"
        warnings.warn(
            f"{who}: target share {s.target:g} not reached: the GT share is "
            f"{state['share']:.3f} with the weight at its cap max_weight={s.max_weight:g} "
            f"after {state['steps']} steps. The ground truth may be too small or too "
            "flat in the data to carry that share of the attribution; lower the "
            "target, or raise max_weight knowing that the task loss then matters less.",
            UserWarning,
            stacklevel=4,
        )

    @property
    def multiplier(self) -> float:
        """:math:`\\lambda` now (a host synchronisation)."""
        return float(self.log_multiplier.exp())

    def state(self) -> dict[str, float | int]:
        """``{"weight", "share", "steps"}`` now (for a training history; synchronises)."""
        return {
            "weight": self.multiplier,
            "share": float(self.share_average),
            "steps": int(self.steps),
        }

    def extra_repr(self) -> str:
        s = self.settings
        return f"target={s.target}, rate={s.rate}, max_weight={s.max_weight}"
