"""Numeric settings that would train nothing or nonsense fail before training, with a
message naming the setting (one class of the hostile-input review)."""

import logging
import math

import numpy as np
import pytest
import torch

import attreg
import attreg_sc as asc


@pytest.fixture(scope="module")
def adata():
    a = asc.datasets.synthetic(n_cells=60, n_genes=20, n_gt_genes=4, seed=0)
    asc.SCARE.setup_anndata(a, batch_key="batch")
    return a


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"w_attr": math.nan}, "w_attr must be a finite"),
        ({"w_attr": math.inf}, "w_attr must be a finite"),
        ({"w_attr": -1.0}, "w_attr must be a finite"),
        ({"w_reconstruction": math.nan}, "w_reconstruction"),
        ({"n_latent": 0}, "n_latent must be an integer in 1..4096"),
        ({"n_latent": 2.5}, "n_latent must be an integer"),
        ({"n_hidden": 10**8}, "n_hidden must be an integer in 1..65536"),
        ({"n_layers": 10**6}, "n_layers must be an integer in 1..64"),
        ({"n_samples": True}, "n_samples must be an integer"),
        ({"n_steps": 0}, "n_steps"),
        ({"dropout_rate": 1.0}, "dropout_rate must be a number in \\[0, 1\\)"),
        ({"seed": -1}, "seed must be an integer"),
    ],
)
def test_bad_model_settings(adata, kwargs, match):
    with pytest.raises(ValueError, match=match):
        asc.SCARE(adata, gt="is_gt", **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_epochs": 0}, "max_epochs must be an integer >= 1"),
        ({"batch_size": 1}, "batch_size must be an integer >= 2"),
        ({"batch_size": 0}, "batch_size must be an integer >= 2"),
        ({"checkpoint_every": 0}, "checkpoint_every"),
        ({"early_stopping_patience": 0}, "early_stopping_patience"),
        ({"plan_kwargs": {"lr": -1e-3}}, "lr must be a finite number >= 0"),
        ({"plan_kwargs": {"lr": math.nan}}, "lr must be a finite"),
        ({"plan_kwargs": {"weight_decay": -1.0}}, "weight_decay"),
        ({"train_size": 0.0}, "train_size must be a number in \\(0, 1\\]"),
        ({"train_size": 1.5}, "train_size"),
        ({"gradient_clip_val": -1.0}, "gradient_clip_val"),
        ({"prior_warmup_epochs": -1}, "prior_warmup_epochs"),
        ({"threads": "all"}, "threads must be"),
    ],
)
def test_bad_training_settings_fail_before_any_epoch(adata, kwargs, match):
    m = asc.SCARE(adata, gt="is_gt", n_latent=2)
    before = {k: v.clone() for k, v in m.module.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        m.train(enable_progress_bar=False, **kwargs)
    assert all(torch.equal(v, m.module.state_dict()[k]) for k, v in before.items())
    assert m.history is None and not m.is_trained


def test_zero_learning_rate_trains_with_a_visible_warning(adata, caplog):
    # scvi-tools' own tests train with lr=0 (early stopping on a constant loss): allowed,
    # but nothing would train silently
    m = asc.SCARE(adata, gt="is_gt", n_latent=2)
    before = {k: v.clone() for k, v in m.module.state_dict().items()}
    with caplog.at_level(logging.WARNING, logger="attreg_sc"):
        m.train(max_epochs=1, enable_progress_bar=False, plan_kwargs={"lr": 0.0})
    assert "nothing trains" in caplog.text
    assert all(torch.equal(v, m.module.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("weight", [math.nan, math.inf, -0.5])
def test_prior_weight_must_be_finite(weight):
    with pytest.raises(ValueError, match="weight must be a finite"):
        attreg.AttributionPrior(torch.nn.Linear(3, 1), torch.tensor([1.0, 0, 0]), weight=weight)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_prior_under_disabled_gradients_raises_at_the_call(mode):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    prior = attreg.AttributionPrior(model, torch.tensor([1.0, 0, 0]))
    priors = attreg.PriorSet([prior])
    x = torch.randn(8, 3)
    with mode():
        with pytest.raises(RuntimeError, match="gradients disabled"):
            prior(x)
        with pytest.raises(RuntimeError, match="gradients disabled"):
            priors(x)
    assert np.isfinite(float(prior(x).detach()))


def test_fssf_refuses_too_small_min_cells_and_the_cli_fails_when_nothing_is_scored(adata, tmp_path):
    gt = adata.var["is_gt"].to_numpy()
    m = asc.SCARE(adata, gt=gt, n_latent=2)
    m.train(max_epochs=1, enable_progress_bar=False)
    with pytest.raises(ValueError, match="min_cells must be an integer >= 3"):
        asc.metrics.fssf(m, gt, "cell_type", min_cells=1)
    from attreg_sc import cli

    m.save(tmp_path / "model")
    data = tmp_path / "cells.h5ad"
    adata.write_h5ad(data)
    genes = tmp_path / "genes.txt"
    genes.write_text("\n".join(adata.var_names[gt]))
    out = tmp_path / "fssf.csv"
    code = cli.main(
        ["fssf", str(tmp_path / "model"), str(data), "--genes", str(genes),
         "--cell-type-key", "cell_type", "--n-random", "2", "--out", str(out)]
    )  # fmt: skip
    assert code == 2 and not out.exists()  # 60 cells: every type below 50 cells
