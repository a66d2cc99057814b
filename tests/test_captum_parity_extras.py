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


X = torch.randn(5, 4, dtype=torch.float64)


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_noise_tunnel_equals_the_loop_over_the_same_noise(nt_type):
    m = model()
    base = InputGradient(m)
    g = torch.Generator().manual_seed(3)
    got = NoiseTunnel(base).attribute(
        X, nt_type=nt_type, nt_samples=4, stdevs=0.2, target=1, generator=g
    )
    noise = torch.randn((4, *X.shape), generator=torch.Generator().manual_seed(3))
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
