"""The encoder's closed-form input gradient equals autograd's, to the second order, on
scvi-tools' encoder (:class:`attreg_sc.fast.encoder_prefix.EncoderMeanRest`)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attreg
from attreg import functional as AF
from attreg.attr import gradients_at
from attreg.reducers import CallableReducer, Index, L2Norm, Mean, Sum, TargetReducer
from attreg_sc.fast.closed_form_gradient import NormReLUInputGradient, norm_relu_input_gradient
from attreg_sc.fast.encoder_prefix import EncoderMeanRest, encoder_prefix

# every test here runs with the fast paths on and off (conftest.fast_paths_both_ways)
pytestmark = pytest.mark.usefixtures("fast_paths_both_ways")


def _autograd_input_gradient(h, gamma, beta, c, drop, eps):
    y = torch.nn.functional.layer_norm(h, (h.shape[-1],), gamma, beta, eps)
    out = torch.relu(y) if drop is None else torch.relu(y) * drop
    (g,) = torch.autograd.grad((out @ c).sum(), h, create_graph=True)
    return g


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 6),
    width=st.integers(2, 9),
    seed=st.integers(0, 2**16),
    with_dropout=st.booleans(),
)
def test_closed_form_equals_autograd_values_and_vjps(n, width, seed, with_dropout):
    """Value and vector-Jacobian products (h, gamma, c) equal autograd's on the composition."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, width, generator=g, dtype=torch.float64, requires_grad=True)
    gamma = torch.randn(width, generator=g, dtype=torch.float64, requires_grad=True)
    beta = 0.5 * torch.randn(width, generator=g, dtype=torch.float64)
    c = torch.randn(width, generator=g, dtype=torch.float64, requires_grad=True)
    drop = (torch.rand(n, width, generator=g) > 0.3).double() / 0.7 if with_dropout else None
    cotangent = torch.randn(n, width, generator=g, dtype=torch.float64)

    auto = _autograd_input_gradient(h, gamma, beta, c, drop, 1e-5)
    closed = norm_relu_input_gradient(h, gamma, beta, c, drop, 1e-5)
    assert torch.allclose(closed, auto, atol=1e-10)
    vjp_auto = torch.autograd.grad((auto * cotangent).sum(), (h, gamma, c), allow_unused=True)
    vjp_closed = torch.autograd.grad((closed * cotangent).sum(), (h, gamma, c))
    for a, b in zip(vjp_auto, vjp_closed, strict=True):
        assert torch.allclose(b, torch.zeros_like(b) if a is None else a, atol=1e-9)


def test_closed_form_passes_gradcheck_and_is_differentiable_once():
    torch.manual_seed(0)
    h = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    gamma = torch.randn(7, dtype=torch.float64, requires_grad=True)
    c = torch.randn(7, dtype=torch.float64, requires_grad=True)
    beta = 0.3 * torch.randn(7, dtype=torch.float64)
    drop = (torch.rand(5, 7) > 0.2).double() / 0.8

    def fn(h, gamma, c):
        return NormReLUInputGradient.apply(h, gamma, beta, c, drop, 1e-5)

    assert torch.autograd.gradcheck(fn, (h, gamma, c))
    out = fn(h, gamma, c)
    (gh,) = torch.autograd.grad(out.square().sum(), h, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gh.sum().backward()  # a third derivative is refused, not silently wrong


def _prefix(n_layers=1, dropout=0.2, n_batches=2):
    import scvi

    torch.manual_seed(0)
    enc = scvi.nn.Encoder(
        30, 4, n_cat_list=[n_batches], n_layers=n_layers, n_hidden=12, dropout_rate=dropout,
        use_batch_norm=False, use_layer_norm=True, return_dist=True,
    ).double()
    x = torch.rand(8, 30, dtype=torch.float64)
    b = torch.tensor([[0], [1]] * 4)
    prefix = encoder_prefix(enc, 30, (x, b))
    assert prefix is not None
    return prefix.train(), enc


@pytest.mark.parametrize("reducer", [Sum(), Mean(), Index(2), Index([0, 3, 3]), TargetReducer(1)])
@pytest.mark.parametrize(
    ("dropout", "train"), [(0.2, True), (0.2, False), (0.0, True), (0.9, True)]
)
def test_encoder_mean_gradient_equals_autograd(reducer, dropout, train):
    """The same gradient and second-order parameter gradients as autograd through the
    encoder's rest, with the same dropout mask (drawn from the same random state)."""
    prefix, enc = _prefix(dropout=dropout)
    rest = prefix.rest.train(train)
    h = torch.randn(8, 12, dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[0], [1]] * 4)
    layer = enc.encoder.fc_layers[0][0]
    params = [layer.bias, layer.weight, enc.mean_encoder.weight]

    torch.manual_seed(1)
    closed = rest.reduced_gradient(h, reducer, b, create_graph=True)
    torch.manual_seed(1)  # the mask the closed form drew, for the autograd reference
    cov = torch.nn.functional.one_hot(b[:, 0], 2).double() @ layer.weight[:, 30:].t()
    y = torch.nn.functional.layer_norm(h + cov, (12,), eps=1e-5)
    a = torch.relu(y)
    if train and dropout > 0:
        a = a * (torch.rand_like(a) >= dropout).double() / (1 - dropout)
    out = enc.mean_encoder(a)
    (auto,) = torch.autograd.grad(reducer(out).sum(), h, create_graph=True)
    assert torch.allclose(closed, auto, atol=1e-10)
    for g_a, g_c in zip(
        torch.autograd.grad(auto.square().sum(), [h, *params], allow_unused=True),
        torch.autograd.grad(closed.square().sum(), [h, *params], allow_unused=True),
        strict=True,
    ):
        if g_a is None:
            assert g_c is None or not g_c.any()
        else:
            assert torch.allclose(g_a, g_c, atol=1e-9)


def test_encoder_without_the_one_block_shape_falls_back_to_autograd():
    deep, _ = _prefix(n_layers=2)
    h = torch.randn(3, 12, dtype=torch.float64)
    b = torch.tensor([[0], [1], [0]])
    assert deep.rest.reduced_gradient(h, Sum(), b) is None
    shallow, _ = _prefix()
    for reducer in (
        L2Norm(),
        CallableReducer(lambda o: o.sum(1)),
        Sum(output=0),
        TargetReducer(torch.tensor([0, 1, 2])),
    ):
        assert shallow.rest.reduced_gradient(h, reducer, b) is None


@pytest.mark.parametrize(
    "reducer", [Sum(), Mean(), Index(slice(1, 3)), Index(-1), TargetReducer(2), TargetReducer(-1)]
)
def test_output_weights_reproduce_the_reduction(reducer):
    out = torch.randn(6, 5, dtype=torch.float64)
    w = reducer.output_weights(5).double()
    assert torch.allclose(out @ w, reducer(out))


@pytest.mark.parametrize("method", ["eg", "ig"])
@pytest.mark.parametrize("create_graph", [True, False])
def test_attributions_and_parameter_gradients_equal_with_and_without_closed_form(
    method, create_graph, monkeypatch
):
    """EG (k = 3) and IG on scARE's encoder: the closed form changes nothing but the cost
    (dropout 0: both paths see the same function)."""
    prefix, enc = _prefix(dropout=0.0)
    x = torch.rand(10, 30, dtype=torch.float64) * 3
    b = torch.tensor([[0], [1]] * 5)
    gt = (torch.arange(30) < 8).double()

    def run():
        torch.manual_seed(3)
        if method == "eg":
            eg = attreg.ExpectedGradients(prefix, differentiable=create_graph)
            a = eg.attribute(
                x,
                additional_forward_args=(b,),
                n_samples=3,
                generator=torch.Generator().manual_seed(0),
            )
        else:
            ig = attreg.IntegratedGradients(prefix, differentiable=create_graph)
            a = ig.attribute(x, additional_forward_args=(b,), n_steps=5)
        if not create_graph:
            return a, []
        loss = AF.abs_minmax_mse_loss(a, gt)
        return a, torch.autograd.grad(loss, list(enc.parameters()), allow_unused=True)

    a_closed, g_closed = run()
    monkeypatch.delattr(EncoderMeanRest, "reduced_gradient")
    a_auto, g_auto = run()
    assert a_closed.requires_grad == create_graph
    assert torch.allclose(a_closed, a_auto, atol=1e-10) and a_auto.abs().sum() > 0
    for x_c, x_a in zip(g_closed, g_auto, strict=True):
        if x_a is None or x_c is None:
            assert (x_a is None or not x_a.any()) and (x_c is None or not x_c.any())
        else:
            assert torch.allclose(x_c, x_a, atol=1e-9)


@pytest.mark.fast_path_only
def test_gradients_at_uses_a_reduced_gradient_and_falls_back_on_none():
    calls = []

    class Quadratic(torch.nn.Module):
        def __init__(self, answer):
            super().__init__()
            self.answer = answer

        def forward(self, x):
            return x.square()

        def reduced_gradient(self, points, reducer, *, create_graph):
            calls.append(create_graph)
            return None if self.answer is None else 2 * points

    x = torch.randn(4, 3)
    for answer in (None, "closed"):
        got = gradients_at(Quadratic(answer), x, Sum(), n=4)
        assert torch.allclose(got, 2 * x)
    assert calls == [False, False]
    # chunks (internal_batch_size) bypass the closed form
    assert torch.allclose(
        gradients_at(Quadratic("closed"), x, Sum(), n=2, internal_batch_size=2), 2 * x
    )
    assert calls == [False, False]


@pytest.mark.fast_path_only
def test_the_scare_models_training_step_takes_the_closed_form(monkeypatch):
    """SCARE's own encoder (its dropout is SCAREVAE's FastDropout) is the one block the
    closed form knows: a default prior step computes dF/dh with it, not with autograd's
    double backward, and the gradient equals autograd's with the same dropout mask."""
    import numpy as np

    import attreg_sc as asc
    from attreg_sc.fast import closed_form_gradient

    adata = asc.datasets.synthetic(n_cells=64, n_genes=40, n_gt_genes=6, seed=0)
    asc.SCARE.setup_anndata(adata, batch_key="batch")
    model = asc.SCARE(adata, gt="is_gt", n_latent=4, n_hidden=16)
    calls = []
    real = closed_form_gradient.NormReLUInputGradient.apply
    monkeypatch.setattr(
        closed_form_gradient.NormReLUInputGradient,
        "apply",
        lambda *a: calls.append(1) or real(*a),
    )
    plan = model._training_plan_cls(model.module, prior=model.prior_config)
    plan.train()
    rows = model.adata_manager.create_torch_dataset()[np.arange(32)]
    tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in rows.items()}
    plan.training_step(tensors, 0).backward()
    assert len(calls) == 1

    encoder = model.module.z_encoder
    prefix = encoder_prefix(encoder, adata.n_vars, (tensors["X"].log1p(), tensors["batch"]))
    rest = prefix.rest.train()
    h = torch.randn(32, 16, requires_grad=True)
    torch.manual_seed(5)
    closed = rest.reduced_gradient(h, Sum(), tensors["batch"], create_graph=True)
    torch.manual_seed(5)  # the same mask through the module's own FastDropout
    (auto,) = torch.autograd.grad(rest(h, tensors["batch"]).sum(), h, create_graph=True)
    torch.testing.assert_close(closed, auto, rtol=1e-5, atol=1e-6)
