"""captum's attributions carry no graph to the parameters; attreg's do (same numbers)."""

import captum.attr
import pytest
import torch

import attreg
from tests.conftest import make_mlp

# every test here runs with the fast paths on and off (conftest.fast_paths_both_ways)
pytestmark = pytest.mark.usefixtures("fast_paths_both_ways")


def test_captum_attributions_cannot_train_and_attreg_can():
    model = make_mlp(5, 8, 2, seed=1)
    x = torch.randn(6, 5, dtype=torch.float64)
    theirs = captum.attr.IntegratedGradients(model).attribute(x, target=1, n_steps=16)
    assert theirs.grad_fn is None and not theirs.requires_grad  # a loss on it trains nothing
    ours = attreg.IntegratedGradients(model, differentiable=True).attribute(x, target=1, n_steps=16)
    assert torch.allclose(ours.detach(), theirs, atol=1e-10)
    ours.pow(2).sum().backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0


def test_captum_style_arguments_switch_in_one_line():
    model = make_mlp(5, 8, 3, seed=2)
    x = torch.randn(4, 5, dtype=torch.float64)
    b = torch.randn(1, 5, dtype=torch.float64)
    t = torch.tensor([0, 2, 1, 2])
    kwargs = dict(baselines=b, target=t, n_steps=12, method="riemann_middle", internal_batch_size=8)
    ref = captum.attr.IntegratedGradients(model).attribute(x, **kwargs)
    ours = attreg.IntegratedGradients(model).attribute(x, **kwargs)
    assert torch.allclose(ours, ref, atol=1e-10)
