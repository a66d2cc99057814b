"""Priors without ground truth (Erion et al.) and Ross et al.'s RRR: the defining math
as properties, composition with GT priors, and that they train."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn

import attreg
from attreg import functional as AF
from attreg.penalties import GiniSparsity, GraphLaplacian, TotalVariation

maps = hnp.arrays(
    "float64",
    st.tuples(st.integers(1, 3), st.integers(2, 5), st.integers(2, 5)),
    elements=st.floats(-10, 10),
)


@given(maps, st.floats(-5, 5))
def test_total_variation_is_a_seminorm_of_the_map_differences(a, c):
    a = torch.from_numpy(a)
    tv = AF.total_variation(a)
    loop = sum(
        abs(a[i, h + 1, w] - a[i, h, w])
        for i in range(a.shape[0])
        for h in range(a.shape[1] - 1)
        for w in range(a.shape[2])
    ) + sum(
        abs(a[i, h, w + 1] - a[i, h, w])
        for i in range(a.shape[0])
        for h in range(a.shape[1])
        for w in range(a.shape[2] - 1)
    )
    assert float(tv) == pytest.approx(float(loop) / a.shape[0], rel=1e-9, abs=1e-9)
    assert float(AF.total_variation(a + c)) == pytest.approx(float(tv), rel=1e-9, abs=1e-9)
    assert float(AF.total_variation(c * a)) == pytest.approx(abs(c) * float(tv), rel=1e-9, abs=1e-9)


graphs = st.integers(2, 6).flatmap(
    lambda d: st.tuples(
        hnp.arrays("float64", (d, d), elements=st.floats(0, 3)),
        hnp.arrays("float64", (3, d), elements=st.floats(-5, 5)),
    )
)


@given(graphs)
def test_graph_laplacian_equals_half_the_weighted_squared_differences(graph):
    w, a = (torch.from_numpy(v) for v in graph)
    w = (w + w.T) / 2
    phi = a.abs().mean(0)
    direct = 0.5 * (w * (phi[:, None] - phi[None, :]) ** 2).sum()
    value = AF.graph_laplacian_penalty(a, w)
    assert float(value) == pytest.approx(float(direct), rel=1e-9, abs=1e-9)
    sparse = GraphLaplacian(w.to_sparse())(a)
    assert float(sparse) == pytest.approx(float(value), rel=1e-9, abs=1e-9)
    assert float(value) >= -1e-9
    constant = torch.ones_like(a)  # equal importance everywhere: no penalty
    assert float(AF.graph_laplacian_penalty(constant, w)) == pytest.approx(0.0, abs=1e-9)


@given(hnp.arrays("float64", st.integers(2, 8), elements=st.floats(0, 10)), st.floats(0.1, 10))
def test_gini_matches_the_pairwise_definition_and_is_scale_free(phi, c):
    phi = torch.from_numpy(phi)
    if float(phi.sum()) < 1e-6:
        return
    d = phi.shape[0]
    pairwise = (phi[:, None] - phi[None, :]).abs().sum() / (2 * d * phi.sum())
    g = AF.gini_coefficient(phi)
    assert float(g) == pytest.approx(float(pairwise), rel=1e-6, abs=1e-9)
    assert 0 <= float(g) <= 1 - 1 / d + 1e-9
    assert float(AF.gini_coefficient(c * phi)) == pytest.approx(float(g), rel=1e-6, abs=1e-9)


def test_right_reasons_equals_masked_log_probability_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    gt = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 1, 0, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    value = attreg.RightForRightReasons(model, gt.double(), weight=2.0)(x, index=torch.arange(4))
    expected = 0.0
    for i in range(4):
        xi = x[i : i + 1].clone().requires_grad_()
        (g,) = torch.autograd.grad(torch.log_softmax(model(xi), 1).sum(), xi)
        expected += float((((1 - gt[i]) * g[0]) ** 2).sum())
    assert float(value.detach()) == pytest.approx(2.0 * expected / 4, rel=1e-9)


def test_penalties_compose_with_a_ground_truth_prior_and_share_attributions():
    model = nn.Sequential(nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 1))
    method = attreg.ExpectedGradients(model, differentiable=True)
    gt = torch.tensor([1.0] * 4 + [0.0] * 12)
    calls = []
    attribute = method.attribute

    def counted(*a, **k):
        calls.append(1)
        return attribute(*a, **k)

    method.attribute = counted
    priors = attreg.PriorSet(
        {
            "gt": attreg.AttributionPrior(
                model, gt, method=method, reparameterizer="share", loss="outside_share"
            ),
            "smooth": attreg.AttributionPenalty(
                model, TotalVariation((4, 4)), method=method, weight=0.1
            ),
            "sparse": attreg.AttributionPenalty(model, GiniSparsity(), method=method),
        }
    )
    terms = priors(torch.randn(32, 16), return_terms=True)
    assert len(calls) == 1  # one attribution pass for the three priors
    assert set(terms) == {"gt", "smooth", "sparse", "total"}
    terms["total"].backward()
    assert model[0].weight.grad is not None and model[2].weight.grad is not None


@pytest.mark.parametrize("penalty", [TotalVariation((4, 4)), GiniSparsity()])
def test_a_penalty_trains_toward_its_property(penalty):
    torch.manual_seed(0)
    model = nn.Linear(16, 1)
    prior = attreg.AttributionPenalty(model, penalty, method="input_gradient")
    x = torch.randn(64, 16)
    first = float(prior(x).detach())
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        prior(x).backward()
        opt.step()
    assert float(prior(x).detach()) < first - 0.05 * abs(first)


def test_bad_penalty_settings():
    with pytest.raises(ValueError, match="symmetric"):
        GraphLaplacian(torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="adjacency has shape"):
        AF.graph_laplacian_penalty(torch.randn(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="needs maps"):
        AF.total_variation(torch.randn(4, 9))
    with pytest.raises(TypeError, match="no ground truth"):
        attreg.AttributionPenalty(nn.Linear(3, 1), "gini", loss="mse")
    with pytest.raises(ValueError, match="unknown penalty"):
        attreg.AttributionPenalty(nn.Linear(3, 1), "smoothness")
