"""Every bad input raises a clear, specific error before any computation."""

import pytest
import torch
from torch import nn

from attreg import AttributionPrior, ExpectedGradients, IntegratedGradients, PriorSet
from attreg.reducers import CallableReducer

ENC = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
GT = torch.tensor([1.0, 0.0, 0.0, 1.0])
X = torch.randn(5, 4)


@pytest.mark.parametrize(
    "gt, exc, match",
    [
        (torch.tensor([1.0, 0.0, 1.0]), ValueError, "has 3 features but the inputs have 4"),
        (torch.tensor([1.0, float("nan"), 0.0, 0.0]), ValueError, "NaN or infinite"),
        (torch.zeros(4), ValueError, "no positive feature"),
        (torch.ones(4), ValueError, "all ones"),
        (torch.tensor([2.0, 0.0, 0.0, 0.0]), ValueError, "binary or in \\[0, 1\\]"),
        (torch.tensor([-1.0, 1.0, 0.0, 0.0]), ValueError, "binary or in \\[0, 1\\]"),
        (torch.zeros(0), ValueError, "empty"),
        (torch.zeros(2, 2, 4), ValueError, "vector \\(n_features,\\)"),
        ("1001", TypeError, "tensor, array or list"),
        (torch.ones(3, 4), ValueError, "3 rows but the minibatch has 5"),
        (torch.ones(5, 4), ValueError, "all ones"),
    ],
)
def test_bad_ground_truth(gt, exc, match):
    with pytest.raises(exc, match=match):
        AttributionPrior(ENC, method="ig", n_steps=2)(X, gt=gt)


def test_bad_ground_truth_at_construction():
    with pytest.raises(ValueError, match="no positive feature"):
        AttributionPrior(ENC, torch.zeros(4))


def test_all_ones_allowed_on_request():
    loss = AttributionPrior(ENC, torch.ones(4), allow_all_ones=True, method="ig")(X)
    assert torch.isfinite(loss)


def test_integer_bool_and_list_ground_truth_are_accepted():
    a = AttributionPrior(ENC, GT.bool(), method="ig")(X)
    b = AttributionPrior(ENC, GT.long(), method="ig")(X)
    c = AttributionPrior(ENC, method="ig")(X, gt=[1, 0, 0, 1])
    assert torch.allclose(a, b) and torch.allclose(a, c)


@pytest.mark.parametrize(
    "x, exc, match",
    [
        (torch.tensor([[float("nan"), 0, 0, 0]]), ValueError, "NaN or infinite"),
        (torch.tensor([[float("inf"), 0, 0, 0]]), ValueError, "NaN or infinite"),
        (torch.zeros(0, 4), ValueError, "non-empty batch"),
        (torch.ones(2, 4, dtype=torch.long), TypeError, "floating point"),
        ([[1.0, 2.0]], TypeError, "must be a torch.Tensor"),
    ],
)
def test_bad_inputs(x, exc, match):
    with pytest.raises(exc, match=match):
        ExpectedGradients(ENC).attribute(x)


def test_batchnorm_in_train_mode_is_refused_with_the_fix():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
    with pytest.raises(ValueError, match=r"'1' \(BatchNorm1d\) is in train mode.*LayerNorm"):
        AttributionPrior(model, GT)(X)
    model.eval()
    assert torch.isfinite(AttributionPrior(model, GT)(X))
    model.train()
    ok = AttributionPrior(model, GT, check_batchnorm=False)(X)
    assert torch.isfinite(ok)


def test_reducer_with_wrong_shape():
    bad = CallableReducer(lambda out: out.sum())
    with pytest.raises(ValueError, match=r"one scalar per sample, shape \(10,\)"):
        IntegratedGradients(ENC, bad).attribute(X, n_steps=2)


def test_non_differentiable_method_cannot_train():
    with pytest.raises(ValueError, match="differentiable=False"):
        AttributionPrior(ENC, GT, method=ExpectedGradients(ENC))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "shap"}, "unknown attribution method"),
        ({"reparameterizer": "tanh"}, "unknown reparameterizer"),
        ({"loss": "huber"}, "unknown loss"),
        ({"reducer": "max"}, "unknown reducer"),
        ({"weight": -1.0}, "weight must be a finite number >= 0"),
    ],
)
def test_unknown_names(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AttributionPrior(ENC, GT, **kwargs)


def test_prior_set_errors():
    with pytest.raises(ValueError, match="at least one prior"):
        PriorSet({})
    with pytest.raises(ValueError, match="unknown aggregation"):
        PriorSet([AttributionPrior(ENC, GT)], aggregation="max")
    ps = PriorSet({"a": AttributionPrior(ENC, GT)})
    with pytest.raises(KeyError, match="unknown prior names"):
        ps(X, gts={"b": GT})


def test_forward_func_must_be_callable():
    with pytest.raises(TypeError, match="callable"):
        ExpectedGradients(3)


class _Detaching(torch.nn.Module):
    def __init__(self, frozen: bool = False):
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)
        self.lin.requires_grad_(not frozen)

    def forward(self, x):
        return self.lin(x.detach())


def test_a_model_that_detaches_its_input_gets_a_clear_error_not_torchs():
    x = torch.randn(8, 4)
    prior = AttributionPrior(_Detaching(frozen=True), torch.tensor([1.0, 0, 0, 0]))
    with pytest.raises(RuntimeError, match="detaches the input"):
        prior(x)
    ig = IntegratedGradients(_Detaching(frozen=True))
    with pytest.raises(RuntimeError, match="detaches the input"):
        ig.attribute(x, target=0)


def test_an_output_independent_of_the_input_warns_that_attributions_are_zero():
    ig = IntegratedGradients(_Detaching())
    with pytest.warns(UserWarning, match="does not depend on the input"):
        out = ig.attribute(torch.randn(8, 4), target=0)
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize("width", [3, 5])
def test_a_gt_of_the_wrong_length_gets_the_length_error_even_when_all_ones(width):
    prior = AttributionPrior(ENC, torch.ones(width))  # built without knowing the width
    with pytest.raises(ValueError, match=f"has {width} features but the inputs have 4"):
        prior(X)
    with pytest.raises(ValueError, match="all ones"):  # the right width: all ones refused
        AttributionPrior(ENC, torch.ones(4))(X)
