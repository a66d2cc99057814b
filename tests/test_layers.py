"""Attributions and priors at a layer: embeddings and token ids, a submodule's input,
PriorSet with target= and priors on different layers."""

import pytest
import torch
from torch import nn

import attreg
from attreg.attr import LayerTarget


class TextModel(nn.Module):
    """Token ids (n, 6) -> 2 logits: embedding, positions concatenated, MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(30, 8)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.Tanh())
        self.head = nn.Linear(16, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.embedding(ids)))


def test_layer_attributions_equal_attributions_of_the_rest_of_the_model():
    torch.manual_seed(0)
    model = TextModel().double()
    ids = torch.randint(0, 30, (5, 6))
    emb = model.embedding(ids)

    def rest(e):  # the model after the embedding, written out
        return model.head(model.body(e))

    at = LayerTarget(model, model.embedding)
    assert torch.equal(at.activations(ids), emb)
    got = attreg.IntegratedGradients(at).attribute(
        emb, additional_forward_args=(ids,), target=1, n_steps=16
    )
    want = attreg.IntegratedGradients(rest).attribute(emb, target=1, n_steps=16)
    assert torch.allclose(got, want, atol=1e-10)
    # completeness at the layer: sum over tokens and dims = F(emb) - F(0)
    delta = rest(emb)[:, 1] - rest(torch.zeros_like(emb))[:, 1]
    assert torch.allclose(got.sum((1, 2)), delta, atol=1e-4)


def test_token_prior_trains_the_embedding_with_integer_inputs():
    torch.manual_seed(0)
    model = TextModel()
    gt = torch.tensor([1.0, 1.0, 0, 0, 0, 0])  # the first two tokens should matter
    prior = attreg.AttributionPrior(
        model,
        gt,
        method="eg",
        layer=model.embedding,
        reparameterizer="share",
        loss="outside_share",
    )
    ids = torch.randint(0, 30, (32, 6))
    attr = prior.attributions(ids)
    assert attr.shape == (32, 6)  # one attribution per token
    assert not any(p is q for p in prior.parameters() for q in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    first = float(prior(ids).detach())
    for _ in range(60):
        opt.zero_grad()
        prior(ids).backward()
        opt.step()
    assert model.embedding.weight.grad is not None  # parameters before the layer train
    assert float(prior(ids).detach()) < 0.7 * first


def test_layer_input_and_priors_on_two_layers_with_a_per_sample_target():
    torch.manual_seed(0)
    model = TextModel()
    ids = torch.randint(0, 30, (16, 6))
    y = torch.randint(0, 2, (16,))
    tokens = attreg.AttributionPrior(
        model,
        torch.tensor([1.0, 0, 0, 0, 0, 0]),
        layer=model.embedding,
        reparameterizer="share",
        loss="outside_share",
    )
    hidden = attreg.AttributionPrior(
        model,
        torch.tensor([1.0] * 16 + [0.0] * 32),
        layer=model.body,
        layer_at="input",
        layer_reduce=None,
        reparameterizer="share",
        loss="outside_share",
    )
    assert hidden.attributions(ids).shape == (16, 6, 8)  # body's input, unreduced
    priors = attreg.PriorSet({"tokens": tokens, "hidden": hidden})
    terms = priors(ids, target=y, return_terms=True)
    assert set(terms) == {"tokens", "hidden", "total"}
    assert torch.allclose(terms["total"], terms["tokens"] + terms["hidden"])
    terms["total"].backward()
    assert model.embedding.weight.grad is not None


def test_layer_errors():
    model = TextModel()
    with pytest.raises(ValueError, match="not a submodule"):
        LayerTarget(model, nn.Linear(2, 2))
    with pytest.raises(ValueError, match="'output' or 'input'"):
        LayerTarget(model, model.body, at="middle")
    with pytest.raises(ValueError, match="layer_reduce"):
        attreg.AttributionPrior(model, torch.ones(6), layer=model.embedding, layer_reduce="mean")
    shared = nn.Linear(4, 4)
    twice = nn.Sequential(shared, shared)
    with pytest.raises(ValueError, match="ran 2 times"):
        LayerTarget(twice, shared).activations(torch.randn(3, 4))
