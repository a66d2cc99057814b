"""Direction-complete priors: per-output attributions, random directions, exclusion.

The axioms: one batched call with ``m`` directions equals ``m`` calls (same draws);
attributions are linear in the direction; an orthonormal set of ``d`` directions
preserves the sum of squared attributions (Parseval); the prior with ``OutputUnits``
is the mean of the per-unit priors, in value and in parameter gradients.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attreg
from attreg import functional as AF
from attreg.attr import ExpectedGradients, InputXGradient, IntegratedGradients, LinearPrefix
from attreg.reducers import (
    CallableReducer,
    Directions,
    Index,
    OutputUnits,
    RandomDirections,
    resolve_reducer,
)
from tests.conftest import make_mlp

# every test here runs with the fast paths on and off (conftest.fast_paths_both_ways)
pytestmark = pytest.mark.usefixtures("fast_paths_both_ways")

METHODS = {
    "eg": lambda t, r: (ExpectedGradients(t, r), dict(n_samples=2)),
    "ig": lambda t, r: (IntegratedGradients(t, r), dict(n_steps=5)),
    "ixg": lambda t, r: (InputXGradient(t, r), {}),
}


def _attribute(method, target, reducer, x, seed=3, **extra):
    explainer, kw = METHODS[method](target, reducer)
    if method == "eg":
        kw["generator"] = torch.Generator().manual_seed(seed)
    return explainer.attribute(x, **kw, **extra)


def _targets(n_in, n_out, seed=0):
    mlp = make_mlp(n_in, 6, n_out, seed=seed)
    return {"generic": mlp, "linear_prefix": LinearPrefix(mlp[0], mlp[1:])}


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(2, 6),
    n_in=st.integers(1, 5),
    n_out=st.integers(2, 4),
    method=st.sampled_from(sorted(METHODS)),
    kind=st.sampled_from(["generic", "linear_prefix"]),
)
def test_per_output_attributions_equal_a_loop_over_outputs(n, n_in, n_out, method, kind):
    target = _targets(n_in, n_out)[kind]
    x = torch.randn(n, n_in, dtype=torch.float64)
    batched = _attribute(method, target, OutputUnits(n_out), x)
    assert batched.shape == (n_out, n, n_in)
    loop = torch.stack([_attribute(method, target, Index(j), x) for j in range(n_out)])
    torch.testing.assert_close(batched, loop)


def test_a_block_of_units_and_additional_args_are_tiled_with_the_batch():
    lin = torch.nn.Linear(4, 5).double()

    def forward(x, scale):  # a per-sample extra argument must follow its sample
        return lin(x) * scale

    x = torch.randn(6, 4, dtype=torch.float64)
    scale = torch.rand(6, 1, dtype=torch.float64) + 0.5
    for method in METHODS:
        batched = _attribute(method, forward, OutputUnits([1, 3]), x, additional_forward_args=scale)
        loop = [
            _attribute(method, forward, Index(j), x, additional_forward_args=scale) for j in (1, 3)
        ]
        torch.testing.assert_close(batched, torch.stack(loop))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), method=st.sampled_from(sorted(METHODS)))
def test_attributions_are_linear_in_the_direction(seed, method):
    target = _targets(3, 4, seed=seed % 7)["linear_prefix"]
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    v = torch.randn(1, 4, dtype=torch.float64)
    along_v = _attribute(method, target, Directions(v), x)
    per_unit = _attribute(method, target, OutputUnits(4), x)
    torch.testing.assert_close(along_v, torch.einsum("j,jnf->nf", v[0].float().double(), per_unit))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), d=st.integers(2, 5))
def test_orthonormal_random_directions_preserve_squared_attributions(seed, d):
    """Parseval: sum_i A(v_i)^2 = sum_j A(e_j)^2 for every draw of a rotated basis."""
    target = _targets(3, d)["generic"]
    x = torch.randn(4, 3, dtype=torch.float64)
    rot = RandomDirections(d, orthogonal=True, generator=torch.Generator().manual_seed(seed))
    rotated = _attribute("ig", target, rot, x)
    units = _attribute("ig", target, OutputUnits(d), x)
    # the directions are float32: equal up to their rounding
    torch.testing.assert_close(rotated.square().sum(0), units.square().sum(0), rtol=1e-5, atol=1e-7)


def test_random_directions_are_unit_seeded_fresh_and_inside_the_units():
    r = RandomDirections(3, units=[0, 2, 5], generator=torch.Generator().manual_seed(0))
    v1, v2 = r.directions(6), r.directions(6)
    torch.testing.assert_close(torch.linalg.vector_norm(v1, dim=1), torch.ones(3))
    assert not torch.equal(v1, v2)  # fresh on every call
    assert torch.all(v1[:, [1, 3, 4]] == 0)
    again = RandomDirections(3, units=[0, 2, 5], generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.directions(6), v1)


def test_random_unit_direction_covariance_is_isotropic():
    """E[v v^T] = I / d: the random-direction estimate weights every direction equally."""
    r = RandomDirections(20_000, generator=torch.Generator().manual_seed(0))
    v = r.directions(4).double()
    torch.testing.assert_close(
        v.T @ v / len(v), torch.eye(4, dtype=torch.float64) / 4, atol=0.01, rtol=0
    )


def test_one_direction_is_drawn_per_call_and_used_for_every_row():
    target = _targets(3, 4)["generic"]
    gen = torch.Generator().manual_seed(5)
    r = RandomDirections(generator=gen)
    x = torch.randn(6, 3, dtype=torch.float64)
    a = IntegratedGradients(target, r).attribute(x, n_steps=4)
    v = RandomDirections(generator=torch.Generator().manual_seed(5)).directions(4)
    b = IntegratedGradients(target, Directions(v)).attribute(x, n_steps=4)
    torch.testing.assert_close(a, b)
    assert resolve_reducer("random_direction").n_directions == 1


@pytest.mark.parametrize("method", ["eg", "ig"])
def test_per_unit_prior_is_the_mean_of_single_unit_priors_with_equal_gradients(method):
    torch.manual_seed(0)
    model = make_mlp(5, 8, 3)
    gt = torch.tensor([1.0, 1.0, 0, 0, 0])
    x = torch.randn(16, 5, dtype=torch.float64)
    kw = dict(method=method, reparameterizer="abs_minmax", n_steps=4)

    def grads(loss):  # the output bias does not move attributions: its gradient is None
        return torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)

    multi = attreg.AttributionPrior(
        model, gt, reducer=OutputUnits(3), generator=torch.Generator().manual_seed(1), **kw
    )(x)
    singles = [
        attreg.AttributionPrior(
            model, gt, reducer=Index(j), generator=torch.Generator().manual_seed(1), **kw
        )(x)
        for j in range(3)
    ]
    mean = torch.stack(singles).mean()
    torch.testing.assert_close(multi, mean)
    g_multi, g_mean = grads(multi), grads(mean)
    assert g_multi[0] is not None and g_multi[0].abs().sum() > 0
    for a, b in zip(g_multi, g_mean, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)


def test_per_unit_prior_with_a_ground_truth_matrix():
    model = make_mlp(4, 6, 2)
    gt = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 1.0]])
    x = torch.randn(3, 4, dtype=torch.float64)
    multi = attreg.AttributionPrior(model, gt, method="input_x_gradient", reducer=OutputUnits(2))
    singles = [
        attreg.AttributionPrior(model, gt, method="input_x_gradient", reducer=Index(j))(x)
        for j in range(2)
    ]
    torch.testing.assert_close(multi(x), torch.stack(singles).mean())


def test_direction_reducer_refuses_target_and_bad_settings():
    model = make_mlp(3, 4, 2)
    with pytest.raises(ValueError, match="target="):
        InputXGradient(model, OutputUnits(2)).attribute(torch.randn(2, 3).double(), target=0)
    with pytest.raises(ValueError, match="positive integer"):
        RandomDirections(0)
    with pytest.raises(ValueError, match="out of range"):
        RandomDirections(units=[5]).directions(3)
    with pytest.raises(ValueError, match="orthogonal"):
        RandomDirections(4, orthogonal=True).directions(3)
    with pytest.raises(ValueError, match="distinct"):
        OutputUnits([1, 1])
    with pytest.raises(ValueError, match="NaN"):
        Directions(torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="2-D output"):
        RandomDirections()(torch.randn(3, 2, 2))


def test_share_reparameterization_sums_to_one_and_keeps_the_maximum_trainable():
    a = torch.tensor([[4.0, -1.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    s = AF.share(a)
    torch.testing.assert_close(s.sum(1), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(AF.share(3 * a), s)
    # feature 0 is forbidden (feature_weight = 1 - GT) and the row's maximum: abs_max's
    # score of it is 1 whatever the values, so its loss has exactly zero gradient
    forbid, zero = torch.tensor([1.0, 0.0, 0.0]), torch.zeros(3)
    (g_max,) = torch.autograd.grad(AF.mse_loss(AF.abs_max(a[:1]), zero, forbid), a)
    (g_share,) = torch.autograd.grad(AF.mse_loss(AF.share(a[:1]), zero, forbid), a)
    assert torch.all(g_max == 0)
    assert g_share[0, 0] > 0  # pushes the forbidden maximum down


def _minimise(prior, model, x, steps: int) -> None:
    """Train ``model`` on the prior alone (Adam, lr 1e-2)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        prior(x).backward()
        opt.step()


def test_exclusion_prior_is_the_share_on_excluded_features_and_trains_them_away():
    torch.manual_seed(0)
    enc = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    excluded = torch.tensor([1.0, 1.0, 0, 0, 0, 0])
    prior = attreg.ExclusionPrior(enc, excluded, method="input_x_gradient", reducer=OutputUnits(3))
    x = torch.randn(64, 6)
    attr = InputXGradient(enc, OutputUnits(3)).attribute(x).abs()
    expected = (attr[..., :2].sum(-1) / attr.sum(-1)).mean()
    torch.testing.assert_close(prior(x), expected)
    before = float(prior(x).detach())
    _minimise(prior, enc, x, steps=60)
    assert float(prior(x).detach()) < 0.2 * before
    with pytest.raises(TypeError, match="fixes"):
        attreg.ExclusionPrior(enc, excluded, loss="mse")


def test_callable_reducer_and_closed_form_agree_per_row():
    """A direction per row through attreg_sc's closed-form encoder gradient equals the
    same reduction through autograd (a callable reducer has no closed form)."""
    import scvi

    from attreg_sc.fast.encoder_prefix import encoder_prefix

    torch.manual_seed(0)
    enc = scvi.nn.Encoder(30, 3, n_cat_list=[2], n_hidden=16, use_batch_norm=False,
                          use_layer_norm=True, return_dist=True).eval()
    module = enc  # no dropout (eval): both paths see the same function
    x = torch.log1p(torch.poisson(torch.full((12, 30), 2.0)))
    b = torch.tensor([[0], [1]] * 6)
    target = encoder_prefix(enc, 30, (x, b))
    assert target is not None
    out = {}
    for name, reducers in {
        "closed": [OutputUnits(3)],
        "autograd": [CallableReducer(lambda o, j=j: o[:, j]) for j in range(3)],
    }.items():
        maps = []
        for r in reducers:
            eg = ExpectedGradients(target, r, differentiable=True)
            a = eg.attribute(
                x, additional_forward_args=(b,), generator=torch.Generator().manual_seed(2)
            )
            maps.append(a if a.ndim == 3 else a.unsqueeze(0))
        out[name] = torch.cat(maps)
    torch.testing.assert_close(out["closed"], out["autograd"], rtol=1e-4, atol=1e-6)
    params = [p for p in module.parameters() if p.requires_grad]
    g_closed = torch.autograd.grad(out["closed"].square().sum(), params, allow_unused=True)
    g_auto = torch.autograd.grad(out["autograd"].square().sum(), params, allow_unused=True)
    for a, c in zip(g_closed, g_auto, strict=True):
        if a is None or c is None:
            continue
        torch.testing.assert_close(a, c, rtol=1e-3, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 5), f=st.integers(2, 7), k=st.integers(1, 6))
def test_outside_share_loss_is_one_minus_the_gt_share(seed, n, f, k):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, f, generator=g, dtype=torch.float64)
    gt = torch.zeros(f, dtype=torch.float64)
    gt[: min(k, f - 1)] = 1
    share_on_gt = (a.abs() * gt).sum(1) / a.abs().sum(1)
    loss = AF.outside_share_loss(AF.share(a), gt)
    torch.testing.assert_close(loss, 1 - share_on_gt.mean())
    assert 0 <= float(loss) <= 1
    torch.testing.assert_close(AF.outside_share_loss(AF.share(5 * a), gt), loss)  # scale-free


def test_outside_share_prior_trains_attribution_onto_the_gt():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    gt = torch.tensor([1.0, 1.0, 0, 0, 0, 0])
    prior = attreg.AttributionPrior(
        model, gt, method="input_x_gradient", reducer=OutputUnits(2),
        reparameterizer="share", loss="outside_share",
    )  # fmt: skip
    x = torch.randn(64, 6)
    before = float(prior(x).detach())
    _minimise(prior, model, x, steps=80)
    assert float(prior(x).detach()) < 0.3 * before
    with pytest.raises(ValueError, match="feature_weight"):
        attreg.AttributionPrior(model, gt, loss="outside_share", feature_weight=gt)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 6),
    f=st.integers(2, 9),
    per_row=st.booleans(),
    zero_row=st.booleans(),
)
def test_fused_share_outside_loss_equals_the_composition(seed, n, f, per_row, zero_row):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, f, generator=g, dtype=torch.float64)
    if zero_row:
        a[0] = 0.0
    a.requires_grad_()
    shape = (n, f) if per_row else (f,)
    gt = (torch.rand(shape, generator=g, dtype=torch.float64) < 0.4).double()
    fused = AF.share_outside_loss(a, gt)
    composed = AF.outside_share_loss(AF.share(a), gt)
    torch.testing.assert_close(fused, composed)
    (g_fused,) = torch.autograd.grad(fused, a)
    (g_comp,) = torch.autograd.grad(composed, a)
    torch.testing.assert_close(g_fused, g_comp)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000), n=st.integers(1, 6), f=st.integers(2, 9), extra=st.integers(1, 5)
)
def test_samples_without_gt_features_leave_the_share_loss_unchanged(seed, n, f, extra):
    """Appending samples whose GT row is empty changes neither the outside-share loss nor
    the gradient of the other samples' attributions (composition and fused op): their
    loss would be 1 whatever they do, so they are outside the mean instead of diluting it."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n + extra, f, generator=g, dtype=torch.float64, requires_grad=True)
    gt = (torch.rand(n, f, generator=g, dtype=torch.float64) < 0.5).double()
    gt[:, 0] = 1.0  # every original sample has a GT feature
    padded = torch.cat([gt, torch.zeros(extra, f, dtype=torch.float64)])
    for loss in (
        lambda t, m: AF.outside_share_loss(AF.share(t), m),
        AF.share_outside_loss,
    ):
        alone = loss(a[:n], gt)
        with_empty = loss(a, padded)
        torch.testing.assert_close(with_empty, alone)
        (grad,) = torch.autograd.grad(with_empty, a)
        (grad_alone,) = torch.autograd.grad(alone, a)
        torch.testing.assert_close(grad, grad_alone)
        assert not grad[n:].any()
        # no sample with a GT feature: nothing to constrain
        assert float(loss(a[n:].detach(), padded[n:])) == 0.0


def test_fused_share_outside_loss_gradcheck_and_prior_uses_it():
    a = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    gt = torch.tensor([1.0, 0, 1, 0, 0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: AF.share_outside_loss(t, gt), (a,))
    prior = attreg.AttributionPrior(
        torch.nn.Linear(5, 2), gt.float(), reparameterizer="share", loss="outside_share"
    )
    assert prior._fused is AF.share_outside_loss
