"""captum's attributions carry no graph to the parameters; attreg's do (same numbers)."""

import captum.attr
import pytest
import torch

import attreg
from tests.conftest import make_mlp

# every test here runs with the fast paths on and off (conftest.fast_paths_both_ways)
pytestmark = pytest.mark.usefixtures("fast_paths_both_ways")


def assert_same_as_captum(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """captum multiplies the gradients by its quadrature weights as float32
    (``torch.tensor(step_sizes).float()``), a relative rounding of about 3e-8 per weight;
    attreg keeps the input's float64. So the two agree to float32 rounding of the largest
    attribution, not to float64 (a near-zero entry fails any relative tolerance)."""
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6 * float(theirs.abs().max()))


def test_captum_attributions_cannot_train_and_attreg_can():
    model = make_mlp(5, 8, 2, seed=1)
    x = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    theirs = captum.attr.IntegratedGradients(model).attribute(x, target=1, n_steps=16)
    assert theirs.grad_fn is None and not theirs.requires_grad  # a loss on it trains nothing
    ours = attreg.IntegratedGradients(model, differentiable=True).attribute(x, target=1, n_steps=16)
    assert_same_as_captum(ours.detach(), theirs)
    ours.pow(2).sum().backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0


def test_captum_style_arguments_switch_in_one_line():
    model = make_mlp(5, 8, 3, seed=2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, dtype=torch.float64, generator=g)
    b = torch.randn(1, 5, dtype=torch.float64, generator=g)
    t = torch.tensor([0, 2, 1, 2])
    kwargs = dict(baselines=b, target=t, n_steps=12, method="riemann_middle", internal_batch_size=8)
    ref = captum.attr.IntegratedGradients(model).attribute(x, **kwargs)
    ours = attreg.IntegratedGradients(model).attribute(x, **kwargs)
    assert_same_as_captum(ours, ref)
