"""One switch turns every fast path off; the reference math then gives the same values."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import attreg
import attreg_sc as asc
from attreg import cpu_matmul
from attreg import functional as AF
from attreg_sc import special
from attreg_sc.fast.encoder_prefix import EncoderMeanRest


def scare_step_gradients(adata, counters):
    """ELBO + w_A L_A of one minibatch (the training plan's own forward) and its
    parameter gradients; the same weights, draws and noise both times."""
    import scvi

    scvi.settings.seed = 0
    model = asc.SCARE(adata, gt="is_gt", n_latent=3, dropout_rate=0.0)
    plan = model._training_plan_cls(model.module, prior=model.prior_config)
    tensors = next(iter(model._make_data_loader(adata, indices=np.arange(64), batch_size=64)))
    plan.train()
    torch.manual_seed(1)
    _, _, out = plan.forward(tensors)
    grads = torch.autograd.grad(out.loss, list(model.module.parameters()), allow_unused=True)
    return float(out.loss.detach()), [g for g in grads if g is not None]


def test_switch_off_uses_no_fast_path_and_gives_the_same_step(monkeypatch):
    adata = asc.datasets.synthetic(n_cells=200, n_genes=300, n_gt_genes=30, seed=0)
    asc.SCARE.setup_anndata(adata, batch_key="batch")
    calls = {"onednn": 0, "closed_form": 0, "fused": 0, "digamma": 0}

    def count(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)

        return wrapped

    monkeypatch.setattr(cpu_matmul, "_onednn_linear", count("onednn", cpu_matmul._onednn_linear))
    monkeypatch.setattr(
        EncoderMeanRest,
        "reduced_gradient",
        count("closed_form", EncoderMeanRest.reduced_gradient),
    )
    monkeypatch.setattr(AF, "share_outside_loss", count("fused", AF.share_outside_loss))
    monkeypatch.setattr(
        special, "_digamma_without_log", count("digamma", special._digamma_without_log)
    )
    with attreg.fast_paths(True):
        fast_loss, fast_grads = scare_step_gradients(adata, calls)
    used = dict(calls)
    calls.update(dict.fromkeys(calls, 0))
    with attreg.fast_paths(False):
        ref_loss, ref_grads = scare_step_gradients(adata, calls)
    assert calls == dict.fromkeys(calls, 0), calls  # nothing fast ran
    assert used["closed_form"] and used["fused"] and used["digamma"], used
    if cpu_matmul.cpu_matmul_backend() == "onednn":
        assert used["onednn"]
    assert ref_loss == pytest.approx(fast_loss, rel=1e-5)
    for a, b in zip(fast_grads, ref_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5 * float(b.abs().max()))


def test_environment_variable_and_context_manager():
    code = "import attreg; print(attreg.fast_paths_enabled())"
    for value, expected in (("0", "False"), ("off", "False"), ("1", "True")):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**__import__("os").environ, "ATTREG_FAST_PATHS": value},
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == expected
    assert attreg.fast_paths_enabled()
    with attreg.fast_paths(False):
        assert not attreg.fast_paths_enabled()
        with pytest.raises(TypeError, match="True or False"):
            attreg.set_fast_paths("no")
    assert attreg.fast_paths_enabled()
