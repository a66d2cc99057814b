"""Property tests of reducers, reparameterizers, losses and aggregation."""

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import attreg.functional as AF
from attreg import reducers
from attreg.reparameterizers import AbsMax, AbsMinMax, Compose, Sigmoid, Softmax

# every test here runs with the fast paths on and off (conftest.fast_paths_both_ways)
pytestmark = pytest.mark.usefixtures("fast_paths_both_ways")

vals = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=64)
matrices = hnp.arrays(
    np.float64, hnp.array_shapes(min_dims=2, max_dims=2, max_side=8), elements=vals
)
REPARAMS = [AF.sigmoid, AF.abs_minmax, AF.abs_max, AF.softmax]


@pytest.mark.parametrize("fn", REPARAMS)
@given(a=matrices)
def test_reparameterizers_land_in_unit_interval(fn, a):
    out = fn(torch.from_numpy(a))
    assert out.shape == a.shape
    assert torch.isfinite(out).all()
    assert ((out >= 0) & (out <= 1)).all()


@pytest.mark.parametrize("fn", REPARAMS)
@given(c=vals, n=st.integers(1, 6))
def test_constant_rows_give_no_nan_and_finite_gradients(fn, c, n):
    a = torch.full((2, n), c, dtype=torch.float64, requires_grad=True)
    out = fn(a)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(a.grad).all()


@given(a=matrices, scale=st.floats(1e-3, 1e3))
def test_abs_minmax_and_abs_max_are_scale_and_sign_invariant(a, scale):
    t = torch.from_numpy(a)
    assume(t.abs().max() > 1e-6)
    assume(not ((t != 0) & (t.abs() < 1e-250)).any())  # keep clear of subnormal underflow
    for fn in (AF.abs_minmax, AF.abs_max):
        base = fn(t)
        assert torch.allclose(fn(t * scale), base, atol=1e-9)
        assert torch.allclose(fn(-t), base, atol=1e-12)


@given(a=matrices)
def test_abs_minmax_spans_unit_interval_on_nonconstant_rows(a):
    t = torch.from_numpy(a).abs()
    out = AF.abs_minmax(torch.from_numpy(a))
    varying = (t.max(1).values - t.min(1).values) > 1e-9
    assert torch.allclose(
        out[varying].max(1).values, torch.ones(int(varying.sum()), dtype=out.dtype)
    )
    assert torch.allclose(
        out[varying].min(1).values, torch.zeros(int(varying.sum()), dtype=out.dtype)
    )


def test_softmax_rows_sum_to_one_and_sigmoid_is_monotone():
    a = torch.randn(4, 6, dtype=torch.float64)
    assert torch.allclose(AF.softmax(a).sum(1), torch.ones(4, dtype=torch.float64))
    s = torch.sort(a, dim=1).values
    assert (AF.sigmoid(s).diff(dim=1) >= 0).all()
    assert torch.allclose(AF.sigmoid(torch.zeros(1)), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="temperature"):
        Sigmoid(temperature=0.0)


def test_module_forms_equal_functional_and_compose():
    a = torch.randn(3, 5, dtype=torch.float64)
    assert torch.equal(AbsMinMax()(a), AF.abs_minmax(a))
    assert torch.equal(Softmax(2.0)(a), AF.softmax(a, 2.0))
    assert torch.equal(Compose(AbsMax(), Sigmoid(0.5))(a), AF.sigmoid(AF.abs_max(a), 0.5))


binary = hnp.arrays(np.float64, (3, 5), elements=st.sampled_from([0.0, 1.0]))
unit = hnp.arrays(np.float64, (3, 5), elements=st.integers(0, 1000).map(lambda i: i / 1000))


@pytest.mark.parametrize("loss", ["mse", "mae"])
@given(gt=binary, scores=unit)
def test_loss_is_zero_iff_scores_equal_gt(loss, gt, scores):
    g, s = torch.from_numpy(gt), torch.from_numpy(scores)
    assert float(AF.attribution_loss(g, g, loss)) == 0.0
    value = float(AF.attribution_loss(s, g, loss))
    assert (value == 0.0) == bool(torch.equal(s, g))
    assert value >= 0


def test_loss_values_and_feature_weights():
    s = torch.tensor([[0.5, 1.0, 0.0]])
    g = torch.tensor([1.0, 1.0, 1.0])
    assert float(AF.mse_loss(s, g)) == pytest.approx((0.25 + 0 + 1) / 3)
    assert float(AF.mae_loss(s, g)) == pytest.approx((0.5 + 0 + 1) / 3)
    w = torch.tensor([1.0, 0.0, 3.0])
    assert float(AF.mse_loss(s, g, w)) == pytest.approx((0.25 + 3) / 4)
    assert float(AF.attribution_loss(s, g, lambda a, b: (a - b).sum())) == pytest.approx(-1.5)
    with pytest.raises(ValueError, match="unknown loss"):
        AF.attribution_loss(s, g, "huber")


@given(values=st.lists(st.floats(0, 10), min_size=1, max_size=5))
def test_aggregation_math(values):
    ts = [torch.tensor(v) for v in values]
    assert float(AF.aggregate(ts, "sum")) == pytest.approx(sum(values))
    assert float(AF.aggregate(ts, "squared_sum")) == pytest.approx(sum(v * v for v in values))


def test_reducers():
    out = torch.arange(12.0).reshape(3, 4)
    assert torch.equal(reducers.Sum()(out), out.sum(1))
    assert torch.equal(reducers.Mean()(out), out.mean(1))
    assert torch.allclose(reducers.L2Norm()(out), out.norm(dim=1))
    assert torch.equal(reducers.Index(2)(out), out[:, 2])
    assert torch.equal(reducers.Index(slice(0, 2))(out), out[:, :2].sum(1))
    assert torch.equal(reducers.Sum(output=0)((out, -out)), out.sum(1))
    assert torch.equal(reducers.Sum(output="mu")({"mu": out}), out.sum(1))
    assert torch.equal(
        reducers.TargetReducer(torch.tensor([0, 1, 2]))(out), torch.tensor([0.0, 5, 10])
    )
    with pytest.raises(ValueError, match="tell the reducer which element"):
        reducers.Sum()((out, out))
    with pytest.raises(ValueError, match="could not select"):
        reducers.Sum(output=5)((out, out))
    with pytest.raises(ValueError, match="unknown reducer"):
        reducers.resolve_reducer("max")


def _assert_fused_equals_composition(t: torch.Tensor, gt: torch.Tensor) -> None:
    fused = AF.abs_minmax_mse_loss(t, gt)
    (g1,) = torch.autograd.grad(fused, t)
    ref = AF.mse_loss(AF.abs_minmax(t), gt)
    (g2,) = torch.autograd.grad(ref, t)
    assert torch.allclose(fused, ref, atol=1e-12)
    # ties in min/max are resolved to one element by both; values equal -> same gradient.
    # The composition's autograd forms 1/span - (hi - lo)/span^2 for the max element, which
    # cancels only up to rounding: its error grows like machine-eps/span, so the tolerance
    # of each row does too (a row spanning 3.5e-13 carries a 3e-5 rounding error).
    span = t.detach().abs().amax(1, keepdim=True) - t.detach().abs().amin(1, keepdim=True)
    tol = 1e-9 + torch.where(span > 0, 1e-12 / span, torch.zeros_like(span))
    assert bool(((g1 - g2).abs() <= tol).all())


@given(a=hnp.arrays(np.float64, (3, 7), elements=st.floats(-10, 10)), seed=st.integers(0, 99))
def test_fused_abs_minmax_mse_equals_composition(a, seed):
    gt = torch.from_numpy(np.random.default_rng(seed).integers(0, 2, 7).astype(np.float64))
    _assert_fused_equals_composition(torch.from_numpy(a).requires_grad_(), gt)


@given(a=matrices, seed=st.integers(0, 99))
def test_fused_abs_minmax_mse_with_one_ground_truth_row_per_sample(a, seed):
    gt = np.random.default_rng(seed).integers(0, 2, a.shape).astype(np.float64)
    _assert_fused_equals_composition(torch.from_numpy(a).requires_grad_(), torch.from_numpy(gt))


def test_fused_loss_gradcheck():
    t = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    gt = torch.tensor([1.0, 0, 1, 0, 0, 0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: AF.abs_minmax_mse_loss(x, gt), (t,))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@given(
    a=hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=2, max_dims=2, max_side=9),
        # few distinct values: ties are the rule, not the exception
        elements=st.sampled_from([0.0, 0.5, 1.0, 2.5, 1e-30, 7.0, float("inf")]),
    )
)
def test_row_extremes_by_bits_equal_float_reductions(dtype, a):
    from attreg.functional import _ordered_bits, _row_extremes

    mag = torch.from_numpy(a).to(dtype)
    lo, hi = _row_extremes(mag)
    assert torch.equal(lo, mag.amin(dim=1, keepdim=True))
    assert torch.equal(hi, mag.amax(dim=1, keepdim=True))
    # the positions the backward takes from the bits hold the extremes (any one of ties)
    bits = _ordered_bits(mag)
    lo_idx, hi_idx = bits.min(1, keepdim=True).indices, bits.max(1, keepdim=True).indices
    assert torch.equal(mag.gather(1, lo_idx), lo) and torch.equal(mag.gather(1, hi_idx), hi)


def test_fused_loss_with_and_without_zero_minima():
    """Rows whose smallest |a| is 0 (sparse data) skip the arg-min term, rows with a
    positive minimum keep it: both equal the composition, alone and mixed."""
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(3, 40)) + np.sign(rng.normal(size=(3, 40))) * 0.5
    sparse = np.where(rng.random((3, 40)) < 0.6, 0.0, rng.normal(size=(3, 40)))
    gt = torch.from_numpy((rng.random(40) < 0.3).astype(np.float64))
    for rows in (dense, sparse, np.vstack([dense, sparse])):
        _assert_fused_equals_composition(torch.from_numpy(rows).requires_grad_(), gt)
    assert (np.abs(dense).min(1) > 0).all() and (np.abs(sparse).min(1) == 0).all()
