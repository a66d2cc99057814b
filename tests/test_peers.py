"""attreg's EG equals path-explain's under the same references and alphas.

path-explain (and its TensorFlow dependency) is an optional benchmark peer
(``pip install -e ".[bench]"``); without it these tests are skipped.
"""

import numpy as np
import pytest
import torch

from attreg.attr.expected_gradients import expected_gradients_from_draws
from attreg.reducers import Sum
from tests.conftest import make_mlp

path_explain = pytest.importorskip("path_explain.explainers.path_explainer_torch")


@pytest.mark.parametrize("k", [1, 8])
def test_eg_identical_to_path_explain_under_same_draws(k):
    model = make_mlp(6, 8, 1, seed=4).float()
    x = torch.randn(5, 6)
    bg = torch.randn(7, 6)
    np.random.seed(3)  # noqa: NPY002 -- path-explain draws from the legacy global RNGs
    torch.manual_seed(3)
    ref = path_explain.PathExplainerTorch(model).attributions(
        x.clone().requires_grad_(), bg, num_samples=k, use_expectation=True
    )
    np.random.seed(3)  # noqa: NPY002 -- replay: reference indices, then alphas
    torch.manual_seed(3)
    idx = np.random.choice(7, size=5 * k, replace=7 < 5 * k)  # noqa: NPY002
    alphas = torch.FloatTensor(5, k).uniform_(0, 1)
    refs = bg[idx].view(5, k, 6).transpose(0, 1)
    ours = expected_gradients_from_draws(model, x, refs, alphas.T, Sum())
    assert torch.allclose(ours, ref.detach(), atol=1e-6)
