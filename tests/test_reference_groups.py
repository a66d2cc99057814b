"""EG references drawn within groups (``reference_groups``): the draw's axioms, the
attributions it gives against a loop over the same draws, and its way through the prior."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import attreg
from attreg.attr import ExpectedGradients
from attreg.attr.expected_gradients import group_reference_index

pytestmark = pytest.mark.usefixtures("fast_paths_both_ways")


@given(
    st.lists(st.integers(-2, 4), min_size=2, max_size=40),
    st.integers(1, 6),
    st.integers(0, 2**16),
)
@settings(max_examples=60, deadline=None)
def test_group_references_stay_in_the_group_and_never_are_the_sample(groups, k, seed):
    g = torch.tensor(groups)
    idx = group_reference_index(g, k, torch.Generator().manual_seed(seed), g.device)
    n = len(groups)
    assert idx.shape == (k, n) and idx.dtype == torch.long
    assert int(idx.min()) >= 0 and int(idx.max()) < n
    assert bool((idx != torch.arange(n)).all())  # n >= 2: never the sample itself
    labelled = g >= 0
    counts = torch.bincount(g[labelled], minlength=5)
    shared = labelled & (counts[g.clamp(min=0)] >= 2)
    # a sample with a partner draws within its group; a lone one, or one of no group
    # (a negative label), draws any other sample
    assert bool((g[idx][:, shared] == g[shared]).all())


def test_group_references_are_uniform_over_the_other_members():
    g = torch.tensor([2, 0, 2, -1, 2, 1, 2, 0, 9, -1, -3])
    idx = group_reference_index(g, 40_000, torch.Generator().manual_seed(0), g.device)
    for i, label in enumerate(g.tolist()):
        members = (g == label).nonzero().view(-1).tolist()
        others = [j for j in members if j != i] if len(members) > 1 and label >= 0 else \
            [j for j in range(len(g)) if j != i]
        freq = torch.bincount(idx[:, i], minlength=len(g))[others].double() / idx.shape[0]
        assert set(idx[:, i].unique().tolist()) == set(others)
        assert torch.allclose(freq, torch.full_like(freq, 1 / len(others)), atol=0.012)


def test_group_references_are_reproducible_and_one_sample_is_itself():
    g = torch.tensor([0, 1, 1, 0, 0])
    a = group_reference_index(g, 3, torch.Generator().manual_seed(5), g.device)
    b = group_reference_index(g, 3, torch.Generator().manual_seed(5), g.device)
    assert torch.equal(a, b)
    one = group_reference_index(torch.tensor([3]), 2, None, torch.device("cpu"))
    assert one.tolist() == [[0], [0]]


def test_completeness_within_the_group_on_a_linear_model():
    """On a linear model EG is exact: each attribution sums to F(x) - F(x') with x' the
    drawn reference, which is a member of the sample's group."""
    model = nn.Linear(4, 1).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    attr = ExpectedGradients(model).attribute(
        x, generator=torch.Generator().manual_seed(0), reference_groups=groups
    )
    partner = torch.tensor([1, 0, 3, 2, 5, 4])  # each group has two members
    expected = (model(x) - model(x[partner])).squeeze(1)
    assert torch.allclose(attr.sum(1), expected, atol=1e-12)


def test_a_prior_and_a_prior_set_pass_the_groups_on():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.randn(12, 5)
    groups = torch.arange(12) % 3
    gt = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])
    prior = attreg.AttributionPrior(model, gt, generator=torch.Generator().manual_seed(2))
    a = prior(x, reference_groups=groups)
    prior.generator.manual_seed(2)
    b = prior(x)
    assert a.requires_grad and not torch.equal(a, b)  # other references, another loss
    prior.generator.manual_seed(2)
    eg = ExpectedGradients(model, differentiable=True)
    direct = eg.attribute(x, generator=prior.generator, reference_groups=groups)
    prior.generator.manual_seed(2)
    assert torch.allclose(prior.attributions(x, reference_groups=groups), direct)
    pset = attreg.PriorSet({"a": prior})
    prior.generator.manual_seed(2)
    assert torch.allclose(pset(x, reference_groups=groups), a)


def test_bad_groups_are_refused_with_the_fix():
    model = nn.Linear(4, 2)
    x = torch.randn(5, 4)
    eg = ExpectedGradients(model)
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        eg.attribute(x, reference_groups=torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer labels"):
        eg.attribute(x, reference_groups=torch.zeros(5))
    with pytest.raises(ValueError, match="references='batch'"):
        eg.attribute(x, references=torch.randn(3, 4), reference_groups=torch.zeros(5).long())
    with pytest.raises(TypeError, match="must be a tensor"):
        eg.attribute(x, reference_groups=[0, 0, 1, 1, 1])
    ig_prior = attreg.AttributionPrior(model, torch.tensor([1.0, 0, 0, 0]), method="ig")
    with pytest.raises(ValueError, match="method='eg'"):
        ig_prior(x, reference_groups=torch.zeros(5, dtype=torch.long))


@given(
    st.lists(st.integers(-1, 5), min_size=2, max_size=40),
    st.integers(1, 4),
    st.integers(0, 2**16),
)
@settings(max_examples=60, deadline=None)
def test_group_draw_equals_the_draw_from_the_groups_unique_counts(groups, k, seed):
    """The draw finds each group's extent with fixed-size scans (no data-dependent shape);
    it equals the same draw with the extents from ``torch.unique_consecutive``."""
    g = torch.tensor(groups)
    n = len(groups)
    order = torch.argsort(g, stable=True)
    _, inverse, counts = torch.unique_consecutive(g[order], return_inverse=True,
                                                  return_counts=True)
    size, start = counts[inverse], (torch.cumsum(counts, 0) - counts)[inverse]
    alone = (size == 1) | (g[order] < 0)
    size, start = torch.where(alone, n, size), torch.where(alone, 0, start)
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand((k, n), generator=gen)
    offset = (u * (size - 1)).long().clamp_(max=size - 2) + 1
    want = torch.empty((k, n), dtype=torch.long)
    want[:, order] = order[start + (torch.arange(n) - start + offset) % size]
    got = group_reference_index(g, k, torch.Generator().manual_seed(seed), g.device)
    assert torch.equal(got, want)
