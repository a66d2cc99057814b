import captum.attr
import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from attreg import IntegratedGradients
from attreg.attr import QUADRATURE_RULES, quadrature
from attreg.reducers import Index
from tests.conftest import make_mlp

# every test here runs with the fast paths on and off (conftest.fast_paths_both_ways)
pytestmark = pytest.mark.usefixtures("fast_paths_both_ways")

finite = st.floats(-3, 3, allow_nan=False, allow_infinity=False)


@given(
    seed=st.integers(0, 10_000),
    x=hnp.arrays(np.float64, (3, 4), elements=finite),
    b=hnp.arrays(np.float64, (3, 4), elements=finite),
)
def test_completeness_on_random_mlps(seed, x, b):
    """Axiom: sum of IG attributions == F(x) - F(baseline)."""
    model = make_mlp(4, 6, 1, seed=seed)
    x, b = torch.from_numpy(x), torch.from_numpy(b)
    attr, delta = IntegratedGradients(model).attribute(
        x, b, n_steps=64, return_convergence_delta=True
    )
    expected = (model(x) - model(b)).squeeze(1)
    assert torch.allclose(attr.sum(1), expected, atol=1e-6)
    assert delta.abs().max() < 1e-6


@pytest.mark.parametrize("rule", QUADRATURE_RULES)
@pytest.mark.parametrize("n_steps", [2, 5, 20])
def test_linear_model_exact_for_every_rule(rule, n_steps):
    """IG on a linear model is (x - x') * w exactly: every rule integrates a constant."""
    lin = torch.nn.Linear(6, 1).double()
    x, b = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    attr = IntegratedGradients(lin).attribute(x, b, n_steps=n_steps, method=rule)
    assert torch.allclose(attr, (x - b) * lin.weight, atol=1e-12)
    _, w = quadrature(rule, n_steps)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-14)


@pytest.mark.parametrize(
    "rule", ["riemann_left", "riemann_right", "riemann_middle", "gausslegendre"]
)
def test_matches_captum(mlp, rule):
    x, b = torch.randn(5, 5, dtype=torch.float64), torch.randn(5, 5, dtype=torch.float64)
    target = torch.tensor([0, 1, 1, 0, 1])
    ours = IntegratedGradients(mlp).attribute(x, b, target=target, n_steps=16, method=rule)
    ref = captum.attr.IntegratedGradients(mlp).attribute(
        x, b, target=target, n_steps=16, method=rule
    )
    assert torch.allclose(ours, ref, atol=1e-5)


def test_captum_trapezoid_loses_mass_and_ours_does_not():
    """captum's trapezoid weights sum to (m-1)/m; ours to 1 (see the quadrature docs)."""
    lin = torch.nn.Linear(3, 1).double()
    x = torch.randn(2, 3, dtype=torch.float64)
    ours = IntegratedGradients(lin).attribute(x, n_steps=20, method="riemann_trapezoid")
    ref = captum.attr.IntegratedGradients(lin).attribute(x, n_steps=20, method="riemann_trapezoid")
    full = (lin(x) - lin(torch.zeros_like(x))).squeeze(1)
    assert torch.allclose(ours.sum(1), full, atol=1e-12)
    assert torch.allclose(ref.sum(1), 0.95 * full, atol=1e-12)


def test_internal_batch_size_does_not_change_result(mlp):
    x = torch.randn(7, 5, dtype=torch.float64)
    ig = IntegratedGradients(mlp, Index(1))
    full = ig.attribute(x, n_steps=10)
    for ibs in (1, 7, 15, 100):
        assert torch.allclose(ig.attribute(x, n_steps=10, internal_batch_size=ibs), full)


def test_additional_forward_args_are_repeated_per_step():
    lin = torch.nn.Linear(5, 1).double()

    def f(x, c):
        return lin(torch.cat([x, c], dim=1))

    x = torch.randn(4, 3, dtype=torch.float64)
    c = torch.randn(4, 2, dtype=torch.float64)
    attr = IntegratedGradients(f).attribute(x, additional_forward_args=(c,), n_steps=4)
    assert attr.shape == x.shape
    assert torch.allclose(attr, x * lin.weight[:, :3], atol=1e-12)


def test_baseline_forms(mlp):
    x = torch.randn(3, 5, dtype=torch.float64)
    ig = IntegratedGradients(mlp)
    zero = ig.attribute(x)
    assert torch.allclose(ig.attribute(x, 0.0), zero)
    assert torch.allclose(ig.attribute(x, torch.zeros(5, dtype=torch.float64)), zero)
    assert torch.allclose(ig.attribute(x, lambda t: torch.zeros_like(t)), zero)
    with pytest.raises(ValueError, match="cannot broadcast"):
        ig.attribute(x, torch.zeros(2, 5, dtype=torch.float64))


def test_post_hoc_mode_has_no_graph_and_differentiable_mode_does(mlp):
    x = torch.randn(3, 5, dtype=torch.float64)
    assert not IntegratedGradients(mlp).attribute(x, n_steps=4).requires_grad
    attr = IntegratedGradients(mlp, differentiable=True).attribute(x, n_steps=4)
    assert attr.requires_grad
    attr.pow(2).sum().backward()
    # every parameter except the output bias (which cannot change a gradient) is reached
    reached = {
        n for n, p in mlp.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0
    }
    assert reached == {"0.weight", "0.bias", "2.weight"}


def test_bad_rule_and_steps(mlp):
    x = torch.randn(2, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="unknown integration method"):
        IntegratedGradients(mlp).attribute(x, method="simpson")
    with pytest.raises(ValueError, match="n_steps"):
        IntegratedGradients(mlp).attribute(x, n_steps=0)
