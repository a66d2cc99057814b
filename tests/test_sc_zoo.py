"""attreg_sc on scvi-tools' model zoo: priors for SCVI, SCANVI and TOTALVI through
with_prior (the GT share rises and training still converges), SCARE with scvi-tools' whole
user API, the fast paths, and model files that cannot run code."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

scvi = pytest.importorskip("scvi")

import attreg_sc as asc  # noqa: E402
from attreg_sc import SCARE, with_prior  # noqa: E402
from attreg_sc.train import PriorConfig  # noqa: E402
from tests.test_safe_files import _malicious_bytes, _with_valid_header  # noqa: E402

warnings.filterwarnings("ignore", module="lightning")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
QUIET = {"enable_progress_bar": False}


@pytest.fixture(scope="module")
def synthetic():
    return asc.datasets.synthetic(n_cells=400, n_genes=60, n_gt_genes=10, seed=0)


def curve(model, key: str) -> np.ndarray:
    return model.history[key].to_numpy(dtype=float).ravel()


def gt_share(model, mask: np.ndarray, **kwargs) -> float:
    a = np.abs(model.get_attributions(n_samples=4, **kwargs))
    return float(a[:, mask].sum() / a.sum())


def _train_scvi(adata, w_attr: float):
    model_cls = with_prior(scvi.model.SCVI)
    adata = adata.copy()
    model_cls.setup_anndata(adata, batch_key="batch")
    scvi.settings.seed = 0
    model = model_cls(adata, gt="is_gt", w_attr=w_attr, n_latent=4)
    model.train(max_epochs=15, check_val_every_n_epoch=1, **QUIET)
    return model


@pytest.fixture(scope="module")
def scvi_pair(synthetic):
    return _train_scvi(synthetic, 0.0), _train_scvi(synthetic, 30.0)


def test_scvi_prior_raises_gt_share_and_training_converges(scvi_pair, synthetic):
    plain, prior = scvi_pair
    gt = synthetic.var["is_gt"].to_numpy()
    before, after = gt_share(plain, gt), gt_share(prior, gt)
    assert after > before + 0.2, (before, after)
    for model in scvi_pair:
        elbo = curve(model, "elbo_train")
        assert np.isfinite(elbo).all() and elbo[-1] < elbo[0]
    # the prior's loss is logged and falls; validation includes it
    l_a = curve(prior, "attribution_loss_train")
    assert l_a[-1] < l_a[0]
    assert "attribution_loss_validation" in prior.history
    assert "attribution_loss_train" not in plain.history  # w_attr=0: a plain SCVI


def test_plan_uses_the_encoders_own_inputs_and_layer_norm(scvi_pair):
    model = scvi_pair[1]
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in model.module.z_encoder.modules())
    assert any(isinstance(m, torch.nn.LayerNorm) for m in model.module.z_encoder.modules())


def test_batch_norm_encoder_is_refused_before_training(synthetic):
    model_cls = with_prior(scvi.model.SCVI)
    adata = synthetic.copy()
    model_cls.setup_anndata(adata, batch_key="batch")
    model = model_cls(adata, gt="is_gt", use_batch_norm="both", use_layer_norm="none")
    with pytest.raises(ValueError, match="BatchNorm, which couples the cells"):
        model.train(max_epochs=1, **QUIET)


def test_bad_prior_settings_are_refused_at_set_prior(synthetic):
    model_cls = with_prior(scvi.model.SCVI)
    adata = synthetic.copy()
    model_cls.setup_anndata(adata, batch_key="batch")
    model = model_cls(adata, n_latent=3)
    with pytest.raises(TypeError, match="unknown prior setting"):
        model.set_prior("is_gt", reduce="sum")
    with pytest.raises(ValueError, match="unknown reducer"):
        model.set_prior("is_gt", reducer="max")
    with pytest.raises(ValueError, match="w_attr must be a finite"):
        model.set_prior("is_gt", w_attr=float("nan"))
    with pytest.raises(ValueError, match="selects every gene"):
        model.set_prior(np.ones(adata.n_vars, bool))
    with pytest.raises(KeyError, match="not registered labels"):
        model.set_prior(gt_per_label={"no such label": ["gene0"]})
    with pytest.raises(ValueError, match="unknown reparameterizer|reparameterizer"):
        model.set_prior("is_gt", reparameterizer="nope")
    with pytest.raises(ValueError, match="target='model' needs attreg_sc.SCARE"):
        model.set_prior("is_gt", target="model")
    assert model.prior_config is None  # nothing half-set
    model.set_prior("is_gt", w_attr=2.0, reducer="sum")
    assert model.prior_config.w_attr == 2.0 and model.prior_config.active


@pytest.fixture(scope="module")
def pbmc():
    return asc.datasets.pbmc_two_runs()


def test_scanvi_per_label_prior_targets_each_labels_genes(synthetic):
    """type0 cells should rest on the GT genes, type1 cells on the 'other' genes; type2
    cells are left unlabelled (no GT row: outside the prior)."""
    names = np.asarray(synthetic.var_names)
    gt_of = {
        "type0": list(names[synthetic.var["is_gt"]]),
        "type1": list(names[synthetic.var["is_other"]]),
    }
    shares = {}
    for w in (0.0, 30.0):
        adata = synthetic.copy()
        adata.obs["label"] = adata.obs["cell_type"].astype(str).replace("type2", "unknown")
        base = with_prior(scvi.model.SCVI)
        base.setup_anndata(adata, batch_key="batch", labels_key="label")
        scvi.settings.seed = 0
        ref = base(adata, n_latent=4)
        ref.train(max_epochs=5, **QUIET)
        model = with_prior(scvi.model.SCANVI).from_scvi_model(ref, "unknown", adata=adata)
        model.set_prior(gt_per_label=gt_of, w_attr=w)
        model.train(max_epochs=25, **QUIET)
        assert np.isfinite(curve(model, "train_loss")).all()
        # F = |mu|: every latent direction (the random-direction prior's aim)
        a = np.abs(model.get_attributions(n_samples=4, reducer="l2"))
        labels = adata.obs["label"].to_numpy()
        shares[w] = {
            label: float(
                a[labels == label][:, np.isin(names, genes)].sum() / a[labels == label].sum()
            )
            for label, genes in gt_of.items()
        }
        assert model.predict().shape == (adata.n_obs,)
    for label in gt_of:  # measured: type0 0.13 -> 0.25, type1 0.24 -> 0.35
        assert shares[30.0][label] > shares[0.0][label] + 0.08, shares


def _per_type_shares(model, adata, gt_of) -> dict:
    names = np.asarray(adata.var_names)
    a = np.abs(model.get_attributions(n_samples=4, reducer="l2"))
    types = adata.obs["cell_type"].astype(str).to_numpy()
    return {
        t: float(a[types == t][:, np.isin(names, genes)].sum() / a[types == t].sum())
        for t, genes in gt_of.items()
    }


def test_per_cell_type_gt_without_registered_labels(synthetic, tmp_path, caplog):
    """A per-group GT (one gene list per cell type, no labels_key registered) and a per-cell
    matrix: each cell's row is looked up by its registered position (scvi-tools' ind_x)."""
    names = np.asarray(synthetic.var_names)
    gt_of = {
        "type0": list(names[synthetic.var["is_gt"]]),
        "type1": list(names[synthetic.var["is_other"]]),
    }
    model_cls = with_prior(scvi.model.SCVI)
    shares = {}
    for w in (0.0, 30.0):
        adata = synthetic.copy()
        model_cls.setup_anndata(adata, batch_key="batch")
        scvi.settings.seed = 0
        grouped = asc.gt.from_groups(adata, "cell_type", gt_of)  # type2 cells: all-zero rows
        model = model_cls(adata, gt=grouped, w_attr=w, n_latent=4)
        model.train(max_epochs=20, **QUIET)
        assert np.isfinite(curve(model, "train_loss")).all()
        shares[w] = _per_type_shares(model, adata, gt_of)
    for t in gt_of:  # measured: type0 0.21 -> 0.36, type1 0.23 -> 0.50
        assert shares[30.0][t] > shares[0.0][t] + 0.08, shares
    # the positions were registered as an obs column counting the cells
    assert np.array_equal(adata.obs["_attreg_sc_cell_index"], np.arange(adata.n_obs))
    # a new AnnData gets the column on first use, as scvi-tools' _scvi_* columns
    other = synthetic[:50].copy()
    assert model.get_latent_representation(other).shape == (50, 4)
    assert np.array_equal(other.obs["_attreg_sc_cell_index"], np.arange(50))

    # the same GT as a per-cell matrix (its dense rows) trains to the same kind of model
    adata = synthetic.copy()
    model_cls.setup_anndata(adata, batch_key="batch")
    matrix = asc.gt.from_cell_matrix(adata, grouped.to_dense())
    scvi.settings.seed = 0
    cells = model_cls(adata, gt=matrix, w_attr=30.0, n_latent=4)
    cells.train(max_epochs=20, **QUIET)
    by_cell = _per_type_shares(cells, adata, gt_of)
    for t in gt_of:
        assert by_cell[t] > shares[0.0][t] + 0.08, (by_cell, shares)

    # saved and loaded with a per-cell and a vector GT (safe format), and trains on
    cells.set_prior({"cells": matrix, "vector": "is_gt"}, w_attr=30.0)
    cells.save(tmp_path / "cells", save_anndata=True)
    loaded = model_cls.load(tmp_path / "cells")
    g = loaded.prior_config.ground_truths
    assert isinstance(g["cells"], asc.gt.CellGroundTruth)
    assert (g["cells"].matrix != matrix.matrix).nnz == 0
    loaded.train(max_epochs=1, **QUIET)
    # a query model keeps the vector GT and drops the reference's per-cell one, saying so
    query = synthetic[:80].copy()
    query.obs["batch"] = "new run"
    with caplog.at_level(logging.WARNING, logger="attreg_sc.mixin"):
        q = model_cls.load_query_data(query, cells)
    assert "describe the reference's cells" in caplog.text
    assert list(q.prior_config.ground_truths) == ["vector"]
    assert list(cells.prior_config.ground_truths) == ["cells", "vector"]  # untouched
    q.train(max_epochs=1, **QUIET)


def test_per_cell_gt_must_cover_the_models_cells(synthetic):
    model_cls = with_prior(scvi.model.SCVI)
    adata = synthetic.copy()
    model_cls.setup_anndata(adata, batch_key="batch")
    model = model_cls(adata, n_latent=3)
    with pytest.raises(ValueError, match="expected \\(n_cells, n_genes\\)"):
        model.set_prior(np.eye(adata.n_obs - 1, adata.n_vars, dtype=bool))
    cfg_gt = asc.gt.from_cell_matrix(
        synthetic[:10].copy(), np.eye(10, synthetic.n_vars, dtype=bool)
    )
    model._prior_config = PriorConfig(
        ground_truths={"g": cfg_gt}, settings=asc.PriorSettings(w_attr=1.0)
    )
    with pytest.raises(ValueError, match="has 10 rows; the model's AnnData has 400 cells"):
        model.train(max_epochs=1, **QUIET)


def test_totalvi_prior_on_genes_with_proteins_outside(pbmc):
    shares = {}
    genes = sorted({g for v in asc.datasets.PBMC_MARKERS.values() for g in v})  # 23 genes
    for w in (0.0, 30.0):
        adata = pbmc.copy()
        model_cls = with_prior(scvi.model.TOTALVI)
        model_cls.setup_anndata(
            adata, protein_expression_obsm_key="protein_expression", batch_key="batch"
        )
        scvi.settings.seed = 0
        model = model_cls(adata, gt=genes, w_attr=w, n_latent=6)
        model.train(max_epochs=20, **QUIET)
        assert np.isfinite(curve(model, "train_loss")).all()
        full = np.abs(model.get_attributions(n_samples=4, genes_only=False, reducer="l2"))
        assert full.shape == (adata.n_obs, adata.n_vars + 14)  # genes, then proteins
        mask = np.zeros(full.shape[1], bool)
        mask[: adata.n_vars] = asc.gt.from_genes(adata, genes)
        shares[w] = float(full[:, mask].sum() / full.sum())
    assert shares[30.0] > shares[0.0] + 0.1, shares  # measured 0.06 -> 0.3-0.4


# -- SCARE: scvi-tools' API ----------------------------------------------------------
@pytest.fixture(scope="module")
def scare(pbmc):
    adata = pbmc.copy()
    adata.obs["percent_mito"] = np.linspace(0, 1, adata.n_obs)
    adata.obs["donor"] = np.where(np.arange(adata.n_obs) % 2, "d1", "d2")
    SCARE.setup_anndata(
        adata,
        batch_key="batch",
        labels_key="cell_type",
        categorical_covariate_keys=["donor"],
        continuous_covariate_keys=["percent_mito"],
    )
    scvi.settings.seed = 0
    model = SCARE(adata, gt=asc.datasets.PBMC_MARKERS["B"], n_latent=5)
    model.train(max_epochs=4, accelerator="cpu", plan_kwargs={"lr": 2e-3}, **QUIET)
    return model


def test_scare_has_scares_architecture_and_prior(scare):
    m = scare.module
    assert not m.use_observed_lib_size and m.encode_covariates and m.gene_likelihood == "nb"
    assert m.n_latent == 5 and scare.prior_settings.w_attr == 30.0
    assert scare.prior_settings.reducer == "random_direction"
    assert isinstance(scare, scvi.model.SCVI)
    from attreg_sc.module import NoHead

    # NB: no zero-inflation head, so every parameter is used by the loss (plain DDP)
    assert type(m.decoder.px_dropout_decoder) is NoHead
    assert "decoder.px_dropout_decoder.weight" not in m.state_dict()


def test_scare_answers_every_scvi_tools_method(scare):
    model, adata = scare, scare.adata
    n, g = adata.n_obs, adata.n_vars
    assert model.get_normalized_expression().shape == (n, g)
    assert model.get_normalized_expression(library_size=1e4, n_samples=2).shape == (n, g)
    de = model.differential_expression(groupby="cell_type", group1="B", group2="NK")
    assert {"bayes_factor", "proba_m1", "scale1"} <= set(de.columns) and len(de) == g
    assert model.posterior_predictive_sample(n_samples=1).shape == (n, g)
    params = model.get_likelihood_parameters(n_samples=1)
    assert params["mean"].shape == (n, g)
    assert model.get_latent_library_size().shape == (n, 1)
    for value in (model.get_elbo(), model.get_marginal_ll(n_mc_samples=3)):
        assert np.isfinite(float(value))
    assert np.isfinite(float(model.get_reconstruction_error()["reconstruction_loss"]))
    idx = np.arange(10)
    assert model.get_latent_representation(indices=idx).shape == (10, 5)
    sample = model.get_latent_representation(give_mean=False)
    assert sample.shape == (n, 5) and not np.allclose(sample, model.get_latent_representation())
    qz_m, qz_v = model.get_latent_representation(return_dist=True)
    assert qz_m.shape == qz_v.shape == (n, 5) and (qz_v > 0).all()
    model.view_anndata_setup()
    assert isinstance(model.history["elbo_train"], pd.DataFrame)
    assert {"attribution_loss_train", "validation_loss"} <= set(model.history)
    assert "SCARE model" in repr(model)


def test_scare_query_with_a_new_batch(scare, tmp_path):
    query = scare.adata[:60].copy()
    query.obs["batch"] = pd.Categorical(["new_run"] * 60)
    query.obs["cell_type"] = pd.Categorical(["unassigned"] * 60)
    SCARE.prepare_query_anndata(query, scare)
    q = SCARE.load_query_data(query, scare)
    q.train(max_epochs=1, plan_kwargs={"weight_decay": 0.0}, **QUIET)
    assert q.get_latent_representation().shape == (60, 5)
    assert q.prior_config is not None  # the reference's prior carries over
    # a reference given as a path is read with the checked loader
    scare.save(tmp_path / "ref")
    q2 = SCARE.load_query_data(query.copy(), str(tmp_path / "ref"))
    q2.train(max_epochs=1, **QUIET)
    assert q2.get_latent_representation().shape == (60, 5)
    assert q2.prior_settings == scare.prior_settings
    # a query whose genes are not the reference's (all one name, or reordered) is refused
    same_name = query.copy()
    same_name.var_names = ["g"] * same_name.n_vars
    with pytest.raises(ValueError, match="var_names repeat"):
        SCARE.load_query_data(same_name, scare)
    reordered = query[:, ::-1].copy()
    with pytest.raises(ValueError, match="prepare_query_anndata"):
        SCARE.load_query_data(reordered, scare)


def test_scare_save_load_round_trip_with_and_without_adata(scare, tmp_path):
    scare.save(tmp_path / "m", save_anndata=True)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["adata.h5ad", "model.pt"]
    loaded = SCARE.load(tmp_path / "m")  # the saved AnnData
    np.testing.assert_allclose(
        loaded.get_latent_representation(), scare.get_latent_representation(), atol=1e-6
    )
    assert loaded.prior_settings == scare.prior_settings
    assert isinstance(loaded.history["elbo_train"], pd.DataFrame)
    with pytest.raises(ValueError, match="already exists"):
        scare.save(tmp_path / "m")
    scare.save(tmp_path / "m", overwrite=True)
    again = SCARE.load(tmp_path / "m", adata=scare.adata)
    assert again.is_trained
    # onto other genes: refused, naming the first difference
    other = scare.adata[:, ::-1].copy()
    with pytest.raises(ValueError, match="first difference is gene 0"):
        SCARE.load(tmp_path / "m", adata=other)


def test_scare_files_cannot_run_code(scare, tmp_path):
    marker = tmp_path / "attreg_pwned_marker"
    for wrapped, match in ((False, "no attreg header"), (True, "safe load refuses")):
        folder = tmp_path / f"m{wrapped}"
        folder.mkdir()
        data = _malicious_bytes(marker)
        (folder / "model.pt").write_bytes(_with_valid_header(data) if wrapped else data)
        with pytest.raises(ValueError, match=match):
            SCARE.load(folder, adata=scare.adata)
        with pytest.raises(ValueError, match=match):
            SCARE.load_query_data(scare.adata[:10].copy(), str(folder))
        assert not marker.exists()
    # scvi-tools' own pickled file is refused too, with the reason
    plain = tmp_path / "scvi_file"
    scvi.model.SCVI.save(scare, plain)
    with pytest.raises(ValueError, match="could run code"):
        SCARE.load(plain, adata=scare.adata)


def test_prior_config_is_plain_data():
    cfg = PriorConfig(ground_truths={"g": np.array([True, False])},
                      settings=asc.PriorSettings(w_attr=0.0))
    assert not cfg.active


def test_scare_fast_paths_change_speed_not_results(synthetic):
    """oneDNN products, the fast NB derivative, the closed-form encoder gradient, fused
    Adam and per-epoch metric logging (attreg.fast_paths) give the history of scvi-tools'
    own code paths."""
    import attreg
    from attreg_sc.module import FastNegativeBinomial

    histories = {}
    for fast in (True, False):
        with attreg.fast_paths(fast):
            adata = synthetic.copy()
            SCARE.setup_anndata(adata, batch_key="batch")
            scvi.settings.seed = 0
            model = SCARE(adata, gt="is_gt", n_latent=4, dropout_rate=0.0)
            model.train(max_epochs=3, **QUIET)
            histories[fast] = model.history
    # scvi-tools logs the KL weight per step (outside the history); folded, it is per epoch
    assert set(histories[True]) == set(histories[False]) | {"kl_weight"}
    warmup = histories[True]["kl_weight"].to_numpy(float).ravel()
    assert np.all(np.diff(warmup) > 0) and warmup[0] < 1
    for key, frame in histories[False].items():
        np.testing.assert_allclose(
            histories[True][key].to_numpy(float), frame.to_numpy(float), rtol=1e-4, err_msg=key
        )
    # the fast NB log-likelihood equals scvi-tools' in value and gradient
    torch.manual_seed(0)
    x = torch.poisson(torch.rand(16, 50) * 5)
    mu = (torch.rand(16, 50) * 4 + 0.1).requires_grad_()
    theta = (torch.rand(50) * 3 + 0.2).requires_grad_()
    ref = scvi.distributions.NegativeBinomial(mu=mu, theta=theta).log_prob(x).sum()
    fast = FastNegativeBinomial(mu=mu, theta=theta).log_prob(x).sum()
    torch.testing.assert_close(fast, ref)
    grads = torch.autograd.grad(fast, (mu, theta)), torch.autograd.grad(ref, (mu, theta))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_layers,inject", [(1, False), (2, True), (2, False)])
def test_encoder_prefix_is_the_same_function_and_attributions(n_layers, inject):
    import attreg
    from attreg_sc.fast.encoder_prefix import covariate_part, encoder_prefix

    torch.manual_seed(0)
    enc = scvi.nn.Encoder(
        30,
        4,
        n_cat_list=[3, 2],
        n_layers=n_layers,
        n_hidden=16,
        use_batch_norm=False,
        use_layer_norm=True,
        inject_covariates=inject,
        return_dist=True,
    ).eval()
    x = torch.randn(20, 30)
    b, d = torch.randint(0, 3, (20, 1)), torch.randint(0, 2, (20, 1))
    prefix = encoder_prefix(enc, 30, (x, b, d))
    assert prefix is not None
    torch.testing.assert_close(prefix(x, b, d), enc(x, b, d)[0].loc)
    acts = enc.encoder.fc_layers[0][0](
        torch.cat(
            [x, torch.nn.functional.one_hot(b[:, 0], 3), torch.nn.functional.one_hot(d[:, 0], 2)], 1
        )
    )
    acts = acts - covariate_part(enc, 30, b, d)
    draws = {}
    for name, target, kwargs in (
        ("generic", lambda z, *c: enc(z, *c)[0].loc, {}),
        ("prefix", prefix, {"input_activations": acts}),
    ):
        eg = attreg.ExpectedGradients(target, attreg.reducers.Sum())
        draws[name] = eg.attribute(
            x,
            additional_forward_args=(b, d),
            n_samples=2,
            generator=torch.Generator().manual_seed(1),
            **kwargs,
        )
    torch.testing.assert_close(draws["prefix"], draws["generic"], rtol=1e-4, atol=1e-5)
    bn = scvi.nn.Encoder(30, 4, n_cat_list=[3], use_batch_norm=True, return_dist=True)
    assert encoder_prefix(bn, 30, (x, b)) is None  # BatchNorm: the generic path


def test_fssf_and_report_tools_accept_a_zoo_model(synthetic):
    adata = synthetic.copy()
    model_cls = with_prior(scvi.model.SCVI)
    model_cls.setup_anndata(adata, batch_key="batch")
    scvi.settings.seed = 0
    model = model_cls(adata, gt="is_gt", n_latent=4)
    model.train(max_epochs=3, **QUIET)
    gt = adata.var["is_gt"].to_numpy()
    res = asc.metrics.fssf(model, gt, "cell_type", n_random=2, min_cells=50)
    assert len(res.table) > 0 and res.table["score"].between(-1, 1).all()
    assert res.subclusters.index.equals(adata.obs_names)
    res_names = asc.metrics.fssf(model, list(adata.var_names[gt]), "cell_type", n_random=1)
    assert len(res_names.table) == len(res.table)
    # the fast first-layer path and encoding the swapped counts give the same scores
    slow = asc.metrics.fssf(model, gt, "cell_type", n_random=2, min_cells=50, fast=False)
    np.testing.assert_allclose(slow.table["score"], res.table["score"], atol=1e-6)
    # a model whose encoder reads more than counts and a batch is refused, with the reason
    tv_adata = asc.datasets.pbmc_two_runs()
    tv_cls = with_prior(scvi.model.TOTALVI)
    tv_cls.setup_anndata(tv_adata, protein_expression_obsm_key="protein_expression")
    tv = tv_cls(tv_adata, n_latent=3)
    tv.is_trained_ = True
    with pytest.raises(NotImplementedError, match="also reads"):
        asc.metrics.fssf(tv, np.arange(tv_adata.n_vars) < 10, "cell_type", n_random=1)


def test_report_compares_models_and_names_their_figures_apart(synthetic, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    gt = synthetic.var["is_gt"].to_numpy()
    models = {}
    for name, w in (("scARE-1", 30.0), ("scARE_1", 0.0)):  # one slug for both names
        adata = synthetic.copy()
        SCARE.setup_anndata(adata, batch_key="batch")
        scvi.settings.seed = 0
        models[name] = SCARE(adata, gt=gt, n_latent=3, w_attr=w)
        models[name].train(max_epochs=2, **QUIET)
    ev = asc.report.evaluate(models, gt, "cell_type", n_random=2, attribution_samples=2)
    summary = ev.summary()
    assert set(summary.index) == set(models)
    assert np.isfinite(summary.loc["scARE-1", ["gt_attribution_share", "reconstruction"]]).all()
    asc.report.write_report(ev, tmp_path / "rep")
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "umap_scare_1.png" in page and "umap_scare_1-2.png" in page
    assert (tmp_path / "rep" / "umap_scare_1.png").exists()
    assert (tmp_path / "rep" / "umap_scare_1-2.png").exists()


def test_scare_takes_scvi_tools_arguments_in_scvi_tools_order(synthetic):
    adata = synthetic.copy()
    SCARE.setup_anndata(adata, batch_key="batch")
    scvi.settings.seed = 0
    # SCVI(adata, registry, n_hidden, n_latent, n_layers, dropout_rate, dispersion,
    #      gene_likelihood, use_observed_lib_size, ...)
    model = SCARE(adata, None, 32, 3, 1, 0.2, "gene", "zinb", True, gt="is_gt",
                  reducer="per_dimension")
    assert model.module.gene_likelihood == "zinb" and model.module.use_observed_lib_size
    assert model.module.n_hidden == 32 if hasattr(model.module, "n_hidden") else True
    assert model.module.n_latent == 3
    # train(max_epochs, accelerator, devices, train_size, ...)
    model.train(2, "cpu", "auto", 0.8, check_val_every_n_epoch=1, batch_size=64,
                plan_kwargs={"weight_decay": 0.0}, **QUIET)
    assert len(model.validation_indices) == pytest.approx(0.2 * synthetic.n_obs, abs=2)
    assert len(model.history["validation_loss"]) == 2


def test_scarevi_is_a_deprecated_name_of_scare():
    with pytest.warns(DeprecationWarning, match="attreg_sc.SCARE"):
        assert asc.SCAREVI is SCARE
    with pytest.warns(DeprecationWarning, match="deprecated"):
        from attreg_sc.scvi_tools import with_prior as old

    assert old is with_prior
