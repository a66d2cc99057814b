"""captum conveniences attreg now has: NoiseTunnel (SmoothGrad, SmoothGrad², VarGrad) as a
differentiable wrapper, 0-dim tensor targets, captum's callable baselines, and the
``multiplies_by_inputs`` attribute name."""

import pytest
import torch
from captum.attr import IntegratedGradients as CaptumIG
from captum.attr import NoiseTunnel as CaptumNoiseTunnel
from captum.attr import Saliency
from torch import nn

import attreg
from attreg.attr import InputGradient, IntegratedGradients, NoiseTunnel

pytestmark = pytest.mark.usefixtures("fast_paths_both_ways")


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()


X = torch.randn(5, 4, generator=torch.Generator().manual_seed(0)).double()


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_noise_tunnel_equals_the_loop_over_the_same_noise(nt_type):
    m = model()
    base = InputGradient(m)
    g = torch.Generator().manual_seed(3)
    got = NoiseTunnel(base).attribute(
        X, nt_type=nt_type, nt_samples=4, stdevs=0.2, target=1, generator=g
    )
    noise = torch.randn((4, *X.shape), generator=torch.Generator().manual_seed(3))
    # the noise is drawn in float32 and scaled in the inputs' dtype, as NoiseTunnel does
    noise = noise.to(X.dtype)
    maps = torch.stack([base.attribute(X + 0.2 * noise[s], target=1) for s in range(4)])
    want = {
        "smoothgrad": maps.mean(0),
        "smoothgrad_sq": maps.square().mean(0),
        "vargrad": maps.square().mean(0) - maps.mean(0).square(),
    }[nt_type]
    assert torch.allclose(got, want, atol=1e-12)


def test_noise_tunnel_without_noise_is_the_method_and_agrees_with_captum():
    m = model()
    ig = IntegratedGradients(m)
    same = NoiseTunnel(ig, nt_samples=3, stdevs=0.0).attribute(X, target=2, n_steps=16)
    assert torch.allclose(same, ig.attribute(X, target=2, n_steps=16), atol=1e-12)
    ours = NoiseTunnel(ig, nt_type="vargrad", stdevs=0.0).attribute(X, target=2, n_steps=16)
    assert torch.allclose(ours, torch.zeros_like(ours), atol=1e-12)
    theirs = CaptumNoiseTunnel(CaptumIG(m)).attribute(
        X,
        nt_type="smoothgrad",
        nt_samples=3,
        stdevs=0.0,
        target=2,
        n_steps=16,
        method="gausslegendre",
    )
    assert torch.allclose(same, theirs, atol=1e-8)
    sal = CaptumNoiseTunnel(Saliency(m)).attribute(
        X, nt_type="smoothgrad_sq", nt_samples=2, stdevs=0.0, target=0, abs=False
    )
    mine = NoiseTunnel(InputGradient(m), nt_type="smoothgrad_sq", stdevs=0.0).attribute(X, target=0)
    assert torch.allclose(mine, sal, atol=1e-10)


def test_a_smoothgrad_prior_trains():
    m = model()
    tunnel = NoiseTunnel(InputGradient(m, differentiable=True), nt_samples=4, stdevs=0.1)
    prior = attreg.AttributionPrior(
        m,
        torch.tensor([1.0, 1.0, 0.0, 0.0]),
        method=tunnel,
        reparameterizer="share",
        loss="outside_share",
    )
    loss = prior(X, target=torch.tensor([0, 1, 2, 0, 1]))
    loss.backward()
    assert m[0].weight.grad is not None and float(m[0].weight.grad.abs().sum()) > 0


def test_zero_dim_target_callable_baselines_and_captum_names():
    m = model()
    ig = IntegratedGradients(m)
    a = ig.attribute(X, target=torch.tensor(2), n_steps=8)
    assert torch.equal(a, ig.attribute(X, target=2, n_steps=8))
    b1 = ig.attribute(X, baselines=lambda: torch.ones(4, dtype=torch.float64), target=0)
    b2 = ig.attribute(X, baselines=lambda x: torch.ones_like(x), target=0)
    assert torch.allclose(b1, b2) and torch.allclose(b1, ig.attribute(X, baselines=1.0, target=0))
    assert ig.multiplies_by_inputs and not InputGradient(m).multiplies_by_inputs
    assert NoiseTunnel(ig).multiplies_by_inputs


def test_noise_tunnel_errors():
    m = model()
    with pytest.raises(ValueError, match="unknown nt_type"):
        NoiseTunnel(InputGradient(m), nt_type="smooth")
    with pytest.raises(ValueError, match="nt_samples"):
        NoiseTunnel(InputGradient(m)).attribute(X, nt_samples=0)
    with pytest.raises(ValueError, match="direction reducer"):
        NoiseTunnel(InputGradient(m, reducer=attreg.reducers.RandomDirections(2)))


# -- GradientShap ---------------------------------------------------------------------
from captum.attr import GradientShap as CaptumGradientShap  # noqa: E402

from attreg.attr import GradientShap  # noqa: E402


def test_gradient_shap_is_exact_on_a_linear_model_with_complete_draws():
    torch.manual_seed(0)
    lin = nn.Linear(4, 1).double()
    background = torch.randn(6, 4, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    attr, delta = GradientShap(lin).attribute(
        X, background, n_samples=7, stdevs=0.1, return_convergence_delta=True, generator=g
    )
    assert delta.shape == (5 * 7,) and delta.abs().max() < 1e-10  # complete per draw
    # without noise and with one baseline row: (x - r) * w, whatever the alphas
    exact = GradientShap(lin).attribute(X, background[:1], n_samples=3)
    assert torch.allclose(exact, (X - background[:1]) * lin.weight, atol=1e-12)
    theirs = CaptumGradientShap(lin).attribute(X, background[:1], n_samples=3, stdevs=0.0)
    assert torch.allclose(exact, theirs, atol=1e-10)


def test_gradient_shap_converges_to_completeness_and_matches_ig_without_noise():
    m = model()
    x = X[:2]
    base = torch.zeros(1, 4, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    attr, delta = GradientShap(m).attribute(
        x, base, n_samples=4000, target=1, return_convergence_delta=True, generator=g
    )
    ig = IntegratedGradients(m).attribute(x, baselines=base, target=1, n_steps=64)
    assert torch.allclose(attr, ig, atol=0.05)
    assert delta.reshape(2, -1).mean(1).abs().max() < 0.02  # complete in expectation
    no_mult = GradientShap(m, multiply_by_inputs=False).attribute(
        x, base, n_samples=3, target=1, generator=torch.Generator().manual_seed(5)
    )
    again = GradientShap(m).attribute(
        x, base, n_samples=3, target=1, generator=torch.Generator().manual_seed(5)
    )
    assert torch.allclose(no_mult * (x - base), again, atol=1e-12)


def test_gradient_shap_prior_and_tuple_inputs():
    m = model()
    prior = attreg.AttributionPrior(
        m,
        torch.tensor([1.0, 1.0, 0.0, 0.0]),
        method="gradient_shap",
        n_samples=2,
        references=torch.zeros(3, 4, dtype=torch.float64),
        reparameterizer="share",
        loss="outside_share",
        generator=torch.Generator().manual_seed(0),
    )
    prior(X, target=torch.tensor([0, 1, 2, 0, 1])).backward()
    assert m[0].weight.grad is not None
    two = lambda a, b: m(torch.cat([a, b], 1))  # noqa: E731
    parts = GradientShap(two).attribute(
        (X[:, :2], X[:, 2:]),
        (torch.zeros(3, 2), torch.zeros(3, 2)),
        target=0,
        generator=torch.Generator().manual_seed(2),
    )
    whole = GradientShap(m).attribute(
        X, torch.zeros(3, 4), target=0, generator=torch.Generator().manual_seed(2)
    )
    assert torch.allclose(torch.cat(parts, 1), whole, atol=1e-12)
