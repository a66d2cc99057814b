"""Attribution priors as loss modules: ``AttributionPrior`` and ``PriorSet``."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from attreg import functional as AF
from attreg._validation import check_finite, check_row_index, validate_ground_truth
from attreg.attr._base import Attribution
from attreg.attr._gradients import as_forward_args, in_functorch_transform
from attreg.attr.expected_gradients import ExpectedGradients
from attreg.attr.gradient_shap import GradientShap
from attreg.attr.input_gradient import InputGradient, InputXGradient
from attreg.attr.integrated_gradients import IntegratedGradients
from attreg.attr.layer import LayerTarget, sum_trailing
from attreg.constraint import ShareConstraint, ShareTarget
from attreg.fast_paths import fast_paths_enabled
from attreg.losses import ExcludedShareLoss, MSELoss, OutsideShareLoss, resolve_loss
from attreg.reparameterizers import AbsMinMax, Share, resolve_reparameterizer

__all__ = [
    "AttributionPenalty",
    "AttributionPrior",
    "ExclusionPrior",
    "PriorSet",
    "RightForRightReasons",
    "make_method",
]

_DEAD_CHECK_EVERY = 100  # calls between checks for a loss with zero gradient
_DEAD_CHECK_ROWS = 32  # rows checked

_METHODS: dict[str, type[Attribution]] = {
    "eg": ExpectedGradients,
    "expected_gradients": ExpectedGradients,
    "ig": IntegratedGradients,
    "integrated_gradients": IntegratedGradients,
    "input_gradient": InputGradient,
    "input_x_gradient": InputXGradient,
    "gradient_shap": GradientShap,
}


def _as_tensor(gt: Any) -> torch.Tensor:
    """Accept tensors, numpy arrays and nested lists of numbers as ground truth."""
    if isinstance(gt, torch.Tensor):
        return gt
    try:
        return torch.as_tensor(gt)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"ground truth must be a tensor, array or list of 0/1 values, got {type(gt).__name__}."
        ) from err


def make_method(
    target: Callable,
    method: str | Attribution = "eg",
    reducer: str | Callable | None = "sum",
    *,
    check_batchnorm: bool = True,
    check_inputs: bool = True,
) -> Attribution:
    """A differentiable attribution method on ``target`` (a name or an instance)."""
    if isinstance(method, Attribution):
        if not method.differentiable:
            raise ValueError(
                f"{type(method).__name__} was built with differentiable=False: its "
                "attributions carry no graph to the parameters, so the prior could not "
                "train the model. Build it with differentiable=True."
            )
        return method
    if not isinstance(method, str) or method.lower() not in _METHODS:
        raise ValueError(f"unknown attribution method {method!r}; use one of {sorted(_METHODS)}.")
    return _METHODS[method.lower()](
        target,
        reducer,
        differentiable=True,
        check_batchnorm=check_batchnorm,
        check_inputs=check_inputs,
    )


def _check_grad_mode(prior: nn.Module) -> None:
    """A prior under ``torch.no_grad()``/``inference_mode()`` has no graph to train: say so
    at the call instead of returning a constant that fails later."""
    if not torch.is_grad_enabled() or torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{type(prior).__name__} called with gradients disabled (torch.no_grad() or "
            "inference_mode()): its attributions need autograd and its loss trains nothing "
            "there. Call it in grad mode; for post-hoc attributions use an attribution "
            "method (e.g. attreg.ExpectedGradients) instead."
        )


class AttributionPrior(nn.Module):
    r"""A differentiable penalty that pulls a model's attributions toward a ground truth.

    ``prior(x)`` computes the attributions of :math:`F(\mathrm{target}(x))` with respect
    to ``x`` (with ``create_graph=True``), reparameterizes them to ``[0, 1]``, compares
    them with the ground truth and returns ``weight * loss``, a scalar to add to the task
    loss. Gradients flow to the parameters of ``target`` only.

    Parameters
    ----------
    target
        The module (or callable) whose sensitivity is constrained: the whole model or a
        submodule such as an encoder. Not registered as a submodule (it belongs to your
        model; its parameters are not duplicated in ``state_dict``).
    ground_truth
        Vector ``(n_features,)`` shared by all samples, or matrix ``(n_samples,
        n_features)`` whose rows are picked with ``index=`` at call time. May be
        ``None`` if every call passes ``gt=``.
    method
        ``"eg"`` (Expected Gradients, default), ``"ig"``, ``"input_gradient"``,
        ``"input_x_gradient"``, or a differentiable :class:`~attreg.attr.Attribution`
        (share one instance between priors to compute the attributions once).
    reducer
        ``F``: ``"sum"`` (default), ``"mean"``, ``"l2"``, a
        :class:`~attreg.reducers.Reducer` (e.g. ``Sum(output=0)`` for ``(mu, logvar)``)
        or a callable.
    reparameterizer
        ``"sigmoid"`` (default), ``"abs_minmax"``, ``"abs_max"``, ``"softmax"``,
        ``"identity"`` or a callable.
    loss
        ``"mse"`` (default), ``"mae"`` or a callable ``(scores, gt) -> scalar``.
    weight
        Multiplier of the loss (``w_A``).
    n_samples, references, generator
        Expected Gradients settings (draws per input, reference source, RNG).
    n_steps, integration, baselines
        Integrated Gradients settings.
    feature_weight
        Optional per-feature weights of the loss.
    allow_all_ones
        Accept an all-ones ground truth.
    check_inputs
        Validate the inputs (NaN/inf) and per-call ground-truth rows on every call. The
        stored ground truth is validated once, at construction. Turn off when the data
        were validated upstream: each check is a host synchronisation on GPU.
    internal_batch_size
        Rows per forward pass of the attribution method.
    input_index
        For tuple inputs ``x = (x_1, ..., x_k)``: the GT covers ``x_{input_index}`` only;
        ``None`` (default): the GT covers the features of all inputs, flattened and
        concatenated in order.
    target_share
        Aim at a GT share instead of a fixed weight: a number in ``(0, 1)`` or a
        :class:`~attreg.ShareTarget`. The weight becomes a Lagrange multiplier, starting
        at ``weight`` and updated by dual ascent after every call made in training mode
        with gradients on, until the mean GT share of the attributions reaches the
        target (see :mod:`attreg.constraint`; ``prior.constraint.state()`` reads it).
        The loss is then ``multiplier * max(0, target - share)``. Needs
        ``reparameterizer="share"`` and ``loss="outside_share"``. Call ``prior.eval()``
        for evaluation calls: they leave the multiplier alone and weight the shortfall by
        the starting weight (one scale for every epoch of a validation curve).
    layer, layer_at, layer_reduce
        Take the attributions at a submodule of ``target`` instead of at its input:
        ``layer``'s output (``layer_at="output"``) or first input (``"input"``), see
        :class:`~attreg.attr.LayerTarget`. ``x`` may then hold integers (token ids).
        ``layer_reduce="sum"`` (default) sums the activations' trailing dimensions, so
        that ``(n, tokens, emb)`` attributions become one per token and the ground truth
        is over tokens; ``None`` keeps the activations' shape.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 1))
    >>> prior = AttributionPrior(model, torch.tensor([1., 1., 0., 0., 0.]), weight=0.5,
    ...                          generator=torch.Generator().manual_seed(0))
    >>> x = torch.randn(32, 5)
    >>> loss = nn.functional.mse_loss(model(x).squeeze(1), x[:, 0]) + prior(x)
    >>> loss.backward()
    >>> all(p.grad is not None for p in model.parameters())
    True
    """

    def __init__(
        self,
        target: Callable,
        ground_truth: torch.Tensor | None = None,
        *,
        method: str | Attribution = "eg",
        reducer: str | Callable | None = "sum",
        reparameterizer: str | Callable | None = "sigmoid",
        loss: str | Callable = "mse",
        weight: float = 1.0,
        n_samples: int = 1,
        references: str | torch.Tensor | Callable = "batch",
        generator: torch.Generator | None = None,
        n_steps: int = 20,
        integration: str = "gausslegendre",
        baselines: Any = None,
        feature_weight: torch.Tensor | None = None,
        allow_all_ones: bool = False,
        check_batchnorm: bool = True,
        check_inputs: bool = True,
        internal_batch_size: int | None = None,
        layer: nn.Module | None = None,
        layer_at: str = "output",
        layer_reduce: str | None = "sum",
        input_index: int | None = None,
        target_share: float | ShareTarget | None = None,
    ) -> None:
        super().__init__()
        if isinstance(weight, bool) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight must be a finite number >= 0, got {weight!r}.")
        if layer_reduce not in ("sum", None):
            raise ValueError(f"layer_reduce must be 'sum' or None, got {layer_reduce!r}.")
        # not registered as a submodule (it holds the user's model; see ``target``)
        object.__setattr__(
            self, "layer_target", None if layer is None else LayerTarget(target, layer, layer_at)
        )
        self.layer_reduce = layer_reduce
        self.input_index = input_index
        if self.layer_target is not None:
            target = self.layer_target
        self.method = make_method(
            target, method, reducer, check_batchnorm=check_batchnorm, check_inputs=check_inputs
        )
        self.check_inputs = check_inputs
        self.reparameterizer = resolve_reparameterizer(reparameterizer)
        self.loss_fn = resolve_loss(loss, feature_weight)
        # abs_minmax + unweighted MSE, share + outside_share: one fused op each, with a
        # hand-written backward (same values and gradients as the composition, tested)
        self._fused = None
        if type(self.reparameterizer) is AbsMinMax and type(self.loss_fn) is MSELoss:
            if self.loss_fn.feature_weight is None:
                self._fused = AF.abs_minmax_mse_loss
        elif type(self.reparameterizer) is Share and type(self.loss_fn) is OutsideShareLoss:
            self._fused = AF.share_outside_loss
        self.weight = float(weight)
        self.constraint = self._share_constraint(target_share, self.weight)
        self.name: str | None = None  # set by a PriorSet; used in messages
        self._calls = 0
        self._dead_warned = False
        self.allow_all_ones = allow_all_ones
        self.n_samples = n_samples
        self.references = references
        self.generator = generator
        self.n_steps = n_steps
        self.integration = integration
        self.baselines = baselines
        self.internal_batch_size = internal_batch_size
        if ground_truth is not None:
            # all ones is judged at the first call, once the inputs' width is known: a GT
            # that is too short must get the length error, not "all ones"
            ground_truth = validate_ground_truth(
                _as_tensor(ground_truth), allow_all_ones=True
            ).clone()
            self._all_ones_unchecked = not allow_all_ones
        self.register_buffer("ground_truth", ground_truth)

    def _share_constraint(
        self, target_share: float | ShareTarget | None, weight: float
    ) -> ShareConstraint | None:
        if target_share is None:
            return None
        if not (type(self.reparameterizer) is Share and type(self.loss_fn) is OutsideShareLoss):
            raise ValueError(
                "target_share needs reparameterizer='share' and loss='outside_share' (the "
                "GT share is one minus that loss); got "
                f"{type(self.reparameterizer).__name__} and {type(self.loss_fn).__name__}."
            )
        if not isinstance(target_share, ShareTarget):
            if isinstance(target_share, bool) or not isinstance(target_share, (int, float)):
                raise TypeError(
                    "target_share must be a number in (0, 1) or a ShareTarget, got "
                    f"{type(target_share).__name__}."
                )
            defaults = ShareTarget(0.5)
            if not defaults.min_weight <= weight <= defaults.max_weight:
                raise ValueError(
                    f"with target_share, weight is the multiplier's starting value and must "
                    f"be in [{defaults.min_weight:g}, {defaults.max_weight:g}], got {weight}; "
                    "pass a ShareTarget to set other bounds."
                )
            target_share = ShareTarget(float(target_share), initial_weight=weight)
        return ShareConstraint(target_share)

    # -- attributions ----------------------------------------------------------------
    def attributions(
        self,
        x: torch.Tensor,
        additional_forward_args: Any = None,
        input_activations: torch.Tensor | None = None,
        target: int | torch.Tensor | None = None,
        reference_groups: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Differentiable attributions of the target at ``x`` (shape of ``x``).

        ``target``: captum's argument, the output unit to explain per sample (e.g. the
        true class of each sample), overriding the reducer's reduction.

        ``reference_groups``: EG with minibatch references only: one integer group label
        per sample; each sample's references come from its own group (see
        :meth:`attreg.attr.ExpectedGradients.attribute`), so the prior shapes what
        distinguishes samples within a group and leaves the differences between groups
        free.

        ``input_activations``: for a :class:`~attreg.attr.LinearPrefix` target, the
        first-layer output on ``x`` from the caller's own forward pass (reused: EG with
        minibatch references then needs no extra first-layer pass).
        """
        m = self.method
        inputs = x
        if self.layer_target is not None:  # attributions at the layer; x rides along
            args = as_forward_args(additional_forward_args)
            inputs = self.layer_target.activations(x, *args)
            additional_forward_args = (x, *args)
            input_activations = None
        kwargs: dict[str, Any] = {"additional_forward_args": additional_forward_args}
        if target is not None:
            kwargs["target"] = target
        if input_activations is not None and isinstance(
            m, (ExpectedGradients, IntegratedGradients)
        ):
            kwargs["input_activations"] = input_activations
        if reference_groups is not None:
            if not isinstance(m, ExpectedGradients):
                raise ValueError(
                    "reference_groups draws EG references within groups; this prior uses "
                    f"{type(m).__name__}. Use method='eg' (with references='batch')."
                )
            kwargs["reference_groups"] = reference_groups
        if isinstance(m, ExpectedGradients):
            kwargs.update(
                references=self.references,
                n_samples=self.n_samples,
                generator=self.generator,
                internal_batch_size=self.internal_batch_size,
            )
        elif isinstance(m, GradientShap):  # the background, or the minibatch itself
            refs = self.references
            kwargs.update(
                baselines=inputs if isinstance(refs, str) and refs == "batch" else refs,
                n_samples=self.n_samples,
                generator=self.generator,
            )
        elif isinstance(m, IntegratedGradients):
            kwargs.update(
                baselines=self.baselines,
                n_steps=self.n_steps,
                method=self.integration,
                internal_batch_size=self.internal_batch_size,
            )
        attr = m.attribute(inputs, **kwargs)
        if isinstance(attr, tuple):  # tuple inputs: one input's, or all features in order
            if self.input_index is not None:
                return attr[self.input_index]
            lead = attr[0].ndim - inputs[0].ndim + 1  # (n,) or (m, n)
            return torch.cat([a.reshape(*a.shape[:lead], -1) for a in attr], dim=-1)
        if self.layer_target is not None and self.layer_reduce == "sum":
            keep = 2 + (attr.ndim - inputs.ndim)  # (n, tokens, ...) or (m, n, tokens, ...)
            attr = sum_trailing(attr, keep)
        return attr

    def _ground_truth_rows(
        self, n: int, gt: torch.Tensor | None, index: torch.Tensor | None
    ) -> torch.Tensor:
        if gt is not None:
            return _as_tensor(gt)
        if self.ground_truth is None:
            raise ValueError("this prior has no stored ground truth; pass gt= when calling it.")
        if self.ground_truth.ndim == 2:
            if index is None:
                if self.ground_truth.shape[0] == n:
                    return self.ground_truth
                raise ValueError(
                    f"the ground truth is a matrix with {self.ground_truth.shape[0]} rows; pass "
                    "index= (the minibatch's row indices) or gt= (its rows)."
                )
            if self.check_inputs:
                index = check_row_index(index, self.ground_truth.shape[0])
            return self.ground_truth[torch.as_tensor(index, device=self.ground_truth.device)]
        return self.ground_truth

    def loss_from_attributions(
        self,
        attributions: torch.Tensor,
        gt: torch.Tensor | None = None,
        index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``weight * loss(reparameterize(attributions), gt)``.

        Attributions of a reducer with ``m > 1`` directions, ``(m, n, ...)``, are compared
        map by map with the same ground-truth rows; the loss is their mean over the
        directions (the losses average over rows).
        """
        m = getattr(self.method.reducer, "n_directions", 1)
        if m > 1:
            if attributions.shape[0] != m:
                raise ValueError(
                    f"attributions have shape {tuple(attributions.shape)}; the reducer's "
                    f"{m} directions need a leading axis of size {m}."
                )
            attributions = attributions.flatten(0, 1)
        n = attributions.shape[0] // m
        flat = attributions.reshape(n * m, -1)
        rows = self._ground_truth_rows(n, gt, index).to(flat.device)
        if m > 1 and rows.ndim == 2:
            rows = rows.repeat(m, 1)
        n = n * m
        if gt is not None and self.check_inputs:
            rows = validate_ground_truth(rows, flat.shape[1], n, allow_all_ones=self.allow_all_ones)
        else:  # stored (validated at construction) or trusted rows: shapes only, no sync
            if rows.shape[-1] != flat.shape[1] or (rows.ndim == 2 and rows.shape[0] != n):
                validate_ground_truth(rows, flat.shape[1], n, allow_all_ones=True)
            if gt is None and self.check_inputs and getattr(self, "_all_ones_unchecked", False):
                validate_ground_truth(self.ground_truth, flat.shape[1])  # once: no sync after
                self._all_ones_unchecked = False
            rows = rows.to(flat.dtype)
        if self.check_inputs:
            check_finite(
                flat,
                f"the attributions of {self._label()}",
                "The model's outputs or gradients overflowed: check the inputs' scale, "
                "lower the learning rate or clip gradients (with finite inputs and a finite "
                "model, attributions are finite).",
            )
            self._calls += 1
            if not self._dead_warned and self._calls % _DEAD_CHECK_EVERY == 1:
                self._check_dead_gradient(flat, rows)
        # the fused ops are autograd.Functions without torch.func support
        if self._fused is not None and fast_paths_enabled() and not in_functorch_transform(flat):
            loss = self._fused(flat, rows)
        else:
            loss = self.loss_fn(self.reparameterizer(flat), rows)
        if self.constraint is None:
            return self.weight * loss
        if not self.training:  # evaluation: one scale for every epoch (the starting weight)
            weight = loss.new_tensor(self.constraint.settings.initial_weight)
        else:
            weight = self.constraint.weight(loss)  # this step's multiplier, before the update
        if self.training and torch.is_grad_enabled() and not in_functorch_transform(flat):
            if self.constraint.name is None:
                self.constraint.name = self.name
            self.constraint.update(1.0 - loss.detach())
        # the constraint's exact penalty: nothing pushes the share beyond the target
        return weight * torch.relu(loss - (1.0 - self.constraint.settings.target))

    def _label(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        return (
            f"prior{name} ({type(self.method).__name__}, "
            f"{type(self.reparameterizer).__name__}, {type(self.loss_fn).__name__})"
        )

    def _check_dead_gradient(self, flat: torch.Tensor, rows: torch.Tensor) -> None:
        """Warn once when the loss cannot move the attributions of most rows it penalises:
        zero gradient with respect to a row's attributions while its loss is positive.

        The classic case: ``abs_max``/``abs_minmax`` with ``feature_weight = 1 - GT``;
        when a penalised feature is a row's largest attribution it maps to exactly 1
        whatever its size, so the loss is stuck and its gradient is exactly 0. Checked
        on the first call and every ``_DEAD_CHECK_EVERY`` calls (a few rows, the
        reference composition, no model pass)."""
        k = min(_DEAD_CHECK_ROWS, flat.shape[0])
        a = flat[:k].detach().requires_grad_()
        t = rows[:k] if rows.ndim == 2 else rows
        with torch.enable_grad():
            per_row = [
                self.loss_fn(self.reparameterizer(a[i : i + 1]), t[i : i + 1] if t.ndim == 2 else t)
                for i in range(k)
            ]
            losses = torch.stack(per_row)
            (g,) = torch.autograd.grad(losses.sum(), a, allow_unused=True)
        losses = losses.detach()
        penalised = losses > 1e-12
        if g is None:
            stuck = penalised
        else:  # scale-free: |a| |dL/da| negligible against L (rounding, not signal)
            moving = g.abs().amax(dim=1) * a.detach().abs().amax(dim=1)
            stuck = penalised & (moving <= 1e-6 * losses)
        n_pen, n_stuck = int(penalised.sum()), int(stuck.sum())
        if n_pen and 2 * n_stuck > n_pen:
            self._dead_warned = True
            warnings.warn(
                f"{self._label()}: the loss has zero gradient for {n_stuck} of the {n_pen} "
                "checked rows it penalises, so the prior cannot change their attributions "
                "(it trains nothing there). With 'abs_max'/'abs_minmax' and feature "
                "weights, a penalised feature that is a row's largest attribution maps to "
                "exactly 1 whatever its size. Use reparameterizer='share' (|a| / sum |a|) "
                "with loss='outside_share', or a loss over all features.",
                UserWarning,
                stacklevel=4,
            )

    def forward(
        self,
        x: torch.Tensor,
        gt: torch.Tensor | None = None,
        index: torch.Tensor | None = None,
        additional_forward_args: Any = None,
        input_activations: torch.Tensor | None = None,
        target: int | torch.Tensor | None = None,
        reference_groups: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Weighted prior loss for the minibatch ``x`` (a scalar); ``reference_groups``:
        see :meth:`attributions`."""
        _check_grad_mode(self)
        attr = self.attributions(
            x, additional_forward_args, input_activations, target, reference_groups
        )
        return self.loss_from_attributions(attr, gt, index)

    def extra_repr(self) -> str:
        gt = None if self.ground_truth is None else tuple(self.ground_truth.shape)
        if self.constraint is not None:
            return f"method={self.method!r}, target_share={self.constraint.settings.target}, " \
                f"ground_truth={gt}"
        return f"method={self.method!r}, weight={self.weight}, ground_truth={gt}"


class ExclusionPrior(AttributionPrior):
    r"""Keep a target insensitive to a set of features: ``weight * mean_i sum_{j in S}
    |a_ij| / sum_j |a_ij|``, the mean share of attribution on the excluded features ``S``.

    The counterpart of :class:`AttributionPrior` for disjoint latent blocks: the block a
    gene set owns carries a prior toward the set, and an exclusion prior on the other
    blocks (a :class:`~attreg.reducers.RandomDirections` or
    :class:`~attreg.reducers.OutputUnits` reducer over their units) keeps them off it.
    Takes the arguments of :class:`AttributionPrior`; ``excluded`` replaces the ground
    truth, and the reparameterizer (``share``) and loss are fixed.

    Parameters
    ----------
    target
        The model or submodule explained.
    excluded
        1 for the features the target should not use (a vector or a matrix per sample).
    **kwargs
        :class:`AttributionPrior`'s other arguments (``method``, ``reducer``, ``weight``,
        ``n_samples``, ...).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from attreg.reducers import OutputUnits
    >>> enc = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4))
    >>> keep_off = ExclusionPrior(enc, torch.tensor([1., 1., 0, 0, 0, 0]),
    ...                           reducer=OutputUnits([2, 3]), method="input_x_gradient")
    >>> 0.0 <= float(keep_off(torch.randn(32, 6)).detach()) <= 1.0
    True
    """

    def __init__(self, target: Callable, excluded: torch.Tensor, **kwargs: Any) -> None:
        for fixed in ("reparameterizer", "loss", "feature_weight"):
            if fixed in kwargs:
                raise TypeError(f"ExclusionPrior fixes {fixed}; do not pass it.")
        super().__init__(
            target, excluded, reparameterizer="share", loss=ExcludedShareLoss(), **kwargs
        )


class AttributionPenalty(AttributionPrior):
    r"""A prior without ground truth: ``weight * penalty(attributions)``.

    Erion et al.'s attribution priors that encode a property instead of a feature set:
    smooth maps over an image grid (:class:`~attreg.penalties.TotalVariation`), similar
    importance for features linked in a graph such as a gene network
    (:class:`~attreg.penalties.GraphLaplacian`), or importance concentrated on few
    features (:class:`~attreg.penalties.GiniSparsity`). Composes with ground-truth priors
    in a :class:`PriorSet` (sharing one attribution computation when they share a method).

    Parameters
    ----------
    target, method, reducer, weight, **kwargs
        As for :class:`AttributionPrior` (``reparameterizer``, ``loss`` and
        ``feature_weight`` do not apply).
    penalty
        ``"total_variation"``, ``"gini"``, a module from :mod:`attreg.penalties` or any
        callable ``attributions -> scalar`` (attributions shaped like the inputs).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from attreg.penalties import TotalVariation
    >>> cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
    ...                     nn.Linear(4 * 8 * 8, 10))
    >>> smooth = AttributionPenalty(cnn, TotalVariation(), method="input_x_gradient",
    ...                             weight=0.1)
    >>> loss = smooth(torch.randn(16, 1, 8, 8), target=torch.randint(0, 10, (16,)))
    >>> loss.backward()
    """

    def __init__(
        self,
        target: Callable,
        penalty: str | Callable[[torch.Tensor], torch.Tensor],
        *,
        method: str | Attribution = "eg",
        reducer: str | Callable | None = "sum",
        weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        for fixed in ("reparameterizer", "loss", "feature_weight", "ground_truth"):
            if fixed in kwargs:
                raise TypeError(f"AttributionPenalty has no {fixed}: it needs no ground truth.")
        super().__init__(target, None, method=method, reducer=reducer, weight=weight, **kwargs)
        from attreg.penalties import resolve_penalty

        self.penalty = resolve_penalty(penalty)

    def loss_from_attributions(
        self,
        attributions: torch.Tensor,
        gt: torch.Tensor | None = None,
        index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``weight * penalty(attributions)`` (averaged over a reducer's directions)."""
        if self.check_inputs:
            check_finite(attributions, f"the attributions of {self._label()}")
        m = getattr(self.method.reducer, "n_directions", 1)
        if m > 1:
            value = torch.stack([self.penalty(a) for a in attributions]).mean()
        else:
            value = self.penalty(attributions)
        return self.weight * value

    def _label(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        return f"penalty{name} ({type(self.method).__name__}, {self.penalty!r})"


class RightForRightReasons(AttributionPrior):
    r"""Ross et al. (2017): penalise input gradients of the log-probabilities where the
    annotation says the input should not matter,

    .. math:: L = \frac1n \sum_i \Big\lVert (1 - \mathrm{GT}_i) \odot
              \frac{\partial}{\partial x_i} \sum_k \log p(y_k \mid x_i) \Big\rVert^2,

    ``1 - GT`` being their annotation matrix ``A``. ``ground_truth``: 1 where the input
    may matter, a vector for all samples or a matrix with one row per sample (pass
    ``index=`` or ``gt=`` at the call). The model returns logits.

    Parameters
    ----------
    model
        The classifier (returns logits).
    ground_truth
        1 where the input may matter: a vector for all samples or a matrix per sample.
    weight
        The penalty's weight.
    **kwargs
        :class:`AttributionPrior`'s other arguments (not the fixed ``method``, ``reducer``,
        ``reparameterizer``, ``loss``).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    >>> rrr = RightForRightReasons(model, torch.tensor([1., 1., 1., 0., 0., 0.]), weight=10.0)
    >>> rrr(torch.randn(8, 6)).backward()
    """

    def __init__(
        self, model: Callable, ground_truth: Any = None, weight: float = 1.0, **kwargs: Any
    ) -> None:
        for fixed in ("method", "reducer", "reparameterizer", "loss", "feature_weight"):
            if fixed in kwargs:
                raise TypeError(f"RightForRightReasons fixes {fixed}; do not pass it.")
        super().__init__(
            model,
            ground_truth,
            method="input_gradient",
            reducer="log_probability_sum",
            reparameterizer="identity",
            loss=AF.right_reasons_loss,
            weight=weight,
            allow_all_ones=True,
            **kwargs,
        )


class PriorSet(nn.Module):
    r"""Several priors (each its own GT, loss and weight) aggregated into one ``L_A``.

    Priors that share one attribution-method instance (as built by
    :meth:`from_ground_truths`) reuse one attribution computation per call.

    Parameters
    ----------
    priors
        A mapping name -> :class:`AttributionPrior` or a sequence of priors.
    aggregation
        ``"sum"`` (:math:`\sum_i w_i L_i`) or ``"squared_sum"``
        (:math:`\sum_i (w_i L_i)^2`).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    >>> gts = {"a": torch.tensor([1., 0, 0, 0]), "b": torch.tensor([0., 0, 1, 1])}
    >>> priors = PriorSet.from_ground_truths(model, gts, weights={"a": 1.0, "b": 0.5})
    >>> terms = priors(torch.randn(16, 4), return_terms=True)
    >>> sorted(terms)
    ['a', 'b', 'total']
    """

    def __init__(
        self,
        priors: Mapping[str, AttributionPrior] | Sequence[AttributionPrior],
        aggregation: str = "sum",
    ) -> None:
        super().__init__()
        if aggregation not in ("sum", "squared_sum"):
            raise ValueError(f"unknown aggregation {aggregation!r}; use 'sum' or 'squared_sum'.")
        if not isinstance(priors, Mapping):
            priors = {f"prior{i}": p for i, p in enumerate(priors)}
        if not priors:
            raise ValueError("a PriorSet needs at least one prior.")
        for name, p in priors.items():
            if not isinstance(p, AttributionPrior):
                raise TypeError(f"prior {name!r} is a {type(p).__name__}, not an AttributionPrior.")
        self.priors = nn.ModuleDict(dict(priors))
        for name, p in self.priors.items():
            p.name = p.name or name
        self.aggregation = aggregation

    @classmethod
    def from_ground_truths(
        cls,
        target: Callable,
        ground_truths: Mapping[str, torch.Tensor],
        *,
        weights: Mapping[str, float] | float = 1.0,
        losses: Mapping[str, str | Callable] | str | Callable = "mse",
        aggregation: str = "sum",
        method: str | Attribution = "eg",
        reducer: str | Callable | None = "sum",
        **prior_kwargs: Any,
    ) -> PriorSet:
        """One prior per ground truth, all sharing one attribution computation."""
        shared = make_method(
            target, method, reducer, check_batchnorm=prior_kwargs.pop("check_batchnorm", True)
        )
        priors = {}
        for name, gt in ground_truths.items():
            w = weights[name] if isinstance(weights, Mapping) else weights
            lo = losses[name] if isinstance(losses, Mapping) else losses
            priors[name] = AttributionPrior(
                target, gt, method=shared, weight=w, loss=lo, **prior_kwargs
            )
        return cls(priors, aggregation)

    def forward(
        self,
        x: torch.Tensor,
        gts: Mapping[str, torch.Tensor] | None = None,
        index: torch.Tensor | None = None,
        additional_forward_args: Any = None,
        return_terms: bool = False,
        input_activations: torch.Tensor | None = None,
        target: int | torch.Tensor | None = None,
        reference_groups: torch.Tensor | None = None,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Aggregated prior loss (or a dict of the weighted terms and ``"total"``).

        ``target``: captum's argument (the output unit per sample, e.g. each sample's
        class), passed to every prior; so is ``reference_groups`` (EG references within
        each sample's group, see :meth:`AttributionPrior.attributions`). Priors on
        different layers or targets each compute their own attributions; priors sharing a
        method instance share one computation.
        """
        _check_grad_mode(self)
        gts = gts or {}
        unknown = set(gts) - set(self.priors)
        if unknown:
            raise KeyError(
                f"gts has unknown prior names {sorted(unknown)}; known: {list(self.priors)}."
            )
        cache: dict[int, torch.Tensor] = {}
        terms: dict[str, torch.Tensor] = {}
        for name, prior in self.priors.items():
            key = id(prior.method)
            if key not in cache:
                cache[key] = prior.attributions(
                    x, additional_forward_args, input_activations, target, reference_groups
                )
            terms[name] = prior.loss_from_attributions(cache[key], gts.get(name), index)
        total = AF.aggregate(list(terms.values()), self.aggregation)
        if return_terms:
            return {**terms, "total": total}
        return total
