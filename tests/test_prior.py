import pytest
import torch
from torch import nn

import attreg
from attreg import AttributionPrior, ExpectedGradients, IntegratedGradients, PriorSet
from attreg.reducers import Sum

# every test here runs with the fast paths on and off (conftest.fast_paths_both_ways)
pytestmark = pytest.mark.usefixtures("fast_paths_both_ways")


class EncoderDecoder(nn.Module):
    def __init__(self, d=6):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(d, 8), nn.LayerNorm(8), nn.ELU(), nn.Linear(8, 3))
        # smooth activations: with ReLU the input gradient is piecewise constant in the
        # biases, so a prior cannot move them (documented in docs/concepts.md)
        self.decoder = nn.Sequential(nn.Linear(3, 8), nn.ELU(), nn.Linear(8, d))

    def forward(self, x):
        return self.decoder(self.encoder(x))


GT = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0])


@pytest.mark.parametrize("method", ["eg", "ig", "input_gradient", "input_x_gradient"])
def test_gradients_reach_only_the_target_submodule(method):
    torch.manual_seed(0)
    model = EncoderDecoder()
    prior = AttributionPrior(model.encoder, GT, method=method, n_steps=5)
    prior(torch.randn(16, 6)).backward()
    for name, p in model.encoder.named_parameters():
        if name == "3.bias":  # an output bias cannot change an input gradient
            continue
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.decoder.parameters())


def test_gradients_reach_whole_model():
    torch.manual_seed(0)
    model = EncoderDecoder()
    AttributionPrior(model, GT)(torch.randn(16, 6)).backward()
    for name, p in model.named_parameters():
        if name == "decoder.2.bias":
            continue
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_tuple_output_with_selecting_reducer():
    class Enc(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(6, 4)

        def forward(self, x):
            h = self.lin(x)
            return h[:, :2], h[:, 2:]

    enc = Enc()
    x = torch.randn(4, 6)
    attr = AttributionPrior(enc, GT, reducer=Sum(output=0), method="ig").attributions(x)
    assert torch.allclose(attr, x * enc.lin.weight[:2].sum(0), atol=1e-5)
    with pytest.raises(ValueError, match="tell the reducer"):
        AttributionPrior(enc, GT)(x)


def test_prior_value_matches_functional_composition():
    torch.manual_seed(0)
    model = EncoderDecoder()
    x = torch.randn(8, 6)
    prior = AttributionPrior(
        model.encoder, GT, method="ig", reparameterizer="abs_minmax", loss="mae", weight=2.5
    )
    attr = IntegratedGradients(model.encoder, differentiable=True).attribute(x, n_steps=20)
    expected = 2.5 * attreg.functional.attribution_prior_loss(
        attr, GT, reparameterizer="abs_minmax", loss="mae"
    )
    assert torch.allclose(prior(x), expected)


def test_ground_truth_matrix_rows_follow_the_minibatch():
    torch.manual_seed(0)
    model = EncoderDecoder()
    x = torch.randn(10, 6)
    gt = torch.zeros(10, 6)
    gt[:5, :2] = 1
    gt[5:, 4:] = 1
    prior = AttributionPrior(model.encoder, gt, method="ig")
    idx = torch.tensor([0, 7, 3])
    assert torch.allclose(prior(x[idx], index=idx), prior(x[idx], gt=gt[idx]))
    with pytest.raises(ValueError, match="pass index="):
        prior(x[idx])
    with pytest.raises(ValueError, match="rows but the minibatch has"):
        prior(x[idx], gt=gt[:2])


def test_training_with_the_prior_moves_attribution_to_gt_features():
    """A model fit on a target that uses a spurious feature learns to rely on the GT ones."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 4, generator=g)
    x[:, 3] = x[:, 0] + 0.05 * torch.randn(512, generator=g)  # spurious copy of feature 0
    y = x[:, 0] + x[:, 1]
    gt = torch.tensor([1.0, 1.0, 0.0, 0.0])

    def share(model):
        a = ExpectedGradients(model).attribute(x, generator=torch.Generator().manual_seed(1))
        a = a.abs().sum(0)
        return float(a[gt.bool()].sum() / a.sum())

    shares = {}
    for w in (0.0, 3.0):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        with torch.no_grad():
            model[0].weight[:, 3] += 1.0  # start leaning on the spurious feature
        prior = AttributionPrior(
            model,
            gt,
            reparameterizer="abs_max",
            weight=w,
            generator=torch.Generator().manual_seed(0),
        )
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(150):
            opt.zero_grad()
            loss = (model(x).squeeze(1) - y).pow(2).mean() + (prior(x) if w else 0.0)
            loss.backward()
            opt.step()
        shares[w] = share(model)
    assert shares[3.0] > 0.85
    assert shares[3.0] > shares[0.0] + 0.1


def test_prior_set_shares_attributions_and_aggregates():
    torch.manual_seed(0)
    calls = {"n": 0}
    enc = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))

    def counted(x):
        calls["n"] += 1
        return enc(x)

    gts = {"a": GT, "b": torch.tensor([0.0, 0, 0, 0, 1, 1])}
    kw = dict(method="ig", weights={"a": 1.0, "b": 0.5}, n_steps=4)
    ps = PriorSet.from_ground_truths(counted, gts, **kw)
    x = torch.randn(8, 6)
    terms = ps(x, return_terms=True)
    assert calls["n"] == 1  # one attribution computation for both priors
    assert torch.allclose(terms["total"], terms["a"] + terms["b"])
    sq = PriorSet.from_ground_truths(counted, gts, aggregation="squared_sum", **kw)
    t2 = sq(x, return_terms=True)
    assert torch.allclose(t2["total"], t2["a"] ** 2 + t2["b"] ** 2)
    single = AttributionPrior(enc, gts["b"], method="ig", n_steps=4, weight=0.5)
    assert torch.allclose(terms["b"], single(x))


def test_prior_weight_scales_loss_and_zero_weight_gives_zero():
    torch.manual_seed(0)
    enc = nn.Linear(6, 2)
    x = torch.randn(4, 6)
    p1 = AttributionPrior(enc, GT, method="ig", weight=1.0)(x)
    p3 = AttributionPrior(enc, GT, method="ig", weight=3.0)(x)
    assert torch.allclose(3 * p1, p3)
    assert float(AttributionPrior(enc, GT, method="ig", weight=0.0)(x)) == 0.0


def test_prior_moves_with_module_to_and_state_dict_holds_only_gt():
    enc = nn.Linear(6, 2)
    prior = AttributionPrior(enc, GT)
    assert list(prior.state_dict()) == ["ground_truth"]
    assert prior.double().ground_truth.dtype == torch.float64
