"""Tuple inputs (captum's form): attributions per input, exact against the packed
computation and captum, and priors on one input or on all."""

import pytest
import torch
from captum.attr import IntegratedGradients as CaptumIG
from torch import nn

import attreg
from attreg.attr import ExpectedGradients, InputXGradient, IntegratedGradients

pytestmark = pytest.mark.usefixtures("fast_paths_both_ways")


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Conv2d(1, 2, 3, padding=1)
        self.table = nn.Linear(3, 8)
        self.out = nn.Linear(2 * 4 * 4 + 8, 2)

    def forward(self, image, table):
        h = torch.cat([torch.tanh(self.image(image)).flatten(1), torch.tanh(self.table(table))], 1)
        return self.out(h)


def data():
    torch.manual_seed(0)
    model = TwoInputs().double()
    return (
        model,
        torch.randn(5, 1, 4, 4, dtype=torch.float64),
        torch.randn(5, 3, dtype=torch.float64),
    )


def test_integrated_gradients_per_input_agree_with_captum_and_are_complete():
    model, img, tab = data()
    ours, delta = IntegratedGradients(model).attribute(
        (img, tab), target=1, n_steps=32, return_convergence_delta=True
    )
    theirs = CaptumIG(model).attribute((img, tab), target=1, n_steps=32, method="gausslegendre")
    assert ours[0].shape == img.shape and ours[1].shape == tab.shape
    for a, b in zip(ours, theirs, strict=True):
        assert torch.allclose(a, b, atol=1e-8)
    total = ours[0].sum((1, 2, 3)) + ours[1].sum(1)
    f = model(img, tab)[:, 1] - model(torch.zeros_like(img), torch.zeros_like(tab))[:, 1]
    assert torch.allclose(total, f, atol=1e-4)
    assert delta.abs().max() < 1e-4


def test_tuple_baselines_background_and_gradient_methods():
    model, img, tab = data()
    base = (torch.full_like(img[:1], 0.5), torch.ones_like(tab[:1]))
    ig = IntegratedGradients(model).attribute((img, tab), baselines=base, target=0, n_steps=8)
    assert ig[1].shape == tab.shape
    ixg = InputXGradient(model).attribute((img, tab), target=0)
    manual_img = img.clone().requires_grad_()
    manual_tab = tab.clone().requires_grad_()
    g = torch.autograd.grad(model(manual_img, manual_tab)[:, 0].sum(), (manual_img, manual_tab))
    assert torch.allclose(ixg[0], img * g[0]) and torch.allclose(ixg[1], tab * g[1])
    bg = (torch.randn(7, 1, 4, 4, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64))
    eg = ExpectedGradients(model).attribute(
        (img, tab), references=bg, target=0, generator=torch.Generator().manual_seed(0)
    )
    assert eg[0].shape == img.shape and torch.isfinite(eg[1]).all()


def test_priors_on_one_input_or_on_all():
    model, img, tab = data()
    on_table = attreg.AttributionPrior(
        model,
        torch.tensor([1.0, 0.0, 0.0]),
        method="ig",
        input_index=1,
        reparameterizer="share",
        loss="outside_share",
    )
    gt_all = torch.cat([torch.zeros(16), torch.ones(3)])  # all of the table, none of the image
    on_all = attreg.AttributionPrior(
        model, gt_all, method="input_x_gradient", reparameterizer="share", loss="outside_share"
    )
    loss = on_table((img, tab), target=torch.tensor([0, 1, 0, 1, 0])) + on_all((img, tab), target=0)
    loss.backward()
    assert model.table.weight.grad is not None and model.image.weight.grad is not None


def test_tuple_errors():
    model, img, tab = data()
    with pytest.raises(ValueError, match="same first"):
        IntegratedGradients(model).attribute((img, tab[:3]))
    with pytest.raises(TypeError, match="layer="):
        IntegratedGradients(model).attribute((img, tab.long()))
