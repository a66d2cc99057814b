"""Functional API: every piece of an attribution prior as a plain function.

The module forms (:mod:`attreg.reparameterizers`, :mod:`attreg.losses`,
:class:`attreg.AttributionPrior`) call these.

Examples
--------
>>> import torch
>>> import attreg.functional as AF
>>> model = torch.nn.Linear(4, 1)
>>> x = torch.randn(8, 4)
>>> gt = torch.tensor([1., 1., 0., 0.])
>>> attr = AF.expected_gradients(model, x, create_graph=True,
...                              generator=torch.Generator().manual_seed(0))
>>> loss = AF.attribution_prior_loss(attr, gt, reparameterizer="abs_minmax", loss="mse")
>>> loss.backward()          # gradients reach the model's parameters
>>> model.weight.grad is not None
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from attreg._validation import validate_ground_truth
from attreg.attr.expected_gradients import ExpectedGradients
from attreg.attr.input_gradient import InputGradient, InputXGradient
from attreg.attr.integrated_gradients import IntegratedGradients

__all__ = [
    "integrated_gradients",
    "expected_gradients",
    "input_gradient",
    "input_x_gradient",
    "sigmoid",
    "abs_minmax",
    "abs_max",
    "softmax",
    "identity",
    "reparameterize",
    "mse_loss",
    "mae_loss",
    "attribution_loss",
    "attribution_prior_loss",
    "abs_minmax_mse_loss",
    "share",
    "excluded_share_loss",
    "outside_share_loss",
    "share_outside_loss",
    "aggregate",
    "total_variation",
    "graph_laplacian_penalty",
    "gini_coefficient",
    "gini_sparsity_loss",
    "right_reasons_loss",
]


# -- attributions ---------------------------------------------------------------------
def integrated_gradients(
    forward_func: Callable,
    inputs: torch.Tensor,
    baselines: Any = None,
    *,
    reducer: str | Callable | None = None,
    create_graph: bool = False,
    **kwargs: Any,
) -> torch.Tensor:
    """Functional :class:`attreg.attr.IntegratedGradients` (keyword args of ``attribute``).

    Parameters
    ----------
    forward_func
        The model or function explained.
    inputs
        The inputs.
    baselines
        Start points of the path (``None``: zeros).
    reducer
        ``F`` (:mod:`attreg.reducers`).
    create_graph
        Keep the graph (differentiable attributions).
    **kwargs
        ``attribute``'s arguments (``n_steps``, ``method``, ``target``, ...).
    """
    method = IntegratedGradients(forward_func, reducer, differentiable=create_graph)
    return method.attribute(inputs, baselines, **kwargs)


def expected_gradients(
    forward_func: Callable,
    inputs: torch.Tensor,
    references: Any = "batch",
    *,
    reducer: str | Callable | None = None,
    create_graph: bool = False,
    **kwargs: Any,
) -> torch.Tensor:
    """Functional :class:`attreg.attr.ExpectedGradients` (keyword args of ``attribute``).

    Parameters
    ----------
    forward_func
        The model or function explained.
    inputs
        The inputs.
    references
        ``"batch"``, a background tensor, ``"noise"`` or a callable (see the class).
    reducer
        ``F`` (:mod:`attreg.reducers`).
    create_graph
        Keep the graph (differentiable attributions).
    **kwargs
        ``attribute``'s arguments (``n_samples``, ``generator``, ``target``, ...).
    """
    method = ExpectedGradients(forward_func, reducer, differentiable=create_graph)
    return method.attribute(inputs, references, **kwargs)


def input_gradient(
    forward_func: Callable,
    inputs: torch.Tensor,
    *,
    reducer: str | Callable | None = None,
    create_graph: bool = False,
    **kwargs: Any,
) -> torch.Tensor:
    """Functional :class:`attreg.attr.InputGradient`.

    Parameters
    ----------
    forward_func
        The model or function explained.
    inputs
        The inputs.
    reducer
        ``F`` (:mod:`attreg.reducers`).
    create_graph
        Keep the graph (differentiable attributions).
    **kwargs
        ``attribute``'s arguments (``target``, ``additional_forward_args``).
    """
    return InputGradient(forward_func, reducer, differentiable=create_graph).attribute(
        inputs, **kwargs
    )


def input_x_gradient(
    forward_func: Callable,
    inputs: torch.Tensor,
    *,
    reducer: str | Callable | None = None,
    create_graph: bool = False,
    **kwargs: Any,
) -> torch.Tensor:
    """Functional :class:`attreg.attr.InputXGradient`.

    Parameters
    ----------
    forward_func
        The model or function explained.
    inputs
        The inputs.
    reducer
        ``F`` (:mod:`attreg.reducers`).
    create_graph
        Keep the graph (differentiable attributions).
    **kwargs
        ``attribute``'s arguments (``target``, ``additional_forward_args``).
    """
    return InputXGradient(forward_func, reducer, differentiable=create_graph).attribute(
        inputs, **kwargs
    )


# -- reparameterizations to [0, 1] ----------------------------------------------------
def _rows(a: torch.Tensor) -> torch.Tensor:
    return a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(1, -1)


def sigmoid(attributions: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``sigmoid(a / temperature)``: 0.5 at zero attribution, monotone in ``a``.

    Parameters
    ----------
    attributions
        ``(n, ...)``.
    temperature
        ``a`` is divided by it.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    return torch.sigmoid(attributions / temperature)


def _tiny(t: torch.Tensor, eps: float | None) -> float:
    return torch.finfo(t.dtype).tiny if eps is None else eps


def _infinite_rows_as_indicators(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``(n, d)`` holding ``inf`` replaced by their 0/1 indicator of the infinite
    entries: ``(rows holding inf (n, 1), a with those rows replaced)``.

    Scaling such a row has a limit (the infinite features take the whole row, the rest
    0) where the arithmetic gives ``inf / inf = NaN``; the indicator row scales to that
    limit. The replaced rows get no gradient; no host synchronisation."""
    inf = torch.isinf(a)
    has = inf.any(dim=1, keepdim=True)
    return has, torch.where(has, inf.to(a.dtype), a)


def abs_minmax(attributions: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    """``|a|`` min-max scaled per sample to ``[0, 1]``; constant rows map to 0.

    Invariant to positive scaling of a sample's attributions and to their signs (as long
    as the row's range stays above ``eps``, by default the smallest normal float).

    Parameters
    ----------
    attributions
        ``(n, ...)``.
    eps
        Guard of the division (``None``: the dtype's tiny value).
    """
    eps = _tiny(attributions, eps)
    _, a = _infinite_rows_as_indicators(_rows(attributions.abs()))
    lo = a.min(dim=1, keepdim=True).values
    span = a.max(dim=1, keepdim=True).values - lo
    # a constant row (span <= eps) divides 0 by inf: value 0, gradient 0, no NaN
    span = torch.where(span > eps, span, torch.full_like(span, float("inf")))
    return ((a - lo) / span).reshape(attributions.shape)


def abs_max(attributions: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    """``|a| / max|a|`` per sample; all-zero rows map to 0. Scale-invariant.

    Parameters
    ----------
    attributions
        ``(n, ...)``.
    eps
        Guard of the division (``None``: the dtype's tiny value).
    """
    eps = _tiny(attributions, eps)
    _, a = _infinite_rows_as_indicators(_rows(attributions.abs()))
    top = a.max(dim=1, keepdim=True).values
    top = torch.where(top > eps, top, torch.full_like(top, float("inf")))
    return (a / top).reshape(attributions.shape)


def softmax(attributions: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Softmax of ``|a| / temperature`` over the features of each sample (sums to 1).

    Parameters
    ----------
    attributions
        ``(n, ...)``.
    temperature
        ``|a|`` is divided by it.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    has_inf, a = _infinite_rows_as_indicators(_rows(attributions.abs()))
    limit = a / a.sum(dim=1, keepdim=True).clamp_min(1.0)  # the inf entries share the row
    finite = torch.where(has_inf, torch.zeros_like(a), a)
    out = torch.where(has_inf, limit, torch.softmax(finite / temperature, dim=1))
    return out.reshape(attributions.shape)


def share(attributions: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    """``|a| / sum |a|`` per sample: each feature's share of the attribution (sums to 1;
    all-zero rows map to 0). Scale- and sign-invariant, and smooth in every feature: no
    feature's gradient vanishes because another holds the row's maximum (unlike
    ``abs_max``/``abs_minmax``, whose scores of the maximum feature are constant).

    Parameters
    ----------
    attributions
        ``(n, ...)``.
    eps
        Guard of the division (``None``: the dtype's tiny value).
    """
    eps = _tiny(attributions, eps)
    _, a = _infinite_rows_as_indicators(_rows(attributions.abs()))
    total = a.sum(dim=1, keepdim=True)
    total = torch.where(total > eps, total, torch.full_like(total, float("inf")))
    return (a / total).reshape(attributions.shape)


def _mean_over_constrained_rows(per_row: torch.Tensor, excluded: torch.Tensor) -> torch.Tensor:
    """The mean of ``per_row`` over the rows a share loss constrains: those with a
    feature not wholly excluded. A row whose every feature is excluded (a sample without
    GT features) has share loss 1 whatever its attributions."""
    if excluded.ndim < 2 or excluded.shape[0] == 1:  # one mask for every row
        return per_row.mean() * (excluded < 1).any().to(per_row.dtype)
    rows = (torch.broadcast_to(excluded, (per_row.shape[0], excluded.shape[-1])) < 1).any(dim=1)
    rows = rows.to(per_row.dtype)
    return (per_row * rows).sum() / rows.sum().clamp_min(1)


def excluded_share_loss(scores: torch.Tensor, excluded: torch.Tensor) -> torch.Tensor:
    """Mean over samples of the share of attribution on the ``excluded`` features:
    ``mean_i sum_j excluded_ij * s_ij`` for shares ``s`` (see :func:`share`). 0 when the
    excluded features get no attribution, 1 when they get all of it.

    Samples whose every feature is excluded (a GT row with no feature) are left out of
    the mean: their share loss is 1 whatever their attributions, so it carries no
    gradient and would only dilute the weight of the others (0 when no sample is left).

    Parameters
    ----------
    scores
        Shares (:func:`share`) ``(n, ...)``.
    excluded
        1 on the excluded features.

    Examples
    --------
    >>> s = share(torch.tensor([[3.0, 1.0, 0.0]]))
    >>> float(excluded_share_loss(s, torch.tensor([0.0, 1.0, 1.0])))
    0.25
    """
    flat = _rows(scores)
    excluded = excluded.to(flat.dtype)
    return _mean_over_constrained_rows((flat * excluded).sum(dim=-1), excluded)


def outside_share_loss(scores: torch.Tensor, ground_truth: torch.Tensor) -> torch.Tensor:
    """Mean over samples of the share of attribution *outside* the ground truth:
    ``mean_i sum_j (1 - gt_ij) s_ij`` for shares ``s`` (see :func:`share`), i.e. one minus
    the GT share. It asks that the attribution concentrate on the GT features, without
    asking every GT feature to be equally important (what an MSE of min-max scores to a
    binary GT also demands: with a GT of hundreds of features that part dominates it).
    Samples whose GT row is empty are left out of the mean (their loss would be 1 whatever
    their attributions; see :func:`excluded_share_loss`).

    Parameters
    ----------
    scores
        Shares (:func:`share`) ``(n, ...)``.
    ground_truth
        1 on the GT features.

    Examples
    --------
    >>> s = share(torch.tensor([[3.0, 1.0, 0.0]]))
    >>> float(outside_share_loss(s, torch.tensor([1.0, 0.0, 0.0])))
    0.25
    >>> two = share(torch.tensor([[3.0, 1.0, 0.0], [1.0, 1.0, 1.0]]))
    >>> float(outside_share_loss(two, torch.tensor([[1.0, 0, 0], [0, 0, 0]])))  # row 2: no GT
    0.25
    """
    return excluded_share_loss(scores, 1.0 - ground_truth.to(scores.dtype))


def identity(attributions: torch.Tensor) -> torch.Tensor:
    """No reparameterization (the attributions must already be in ``[0, 1]``).

    Parameters
    ----------
    attributions
        ``(n, ...)``, already in ``[0, 1]``.
    """
    return attributions


_REPARAMETERIZERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": sigmoid,
    "abs_minmax": abs_minmax,
    "abs_max": abs_max,
    "softmax": softmax,
    "share": share,
    "identity": identity,
    "none": identity,
}


def reparameterize(
    attributions: torch.Tensor, reparameterizer: str | Callable | None = "sigmoid"
) -> torch.Tensor:
    """Apply a reparameterizer given by name (see :data:`_REPARAMETERIZERS`) or callable.

    Parameters
    ----------
    attributions
        ``(n, ...)``.
    reparameterizer
        A name or a callable (``None``: identity).
    """
    if reparameterizer is None:
        return attributions
    if isinstance(reparameterizer, str):
        try:
            fn = _REPARAMETERIZERS[reparameterizer.lower()]
        except KeyError:
            raise ValueError(
                f"unknown reparameterizer {reparameterizer!r}; use one of "
                f"{sorted(_REPARAMETERIZERS)} or a callable."
            ) from None
        return fn(attributions)
    return reparameterizer(attributions)


# -- losses -----------------------------------------------------------------------------
def _weighted_mean(err: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return err.mean()
    weight = torch.as_tensor(weight, dtype=err.dtype, device=err.device)
    if weight.shape[-1] != err.shape[-1]:
        raise ValueError(
            f"feature weights have {weight.shape[-1]} entries for {err.shape[-1]} features."
        )
    if bool((weight < 0).any()):
        raise ValueError("feature weights must be non-negative.")
    total = torch.broadcast_to(weight, err.shape)
    return (err * total).sum() / total.sum().clamp_min(torch.finfo(err.dtype).tiny)


def mse_loss(
    scores: torch.Tensor, ground_truth: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error between reparameterized attributions and the ground truth.

    ``ground_truth`` is a vector (broadcast to every sample) or one row per sample;
    ``weight`` optional per-feature weights (a weighted mean).

    Parameters
    ----------
    scores
        Reparameterized attributions ``(n, ...)``.
    ground_truth
        0/1, broadcastable to ``scores``.
    weight
        Per-feature weights (``None``: 1).
    """
    ground_truth = ground_truth.to(scores.dtype)
    if weight is None:
        return F.mse_loss(scores, torch.broadcast_to(ground_truth, scores.shape))
    return _weighted_mean((scores - ground_truth) ** 2, weight)


def mae_loss(
    scores: torch.Tensor, ground_truth: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean absolute error between reparameterized attributions and the ground truth.

    Parameters
    ----------
    scores
        Reparameterized attributions ``(n, ...)``.
    ground_truth
        0/1, broadcastable to ``scores``.
    weight
        Per-feature weights (``None``: 1).
    """
    ground_truth = ground_truth.to(scores.dtype)
    if weight is None:
        return F.l1_loss(scores, torch.broadcast_to(ground_truth, scores.shape))
    return _weighted_mean((scores - ground_truth).abs(), weight)


_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "outside_share": lambda s, gt, w=None: outside_share_loss(s, gt),
    "mse": mse_loss,
    "mae": mae_loss,
    "l1": mae_loss,
    "l2": mse_loss,
}


def attribution_loss(
    scores: torch.Tensor,
    ground_truth: torch.Tensor,
    loss: str | Callable = "mse",
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Loss by name (``"mse"``, ``"mae"``) or a callable ``(scores, gt) -> scalar``.

    Parameters
    ----------
    scores
        Reparameterized attributions ``(n, ...)``.
    ground_truth
        0/1, broadcastable to ``scores``.
    loss
        ``"mse"``, ``"mae"`` or a callable ``(scores, gt) -> scalar``.
    weight
        Per-feature weights (``None``: 1).
    """
    if isinstance(loss, str):
        try:
            fn = _LOSSES[loss.lower()]
        except KeyError:
            raise ValueError(
                f"unknown loss {loss!r}; use one of {sorted(_LOSSES)} or a callable."
            ) from None
        return fn(scores, ground_truth, weight)
    if weight is not None:
        return loss(scores, ground_truth, weight)
    return loss(scores, ground_truth)


def attribution_prior_loss(
    attributions: torch.Tensor,
    ground_truth: torch.Tensor,
    *,
    reparameterizer: str | Callable | None = "sigmoid",
    loss: str | Callable = "mse",
    feature_weight: torch.Tensor | None = None,
    allow_all_ones: bool = False,
) -> torch.Tensor:
    """Validate ``ground_truth``, reparameterize ``attributions`` and compare them.

    Parameters
    ----------
    attributions
        ``(n, n_features)`` attributions (differentiable when they were built with
        ``create_graph=True``).
    ground_truth
        Vector ``(n_features,)`` or matrix ``(n, n_features)`` in ``[0, 1]``.
    """
    n = attributions.shape[0]
    flat = attributions.reshape(n, -1)
    gt = validate_ground_truth(
        ground_truth.to(attributions.device),
        flat.shape[1],
        n,
        allow_all_ones=allow_all_ones,
    )
    return attribution_loss(reparameterize(flat, reparameterizer), gt, loss, feature_weight)


# -- penalties without ground truth (Erion et al. 2021) and the RRR mask loss ---------


def total_variation(attributions: torch.Tensor, p: int = 1) -> torch.Tensor:
    r"""Total variation of attribution maps over their last two (spatial) dimensions.

    .. math:: \mathrm{TV}(a) = \frac1n \sum_i \sum_{h,w} |a_{i,h+1,w} - a_{i,h,w}|^p
              + |a_{i,h,w+1} - a_{i,h,w}|^p

    Erion et al.'s image prior (``p = 1``, anisotropic): smooth attribution maps. Inputs
    ``(n, ..., H, W)``; channels and other leading dims are summed.

    Parameters
    ----------
    attributions
        ``(n, ..., H, W)`` maps.
    p
        1 (absolute differences) or 2 (squared).

    Examples
    --------
    >>> total_variation(torch.ones(2, 3, 4)).item()
    0.0
    >>> total_variation(torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])).item()
    2.0
    """
    if attributions.ndim < 3:
        raise ValueError(
            f"total_variation needs maps (n, ..., H, W), got shape {tuple(attributions.shape)}; "
            "reshape flat attributions to the image grid first."
        )
    dh = attributions[..., 1:, :] - attributions[..., :-1, :]
    dw = attributions[..., :, 1:] - attributions[..., :, :-1]
    n = attributions.shape[0]
    return (dh.abs().pow(p).sum() + dw.abs().pow(p).sum()) / n


def _mean_magnitude(attributions: torch.Tensor) -> torch.Tensor:
    """``mean_i |a_i|`` over the samples: one global importance per feature."""
    return attributions.reshape(attributions.shape[0], -1).abs().mean(dim=0)


def graph_laplacian_penalty(attributions: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
    r"""Erion et al.'s graph prior: :math:`\bar\phi^\top L \bar\phi` with
    :math:`\bar\phi = \mathrm{mean}_i |a_i|` and :math:`L = D - W` the Laplacian of a
    feature graph ``adjacency`` ``W`` (dense or sparse, symmetric, non-negative), so that

    .. math:: \bar\phi^\top L \bar\phi = \tfrac12 \sum_{j,k} W_{jk}
              (\bar\phi_j - \bar\phi_k)^2 :

    features linked in the graph (e.g. interacting genes) get similar importance.

    Parameters
    ----------
    attributions
        ``(n, d)``.
    adjacency
        ``(d, d)`` symmetric, non-negative feature graph.

    Examples
    --------
    >>> w = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    >>> graph_laplacian_penalty(torch.tensor([[1.0, 3.0]]), w).item()
    4.0
    """
    phi = _mean_magnitude(attributions)
    d = phi.shape[0]
    if tuple(adjacency.shape) != (d, d):
        raise ValueError(
            f"adjacency has shape {tuple(adjacency.shape)}; the attributions have {d} "
            f"features: give a ({d}, {d}) matrix over the same features, in the same order."
        )
    adjacency = adjacency.to(phi.dtype)
    w_phi = (
        torch.sparse.mm(adjacency, phi[:, None])[:, 0] if adjacency.is_sparse else adjacency @ phi
    )
    degree = (
        torch.sparse.sum(adjacency, dim=1).to_dense() if adjacency.is_sparse else adjacency.sum(1)
    )
    return (degree * phi * phi).sum() - (phi * w_phi).sum()


def gini_coefficient(values: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    r"""Gini coefficient of non-negative ``values`` (last dimension), differentiable:

    .. math:: G(\phi) = \frac{\sum_{j,k} |\phi_j - \phi_k|}{2 d \sum_j \phi_j}
              = \frac{\sum_j (2j - d - 1)\,\phi_{(j)}}{d \sum_j \phi_j}

    (:math:`\phi_{(j)}` sorted ascending): 0 when all are equal, :math:`1 - 1/d` when one
    holds everything.

    Parameters
    ----------
    values
        Non-negative, ``(..., d)``.
    eps
        Totals at or below it count as zero (Gini 0).

    Examples
    --------
    >>> gini_coefficient(torch.tensor([1.0, 1.0, 1.0])).item()
    0.0
    >>> round(gini_coefficient(torch.tensor([0.0, 0.0, 0.0, 4.0])).item(), 4)
    0.75
    """
    d = values.shape[-1]
    ordered, _ = torch.sort(values, dim=-1)
    ranks = torch.arange(1, d + 1, dtype=values.dtype, device=values.device)
    total = d * values.sum(-1)
    # all-zero values divide 0 by inf (value 0, gradient 0); any other total is used as it
    # is, so that G(c * phi) = G(phi) exactly (adding eps broke it for tiny values)
    total = torch.where(total > eps, total, torch.full_like(total, float("inf")))
    gini = ((2 * ranks - d - 1) * ordered).sum(-1) / total
    return gini.clamp_min(0.0)  # equal values: exactly 0, not a rounding error of -1e-17


def gini_sparsity_loss(attributions: torch.Tensor) -> torch.Tensor:
    """Erion et al.'s sparsity prior: ``-Gini(mean_i |a_i|)``; minimising it concentrates
    the global importance on few features.

    Parameters
    ----------
    attributions
        ``(n, d)``.
    """
    return -gini_coefficient(_mean_magnitude(attributions))


def right_reasons_loss(gradients: torch.Tensor, ground_truth: torch.Tensor) -> torch.Tensor:
    r"""Ross et al.'s "right for the right reasons" penalty on input gradients:

    .. math:: \frac1n \sum_i \sum_j \big((1 - \mathrm{GT}_{ij})\, g_{ij}\big)^2

    with ``g`` the input gradient of :math:`\sum_k \log p(y_k \mid x)` (use the
    :class:`~attreg.reducers.LogProbabilitySum` reducer) and ``1 - GT`` Ross et al.'s
    annotation ``A`` (1 where the input should not matter). ``ground_truth``: a vector or a
    per-sample matrix in [0, 1].

    Parameters
    ----------
    gradients
        Input gradients of the log-probabilities ``(n, ...)``.
    ground_truth
        1 where the input may matter.

    Examples
    --------
    >>> right_reasons_loss(torch.tensor([[2.0, 3.0]]), torch.tensor([1.0, 0.0])).item()
    9.0
    """
    flat = gradients.reshape(gradients.shape[0], -1)
    return ((1 - ground_truth.to(flat.dtype)) * flat).square().sum(1).mean()


def aggregate(losses: list[torch.Tensor], mode: str = "sum") -> torch.Tensor:
    """Combine several (already weighted) prior losses.

    ``"sum"``: :math:`\\sum_i L_i`; ``"squared_sum"``: :math:`\\sum_i L_i^2`, which
    lets a badly violated prior dominate the others.

    Parameters
    ----------
    losses
        The prior losses (scalars).
    mode
        ``"sum"`` or ``"squared_sum"``.
    """
    if not losses:
        raise ValueError("no prior losses to aggregate.")
    if mode == "sum" and len(losses) == 1:
        return torch.as_tensor(losses[0]).reshape(())
    stacked = torch.stack([torch.as_tensor(v).reshape(()) for v in losses])
    if mode == "sum":
        return stacked.sum()
    if mode == "squared_sum":
        return (stacked**2).sum()
    raise ValueError(f"unknown aggregation {mode!r}; use 'sum' or 'squared_sum'.")


# same-size integer types: the bits of a non-negative float order like its value
_ORDERED_BITS = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


def _ordered_bits(mag: torch.Tensor) -> torch.Tensor:
    """``mag`` (non-negative floats) viewed as same-size integers where that keeps the
    order (contiguous float16/32/64, bfloat16); otherwise ``mag`` itself. On the CPU
    integer reductions are about twice as fast as float ones, with the same result."""
    bits_type = _ORDERED_BITS.get(mag.dtype)
    return mag.view(bits_type) if bits_type is not None and mag.is_contiguous() else mag


def _row_extremes(mag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row minima and maxima of a non-negative matrix, values only (a value reduction is
    5-10x faster than one that also returns positions)."""
    bits = _ordered_bits(mag)
    lo, hi = bits.amin(dim=1, keepdim=True), bits.amax(dim=1, keepdim=True)
    return lo.view(mag.dtype), hi.view(mag.dtype)


def _may_be_nonzero(t: torch.Tensor) -> bool:
    """``False`` only when ``t`` is known to be all zeros: checked on the CPU (cheap), never
    on an accelerator (a device-to-host copy would stall the step)."""
    return t.device.type != "cpu" or bool(t.any())


def _may_hold_inf(a: torch.Tensor, row_summary: torch.Tensor) -> bool:
    """Whether rows of ``a`` may hold ``inf``, from a row sum or row maximum of ``|a|``
    (infinite, or NaN next to a NaN, wherever the row holds inf). On the CPU a check of
    the ``n`` summaries spares a pass over every entry; other devices answer ``True``
    (the full pass, no host synchronisation)."""
    return a.device.type != "cpu" or not bool(torch.isfinite(row_summary).all())


class _AbsMinMaxMSE(torch.autograd.Function):
    """``mean((abs_minmax(a) - gt)^2)`` with a hand-written backward (fewer passes).

    Per row, with ``m = |a|``, ``s = (m - lo) / span`` and ``d = s - gt``, the gradient
    is ``sign(a) c d / span`` plus two row constants at the arg-min and the arg-max of
    ``m``, which need only the row sums ``sum d`` and ``sum d s = sum d^2 + sum d gt``
    (the latter a matrix-vector product when ``gt`` is one vector).

    The forward takes the extremes' values only; the backward finds the arg-max, and the
    arg-min only for rows whose minimum is not zero: where ``|a|`` is 0 its gradient is
    multiplied by ``sign(a) = 0`` (as in the composition's autograd), so the arg-min term
    vanishes. Attributions of sparse data (``x - x'`` is 0 wherever both are) are zero
    somewhere in nearly every row, which saves the slowest reduction of the step.

    Only the first derivative is provided (the loss is never differentiated twice); the
    graph of ``a`` itself (e.g. attributions built with ``create_graph=True``) is kept.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, gt: torch.Tensor, eps: float) -> torch.Tensor:
        mag = a.abs()
        lo, hi = _row_extremes(mag)
        has_inf = None
        if _may_hold_inf(a, hi):  # rows holding inf: their indicator (as abs_minmax does)
            has_inf, mag = _infinite_rows_as_indicators(mag)
            lo, hi = _row_extremes(mag)
        span = hi - lo
        inv = torch.where(span > eps, 1.0 / span, torch.zeros_like(span))
        nonzero_lo = _may_be_nonzero(lo)
        if nonzero_lo:
            mag.sub_(lo)  # m - lo (>= 0: same arg-max and arg-min positions as m)
        neg_gt = (-gt[0]).expand_as(gt) if gt.stride(0) == 0 else -gt
        diff = torch.addcmul(neg_gt, mag, inv)  # s - gt
        row_sq = torch.linalg.vector_norm(diff, dim=1, keepdim=True).square()
        ctx.save_for_backward(a, gt, mag, diff, row_sq, inv, lo if nonzero_lo else None, has_inf)
        return row_sq.sum() / diff.numel()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        a, gt, shifted, diff, row_sq, inv, lo, has_inf = ctx.saved_tensors
        c = grad_out * 2.0 / diff.numel()  # dL/ds = c d
        if gt.stride(0) == 0:  # one ground-truth vector for all rows
            d_gt = (diff @ gt[0]).unsqueeze(1)
        else:
            d_gt = (diff * gt).sum(dim=1, keepdim=True)
        sum_rs = c * (row_sq + d_gt)  # sum_j dL/ds_j s_j
        grad = diff * (c * inv)
        bits = _ordered_bits(shifted)  # (argmax/argmin are 2x slower than max/min here)
        grad.scatter_add_(1, bits.max(dim=1, keepdim=True).indices, -sum_rs * inv)
        if lo is not None:
            sum_r = c * diff.sum(dim=1, keepdim=True)  # sum_j dL/ds_j
            lo_idx = bits.min(dim=1, keepdim=True).indices
            grad.scatter_add_(1, lo_idx, (sum_rs - sum_r) * inv)
        grad.mul_(a.sign())
        if has_inf is not None:  # the indicator rows do not depend on a
            grad.masked_fill_(has_inf, 0.0)
        return grad, None, None


def abs_minmax_mse_loss(
    attributions: torch.Tensor, ground_truth: torch.Tensor, eps: float | None = None
) -> torch.Tensor:
    """Fused ``mse_loss(abs_minmax(attributions), ground_truth)``: same value and
    gradient as the composition (tested), about half the passes over the data.

    Parameters
    ----------
    attributions
        Raw attributions ``(n, ...)``.
    ground_truth
        0/1, broadcastable to ``attributions``.
    eps
        Guard of the division.

    Examples
    --------
    >>> a = torch.randn(4, 6, requires_grad=True); gt = torch.tensor([1., 1, 0, 0, 0, 0])
    >>> torch.allclose(abs_minmax_mse_loss(a, gt), mse_loss(abs_minmax(a), gt))
    True
    """
    flat = _rows(attributions)  # rows holding inf: their indicator, as abs_minmax does
    gt = torch.broadcast_to(ground_truth.to(flat.dtype), flat.shape)
    return _AbsMinMaxMSE.apply(flat, gt, _tiny(flat, eps))


class _ShareOutside(torch.autograd.Function):
    """``mean_i O_i / S_i`` with ``S = sum_j |a_ij|`` and ``O = sum_j (1 - gt_ij) |a_ij|``,
    the mean over the ``m`` rows with a GT feature (all ``n`` for one GT vector).

    With ``r = O / S`` the gradient is ``sign(a) ((1 - gt) - r) / (m S)`` per counted row
    (0 elsewhere): a matrix-vector product and two row sums forward, one broadcast
    expression backward, instead of the composition's normalized copy and its graph. Rows
    with ``S = 0`` have loss 0 and gradient 0, as in :func:`share`. Rows holding ``inf``
    are replaced by their indicator of the infinite entries (as :func:`share` does) and
    get gradient 0; on the CPU they are looked for only when a row sum is not finite.
    First derivative only; the graph of ``a`` is kept.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, outside: torch.Tensor, eps: float) -> torch.Tensor:
        mag = a.abs()
        total = mag.sum(dim=1)
        has_inf = None
        if _may_hold_inf(a, total):  # rows holding inf: their indicator (as share does)
            has_inf, mag = _infinite_rows_as_indicators(mag)
            total = mag.sum(dim=1)
        inv = torch.where(total > eps, 1.0 / total, torch.zeros_like(total))
        if outside.stride(0) == 0:  # one ground-truth vector for all rows
            ratio = (mag @ outside[0]) * inv
            weight = (outside[0] < 1).any().to(total.dtype)  # 0-dim: 1, or 0 for an empty GT
            loss = ratio.mean() * weight
        else:
            ratio = (mag * outside).sum(dim=1) * inv
            counted = (outside < 1).any(dim=1).to(total.dtype)
            weight = counted / counted.sum().clamp_min(1)
            loss = (ratio * weight).sum()
        ctx.save_for_backward(a, outside, ratio, inv, weight, has_inf)
        return loss

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        a, outside, ratio, inv, weight, has_inf = ctx.saved_tensors
        if weight.ndim == 0:  # one GT vector: every row weighs 1/n
            scale = (grad_out / a.shape[0]) * inv * weight
        else:
            scale = grad_out * (weight * inv)
        grad = (outside - ratio.unsqueeze(1)).mul_(scale.unsqueeze(1)).mul_(a.sign())
        if has_inf is not None:  # the indicator rows do not depend on a
            grad.masked_fill_(has_inf, 0.0)
        return grad, None, None


def share_outside_loss(
    attributions: torch.Tensor, ground_truth: torch.Tensor, eps: float | None = None
) -> torch.Tensor:
    """Fused ``outside_share_loss(share(attributions), ground_truth)``: same value and
    gradient as the composition (tested), fewer passes over the data.

    Parameters
    ----------
    attributions
        Raw attributions ``(n, ...)``.
    ground_truth
        1 on the GT features.
    eps
        Guard of the division.

    Examples
    --------
    >>> a = torch.randn(4, 6, requires_grad=True); gt = torch.tensor([1., 1, 0, 0, 0, 0])
    >>> torch.allclose(share_outside_loss(a, gt), outside_share_loss(share(a), gt))
    True
    """
    flat = _rows(attributions)  # rows holding inf: their indicator, as share does
    outside = torch.broadcast_to(1.0 - ground_truth.to(flat.dtype), flat.shape)
    return _ShareOutside.apply(flat, outside, _tiny(flat, eps))
