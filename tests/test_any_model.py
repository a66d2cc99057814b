"""Priors on models other than MLPs, and priors that would train nothing: transformers
(fused attention has no double backward), the zero-gradient trap of max-normalised
reparameterizations, non-finite attributions."""

import warnings

import pytest
import torch
from torch import nn

import attreg

GT8 = torch.tensor([1.0, 1.0] + [0.0] * 6)


class TinyTransformer(nn.Module):
    """Tokens (n, 6, 8) -> one logit: a TransformerEncoderLayer, mean-pooled."""

    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(
            d_model=8, nhead=2, dim_feedforward=16, dropout=dropout, batch_first=True
        )
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(x).mean(1))


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_prior_trains_through_a_transformer_layer(mode, dropout):
    torch.manual_seed(0)
    model = TinyTransformer(dropout)
    getattr(model, mode)()
    gt = torch.zeros(6, 8)
    gt[:2] = 1  # the first two tokens
    prior = attreg.AttributionPrior(
        model, gt.flatten(), method="eg", reparameterizer="share", loss="outside_share"
    )
    x = torch.randn(16, 6, 8)
    loss = prior(x)
    loss.backward()  # double backward through scaled_dot_product_attention
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


def test_zero_gradient_trap_warns_and_share_still_trains():
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    with torch.no_grad():  # the forbidden feature 5 dominates every row's attribution
        model.weight.copy_(torch.tensor([[0.1, 0.1, 0, 0, 0, 5.0, 0, 0]]))
    x = torch.randn(64, 8)
    x[:, 5] = 2.0 + x[:, 5].abs()  # the shortcut is every row's largest attribution
    trap = attreg.AttributionPrior(
        model, GT8, method="input_x_gradient", reparameterizer="abs_max", feature_weight=1 - GT8
    )
    with pytest.warns(UserWarning, match="zero gradient for"):
        loss = trap(x)
    (g,) = torch.autograd.grad(loss, model.weight)
    assert abs(float(g[0, 5])) < 1e-6  # the warning's reason is true: stuck at the max

    safe = attreg.AttributionPrior(
        model, GT8, method="input_x_gradient", reparameterizer="share", loss="outside_share"
    )
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no trap warning for the share loss
        first = float(safe(x).detach())
        for _ in range(100):
            opt.zero_grad()
            safe(x).backward()
            opt.step()
    assert float(safe(x).detach()) < 0.5 * first
    assert abs(float(model.weight[0, 5].detach())) < 5.0


def test_a_satisfied_prior_does_not_warn():
    model = nn.Linear(8, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 1.0, 0, 0, 0, 0, 0, 0]]))
    prior = attreg.AttributionPrior(
        model, GT8, method="input_x_gradient", reparameterizer="abs_max", feature_weight=1 - GT8
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert float(prior(torch.randn(32, 8)).detach()) == 0.0  # zero loss, zero gradient


def test_non_finite_attributions_name_the_prior():
    class Overflow(nn.Module):
        def forward(self, x):
            return (x * 1e30).exp().sum(1, keepdim=True)

    priors = attreg.PriorSet({"markers": attreg.AttributionPrior(Overflow(), GT8, method="eg")})
    with pytest.raises(ValueError, match="attributions of prior 'markers'.*overflowed"):
        priors(torch.randn(8, 8) + 1.0)


def test_a_compiled_model_trains_with_eager_attributions():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    compiled = torch.compile(model, backend="aot_eager")  # no double backward in its graphs
    prior = attreg.AttributionPrior(compiled, GT8, reparameterizer="share", loss="outside_share")
    assert prior.method.forward_func is model  # the original module: the same parameters
    x = torch.randn(16, 8)
    (compiled(x).square().mean() + prior(x)).backward()
    assert model[0].weight.grad is not None and torch.isfinite(model[0].weight.grad).all()


def test_per_sample_prior_gradients_under_torch_func_match_a_loop():
    """vmap(grad(...)) over a prior (per-sample gradients, e.g. for DP-SGD)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    gt = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])
    prior = attreg.AttributionPrior(
        model,
        gt,
        method="ig",
        n_steps=6,
        reparameterizer="share",
        loss="outside_share",
        check_inputs=False,  # the input checks read values: not allowed inside vmap
    )

    class Holder(nn.Module):  # functional_call swaps the parameters of model.*
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, xi: torch.Tensor) -> torch.Tensor:
            return prior(xi[None])

    holder = Holder()
    params = {f"model.{k}": v.detach() for k, v in model.named_parameters()}
    x = torch.randn(4, 5, dtype=torch.float64)

    def loss(p, xi):
        return torch.func.functional_call(holder, p, (xi,))

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, x)
    for i in range(4):
        model.zero_grad()
        prior(x[i : i + 1]).backward()
        for name, p in model.named_parameters():
            want = torch.zeros_like(p) if p.grad is None else p.grad
            assert torch.allclose(per_sample[f"model.{name}"][i], want, atol=1e-10), name
