"""attreg's EG against the reference attribution-priors implementation (``attributionpriors``).

``attributionpriors`` 0.1.3 (TensorFlow) is an optional benchmark peer; without it and
TensorFlow these tests are skipped. It has two EG implementations:

* ``AttributionPriorExplainer`` (``ops.py``, the paper's, TF1 graph mode): ``k``
  references per input (the batch rolled by 1..k), one alpha per (input, reference),
  gradients at the interpolated points. It runs on TF2 through ``tf.compat.v1`` once its
  three TF1-only names are supplied (``contrib.framework.is_tensor``, ``manip.roll``).
  attreg equals it under the same references and alphas (replayed).
* ``eager_ops.expected_gradients`` (TF2): differentiates with respect to the *inputs*
  instead of the interpolated points, so each attribution is
  ``(x_i - x_{i-1}) * (a_i g_i + (1 - a_{i+1}) g_{i+1})`` with ``g_i`` the gradient at
  the i-th interpolated point, not expected gradients. The second test pins that down
  (it is why the benchmark and the docs use the TF1 explainer as the reference).
"""

import importlib.util
import pathlib
import sys

import numpy as np
import pytest
import torch

from attreg.attr.expected_gradients import expected_gradients_from_draws
from attreg.reducers import Sum
from tests.conftest import make_mlp

tf = pytest.importorskip("tensorflow")
ap_ops = pytest.importorskip("attributionpriors.ops")
eager_ops = pytest.importorskip("attributionpriors.eager_ops")

_BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(_BENCH))  # bench_peers imports the benchmarks' _common module
_spec = importlib.util.spec_from_file_location("bench_peers", _BENCH / "bench_peers.py")
bench_peers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_peers)


def _tf_mlp(model: torch.nn.Sequential, inputs):
    first, _, last = model
    w1, b1 = first.weight.detach().numpy().T, first.bias.detach().numpy()
    w2, b2 = last.weight.detach().numpy().T, last.bias.detach().numpy()
    return tf.reshape(tf.matmul(tf.tanh(tf.matmul(inputs, w1) + b1), w2) + b2, [-1])


@pytest.mark.parametrize("k", [1, 3])
def test_eg_identical_to_attribution_prior_explainer_under_same_draws(monkeypatch, k):
    n, d = 6, 5
    model = make_mlp(d, 8, 1, seed=2).float()
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    alphas = np.random.default_rng(1).uniform(size=(n, k)).astype(np.float32)
    monkeypatch.setattr(ap_ops, "tf", bench_peers.TF1Names(tf.compat.v1, uniform=alphas))
    with bench_peers.tf1_graph_mode() as sess:
        inp = tf.compat.v1.placeholder(tf.float32, (None, d))
        explainer = ap_ops.AttributionPriorExplainer()
        cond_input, train_eg = explainer.input_to_samples_delta(inp, "roll", k=k)
        eg_op = explainer.shap_value_op(_tf_mlp(model, cond_input), cond_input)
        theirs = sess.run(eg_op, {inp: x.numpy(), train_eg: True})
    refs = torch.stack([torch.roll(x, shifts=j, dims=0) for j in range(1, k + 1)])  # (k, n, d)
    ours = expected_gradients_from_draws(model, x, refs, torch.from_numpy(alphas.T), Sum())
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-5, atol=1e-6)
    assert np.abs(ours.numpy()).max() > 1e-3  # a non-trivial comparison


def test_eager_op_differentiates_with_respect_to_the_inputs(monkeypatch):
    n, d = 6, 5
    model = make_mlp(d, 8, 1, seed=2).float()
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    alphas = np.random.default_rng(1).uniform(size=(n, 1, 1, 1)).astype(np.float32)
    monkeypatch.setattr(eager_ops, "tf", bench_peers.TF1Names(tf, uniform=alphas))

    def keras_like(z, training=True):  # the op passes image-shaped input (n, d, 1, 1)
        return _tf_mlp(model, tf.reshape(z, (-1, d)))

    theirs = eager_ops.expected_gradients.python_function(
        tf.constant(x.numpy().reshape(n, d, 1, 1)), None, keras_like, False
    )
    theirs = theirs.numpy().reshape(n, d)
    a = torch.from_numpy(alphas.reshape(n, 1))
    ref = torch.roll(x, shifts=1, dims=0)
    z = (a * x + (1 - a) * ref).requires_grad_()
    (g,) = torch.autograd.grad(model(z).sum(), z)
    eg = expected_gradients_from_draws(model, x, ref[None], a.T, Sum())
    np.testing.assert_allclose(eg.numpy(), (g * (x - ref)).numpy(), rtol=1e-5, atol=1e-6)
    wrt_inputs = (a * g + (1 - a.roll(-1, 0)) * g.roll(-1, 0)) * (x - ref)
    np.testing.assert_allclose(theirs, wrt_inputs.numpy(), rtol=1e-4, atol=1e-6)
    assert np.abs(theirs - eg.numpy()).max() > 0.1  # so it is not expected gradients
