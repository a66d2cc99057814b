import captum.attr
import numpy as np
import pytest
import torch

from attreg import ExpectedGradients, InputGradient, InputXGradient
from attreg.attr.expected_gradients import draw_references, expected_gradients_from_draws
from attreg.reducers import Index
from tests.conftest import make_mlp

# every test here runs with the fast paths on and off (conftest.fast_paths_both_ways)
pytestmark = pytest.mark.usefixtures("fast_paths_both_ways")


def test_linear_model_closed_form_with_background():
    """For a linear F every draw gives (x - r) * w, so EG = (x - E[r]) * w."""
    lin = torch.nn.Linear(4, 1).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    one = torch.randn(1, 4, dtype=torch.float64)
    eg = ExpectedGradients(lin)
    assert torch.allclose(eg.attribute(x, one, n_samples=3), (x - one) * lin.weight, atol=1e-12)
    bg = torch.randn(50, 4, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    est = eg.attribute(x, bg, n_samples=4000, generator=g)
    assert torch.allclose(est, (x - bg.mean(0)) * lin.weight, atol=0.08)


def test_matches_captum_gradient_shap_under_the_same_draws():
    """Same references and alphas as captum's GradientShap (stdevs=0) -> same numbers."""
    model = make_mlp(5, 7, 2, seed=3)
    x = torch.randn(4, 5, dtype=torch.float64)
    bg = torch.randn(6, 5, dtype=torch.float64)
    k = 3
    np.random.seed(11)  # noqa: NPY002 (captum draws from the legacy global RNG)
    ref = captum.attr.GradientShap(model).attribute(x, bg, n_samples=k, stdevs=0.0, target=1)
    np.random.seed(11)  # noqa: NPY002 -- replay captum's draws: baseline choice, then alphas
    choice = torch.from_numpy(np.random.choice(6, k * 4)).reshape(4, k).T  # noqa: NPY002
    alphas = torch.from_numpy(np.random.uniform(0, 1, k * 4)).reshape(4, k).T  # noqa: NPY002
    ours = expected_gradients_from_draws(model, x, bg[choice], alphas, Index(1))
    assert torch.allclose(ours, ref, atol=1e-5)


def test_reproducible_with_generator_and_varies_with_seed():
    model = make_mlp(5, 7, 1)
    x = torch.randn(10, 5, dtype=torch.float64)
    eg = ExpectedGradients(model)
    a = eg.attribute(x, n_samples=2, generator=torch.Generator().manual_seed(1))
    b = eg.attribute(x, n_samples=2, generator=torch.Generator().manual_seed(1))
    c = eg.attribute(x, n_samples=2, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_batch_references_exclude_self():
    x = torch.arange(20.0).reshape(10, 2)  # distinct rows
    refs = draw_references(x, "batch", n_samples=50, generator=torch.Generator().manual_seed(0))
    assert refs.shape == (50, 10, 2)
    assert not (refs == x.unsqueeze(0)).all(-1).any()
    # every other row is drawn for row 0 with enough samples
    drawn = {int(r[0]) for r in refs[:, 0]}
    assert drawn == {int(v) for v in x[1:, 0]}


def test_single_sample_batch_uses_itself():
    refs = draw_references(torch.ones(1, 3), "batch", n_samples=2)
    assert torch.equal(refs, torch.ones(2, 1, 3))


def test_noise_references_smoothgrad_form():
    """With references='noise', EG is x * E[dF/dx(x + eps)]; for linear F that is x * w."""
    lin = torch.nn.Linear(3, 1).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    eg = ExpectedGradients(lin)
    attr = eg.attribute(x, "noise", n_samples=4, noise_std=0.5)
    assert torch.allclose(attr, x * lin.weight, atol=1e-12)
    with pytest.raises(ValueError, match="noise_std"):
        eg.attribute(x, "noise")


def test_per_sample_independence_matches_torch_func():
    """One batched backward == per-sample gradients from torch.func.vmap(grad)."""
    model = make_mlp(4, 6, 1, seed=5)
    pts = torch.randn(9, 4, dtype=torch.float64)
    ours = InputGradient(model).attribute(pts)
    per_sample = torch.func.vmap(torch.func.grad(lambda p: model(p.unsqueeze(0)).sum()))(pts)
    assert torch.allclose(ours, per_sample, atol=1e-12)


def test_background_attributions_of_a_sample_ignore_other_samples():
    model = make_mlp(4, 6, 1, seed=5)
    bg = torch.randn(1, 4, dtype=torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64)
    y = x.clone()
    y[1:] = torch.randn(4, 4, dtype=torch.float64)
    eg = ExpectedGradients(model)
    g = torch.Generator().manual_seed(0)
    a = eg.attribute(x, bg, generator=g)
    g = torch.Generator().manual_seed(0)
    b = eg.attribute(y, bg, generator=g)
    assert torch.allclose(a[0], b[0], atol=1e-12)


def test_input_x_gradient_matches_captum():
    model = make_mlp(4, 6, 2, seed=1)
    x = torch.randn(5, 4, dtype=torch.float64)
    ours = InputXGradient(model).attribute(x, target=0)
    assert torch.allclose(ours, captum.attr.InputXGradient(model).attribute(x, target=0))


def test_bad_references():
    model = make_mlp(4, 6, 1)
    x = torch.randn(3, 4, dtype=torch.float64)
    eg = ExpectedGradients(model)
    with pytest.raises(ValueError, match="do not match"):
        eg.attribute(x, torch.randn(5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown references"):
        eg.attribute(x, "dataset")
    with pytest.raises(ValueError, match="n_samples"):
        eg.attribute(x, n_samples=0)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("groups", [None, [0, 1, 0, 2, 1, 0, 3]], ids=["batch", "groups"])
def test_k_draws_and_their_gradients_equal_a_per_draw_loop(k, fast, groups):
    """Attributions, and the gradients of a loss on them with respect to the parameters
    and the inputs, equal a plain loop over the draws (same references and alphas), with
    references from the whole batch or within ``reference_groups``."""
    from attreg import LinearPrefix
    from attreg.attr.expected_gradients import batch_reference_index, group_reference_index

    torch.manual_seed(0)
    model = LinearPrefix(
        torch.nn.Linear(6, 5), torch.nn.Sequential(torch.nn.Tanh(), torch.nn.Linear(5, 2))
    ).double()
    x = torch.rand(7, 6, dtype=torch.float64, requires_grad=True)
    w = torch.rand(7, 6, dtype=torch.float64)
    g_tensor = None if groups is None else torch.tensor(groups)

    def loss_and_grads(attr):
        loss = (w * attr.square()).sum()
        grads = torch.autograd.grad(loss, [x, *model.parameters()], materialize_grads=True)
        return [attr.detach(), *grads]

    eg = ExpectedGradients(model, differentiable=True, use_linear_prefix=fast)
    ours = loss_and_grads(
        eg.attribute(
            x, n_samples=k, generator=torch.Generator().manual_seed(1), reference_groups=g_tensor
        )
    )
    g = torch.Generator().manual_seed(1)
    if g_tensor is None:
        index = batch_reference_index(7, k, g, x.device)
    else:
        index = group_reference_index(g_tensor, k, g, x.device)
    alphas = torch.rand((k, 7), generator=g).double()  # drawn in float32, as attribute() does
    terms = []
    for s in range(k):
        r = x[index[s]]
        p = r + alphas[s].unsqueeze(1) * (x - r)
        (grad,) = torch.autograd.grad(model(p).sum(), p, create_graph=True)
        terms.append((x - r) * grad)
    loop = loss_and_grads(torch.stack(terms).mean(0))
    for a, b in zip(ours, loop, strict=True):
        assert torch.allclose(a, b, atol=1e-12)


def test_mean_of_products_is_twice_differentiable():
    from attreg.attr.expected_gradients import _MeanOfProducts

    d = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(_MeanOfProducts.apply, (d, g))
    assert torch.allclose(_MeanOfProducts.apply(d, g), (d * g).mean(0), atol=1e-15)
