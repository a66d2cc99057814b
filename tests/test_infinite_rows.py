"""A row of attributions holding inf scales to its limit (the infinite features take the
whole row), not to NaN; rows without inf are unchanged; the fused losses agree."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import attreg.functional as AF

SCALERS = {
    "abs_minmax": AF.abs_minmax,
    "abs_max": AF.abs_max,
    "share": AF.share,
    "softmax": AF.softmax,
}

rows = hnp.arrays(
    "float32",
    st.tuples(st.integers(2, 5), st.integers(2, 8)),
    elements=st.floats(-1e3, 1e3, width=32),
)


@settings(max_examples=60, deadline=None)
@given(rows, st.data())
def test_rows_with_inf_scale_to_their_limit_and_others_are_unchanged(values, data):
    a = torch.from_numpy(values)
    n, d = a.shape
    hit_row = data.draw(st.integers(0, n - 1))
    hit_cols = data.draw(st.lists(st.integers(0, d - 1), min_size=1, max_size=d, unique=True))
    signs = data.draw(st.lists(st.sampled_from([1.0, -1.0]), min_size=d, max_size=d))
    with_inf = a.clone()
    for c in hit_cols:
        with_inf[hit_row, c] = signs[c] * float("inf")
    indicator = torch.zeros(d)
    indicator[hit_cols] = 1.0
    others = [i for i in range(n) if i != hit_row]
    for name, scale in SCALERS.items():
        out = scale(with_inf)
        assert torch.isfinite(out).all(), name
        torch.testing.assert_close(out[others], scale(a)[others], msg=name)
        row = out[hit_row]
        if name in ("share", "softmax"):
            torch.testing.assert_close(row, indicator / indicator.sum(), msg=name)
        elif name == "abs_minmax" and len(hit_cols) == d:
            torch.testing.assert_close(row, torch.zeros(d), msg=name)  # a constant row
        else:
            torch.testing.assert_close(row, indicator, msg=name)
    gt = (torch.arange(d) % 2).float()
    torch.testing.assert_close(
        AF.abs_minmax_mse_loss(with_inf, gt), AF.mse_loss(AF.abs_minmax(with_inf), gt)
    )
    torch.testing.assert_close(
        AF.share_outside_loss(with_inf, gt), AF.outside_share_loss(AF.share(with_inf), gt)
    )


def test_gradients_stay_finite_and_the_infinite_row_gets_none():
    a = torch.tensor([[1.0, float("inf"), 2.0], [1.0, 2.0, 3.0]], requires_grad=True)
    gt = torch.tensor([0.0, 1.0, 0.0])
    for loss in (
        AF.share_outside_loss(a, gt),
        AF.abs_minmax_mse_loss(a, gt),
        AF.mse_loss(AF.softmax(a), gt),
    ):
        (grad,) = torch.autograd.grad(loss, a)
        assert torch.isfinite(grad).all()
        assert (grad[0] == 0).all() and (grad[1] != 0).any()


@pytest.mark.parametrize(
    ("fused", "composed"),
    [
        (AF.share_outside_loss, lambda a, gt: AF.outside_share_loss(AF.share(a), gt)),
        (AF.abs_minmax_mse_loss, lambda a, gt: AF.mse_loss(AF.abs_minmax(a), gt)),
    ],
    ids=["share", "abs_minmax"],
)
def test_the_fused_losses_have_the_compositions_gradient_next_to_an_infinite_row(
    fused, composed
):
    # the fused losses look for infinite entries only when a row sum or maximum is not
    # finite: with one such row, a row that overflows its sum, and ordinary rows, value
    # and gradient are the composition's (whose where() gives the infinite row no gradient)
    torch.manual_seed(0)
    base = torch.randn(4, 6)
    base[1, 2] = float("inf")
    base[2, :3] = 3e38  # the sum overflows, no entry is infinite
    gt = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    a, b = base.clone().requires_grad_(), base.clone().requires_grad_()
    value, reference = fused(a, gt), composed(b, gt)
    torch.testing.assert_close(value, reference)
    value.backward()
    reference.backward()
    torch.testing.assert_close(a.grad, b.grad)
    assert (a.grad[1] == 0).all() and (a.grad[0] != 0).any()
