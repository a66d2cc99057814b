"""Attribution calls that would compute nonsense silently fail at the call, with a message
naming the argument and the fix (the call-time classes of the hostile-input review:
targets, row indices, dtypes, non-finite baselines/backgrounds, degenerate batches, path
sizes, couplings between samples that appear after construction or in functional form)."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attreg
from attreg.attr import (
    ExpectedGradients,
    InputGradient,
    IntegratedGradients,
    integrated_gradients,
)
from attreg.attr.quadrature import MAX_N_STEPS

# every test here runs with the fast paths on and off (conftest.fast_paths_both_ways)
pytestmark = pytest.mark.usefixtures("fast_paths_both_ways")

torch.manual_seed(0)
X = torch.randn(6, 4)


def mlp(n_out: int = 3) -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, n_out))


NAN_ROW = torch.tensor([0.0, float("nan"), 0.0, 0.0])
CASES = [
    # (name, call(model) -> result, exception, message fragment)
    (
        "float target",
        lambda m: IntegratedGradients(m).attribute(X, target=0.7),
        TypeError,
        "got 0.7",
    ),
    (
        "bool target",
        lambda m: IntegratedGradients(m).attribute(X, target=True),
        TypeError,
        "float or bool",
    ),
    (
        "negative target",
        lambda m: ExpectedGradients(m).attribute(X, target=-1),
        ValueError,
        "negative",
    ),
    (
        "target past the outputs",
        lambda m: InputGradient(m).attribute(X, target=3),
        ValueError,
        "has 3 unit",
    ),
    (
        "float target tensor",
        lambda m: InputGradient(m).attribute(X, target=torch.zeros(6)),
        TypeError,
        "target.long()",
    ),
    (
        "float64 inputs",
        lambda m: ExpectedGradients(m).attribute(X.double()),
        TypeError,
        "torch.float64",
    ),
    (
        "half inputs",
        lambda m: IntegratedGradients(m).attribute(X.half()),
        TypeError,
        "torch.float16",
    ),
    (
        "NaN baseline",
        lambda m: IntegratedGradients(m).attribute(X, baselines=NAN_ROW),
        ValueError,
        "baselines contains 6 NaN",
    ),
    (
        "NaN background",
        lambda m: ExpectedGradients(m).attribute(X, references=NAN_ROW.expand(3, 4)),
        ValueError,
        "background references contains 3 NaN",
    ),
    (
        "n_steps=True",
        lambda m: IntegratedGradients(m).attribute(X, n_steps=True),
        ValueError,
        "n_steps",
    ),
    (
        "n_steps past the maximum",
        lambda m: IntegratedGradients(m).attribute(X, n_steps=200_000),
        ValueError,
        f"maximum {MAX_N_STEPS}",
    ),
    (
        "internal_batch_size=0",
        lambda m: IntegratedGradients(m).attribute(X, internal_batch_size=0),
        ValueError,
        "internal_batch_size",
    ),
]


@pytest.mark.parametrize(("name", "call", "exc", "match"), CASES, ids=[c[0] for c in CASES])
def test_bad_call_is_refused(name, call, exc, match):
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x_before = X.clone()
    with pytest.raises(exc, match=match):
        call(model)
    assert torch.equal(X, x_before)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_numpy_integer_target_selects_one_unit_like_an_int():
    import numpy as np

    m = mlp()
    a = InputGradient(m).attribute(X, target=np.int64(2))
    assert torch.equal(a, InputGradient(m).attribute(X, target=2))


@pytest.mark.parametrize(
    ("index", "exc", "match"),
    [
        (torch.tensor([-1, 0]), IndexError, "negative positions"),
        (torch.tensor([6, 0]), IndexError, r"\[0, 6\]"),
        (torch.tensor([0.0, 1.0]), TypeError, "integers"),
    ],
)
def test_ground_truth_matrix_rows_must_be_real_positions(index, exc, match):
    gt = torch.zeros(6, 4)
    gt[:, 0] = 1
    prior = attreg.AttributionPrior(mlp(), gt, method="eg")
    with pytest.raises(exc, match=match):
        prior(X[:2], index=index)
    assert float(prior(X[:2], index=torch.tensor([5, 0])).detach()) >= 0


def test_expected_gradients_on_a_batch_of_one_warns_that_it_is_zero():
    eg = ExpectedGradients(mlp(), differentiable=True)
    with pytest.warns(UserWarning, match="exactly zero"):
        attr = eg.attribute(X[:1])
    assert torch.count_nonzero(attr) == 0  # the stated reason is true
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        eg.attribute(X[:1], references=X[1:])  # a background: no warning


class FunctionalBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(self.linear(x), None, None, training=self.training)


@pytest.mark.parametrize("method", [ExpectedGradients, IntegratedGradients, InputGradient])
def test_functional_batch_norm_is_detected_in_train_mode_only(method):
    model = FunctionalBatchNorm()
    with pytest.raises(ValueError, match="functional.batch_norm with training=True"):
        method(model).attribute(X)
    model.eval()  # no running statistics: F.batch_norm then refuses by itself
    attr = method(model, check_batchnorm=False)
    model.train()
    assert attr.attribute(X).shape == X.shape  # the documented opt-out


def test_batch_norm_inserted_after_construction_is_detected():
    model = mlp()
    eg = ExpectedGradients(model)
    eg.attribute(X)
    model.insert(1, nn.BatchNorm1d(8))
    with pytest.raises(ValueError, match="BatchNorm1d"):
        eg.attribute(X)
    model.eval()
    assert eg.attribute(X).shape == X.shape  # running statistics: independent samples


def test_functional_batch_norm_is_probed_again_when_the_mode_changes():
    class RunningStats(FunctionalBatchNorm):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.zeros(3))
            self.register_buffer("var", torch.ones(3))

        def forward(self, x):
            return F.batch_norm(self.linear(x), self.mean, self.var, training=self.training)

    model = RunningStats().eval()
    eg = ExpectedGradients(model)
    eg.attribute(X)  # eval: running statistics, independent samples
    model.train()  # no module was added: only the mode change re-arms the probe
    with pytest.raises(ValueError, match="training=True"):
        eg.attribute(X)
    assert torch.equal(model.mean, torch.zeros(3))  # refused before the statistics moved


def test_integrated_gradients_chunks_long_paths_without_changing_the_result(monkeypatch):
    model = mlp()
    ig = IntegratedGradients(model)
    x = torch.randn(30, 4)
    whole = ig.attribute(x, n_steps=64)
    assert torch.allclose(ig.attribute(x, n_steps=64, internal_batch_size=70), whole, atol=1e-6)
    seen = []
    forward = model.forward

    def counting(z):
        seen.append(z.shape[0])
        return forward(z)

    monkeypatch.setattr(model, "forward", counting)
    monkeypatch.setattr(integrated_gradients, "AUTO_CHUNK_ELEMENTS", 30 * 4 * 10)
    chunked = ig.attribute(x, n_steps=64)
    assert torch.allclose(chunked, whole, atol=1e-6)
    assert max(seen) == 30 * 10  # never more than the budget's 10 steps at once
    assert sum(seen) == 30 * 64


def test_integrated_gradients_chunks_agree_on_the_differentiable_linear_prefix_path():
    target = attreg.attr.LinearPrefix(nn.Linear(4, 8), nn.Sequential(nn.Tanh(), nn.Linear(8, 1)))
    ig = IntegratedGradients(target, differentiable=True)
    x = torch.randn(10, 4)
    whole = ig.attribute(x, n_steps=16)
    parts = ig.attribute(x, n_steps=16, internal_batch_size=30)
    assert torch.allclose(whole, parts, atol=1e-6)
    (g1,) = torch.autograd.grad(whole.square().sum(), target.linear.weight)
    (g2,) = torch.autograd.grad(parts.square().sum(), target.linear.weight)
    assert torch.allclose(g1, g2, atol=1e-5)
