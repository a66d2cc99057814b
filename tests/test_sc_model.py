"""attreg_sc.SCARE, the one model: scARE on scvi-tools (training, the prior, its options,
the data checks before anything reads the counts, early stopping, non-finite losses)."""

import copy
import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scvi
import torch
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

import attreg_sc as asc
from attreg_sc.gt import from_groups

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
QUIET = {"enable_progress_bar": False}


def curve(model, key: str) -> np.ndarray:
    return model.history[key].to_numpy(dtype=float).ravel()


def set_up(a, **kwargs):
    asc.SCARE.setup_anndata(a, **kwargs)
    return a


@pytest.fixture(scope="module")
def adata():
    return asc.datasets.synthetic(n_cells=1500, n_genes=300, n_gt_genes=30, seed=0)


@pytest.fixture(scope="module")
def trained(adata):
    """Baseline (w_attr=0) and scARE (the paper's sum prior, w_attr=100) on the same data
    and seed (the share of the sum's attributions is what this prior acts on), and a VAE
    without the batch covariate."""
    out = {}
    for w in (0.0, 100.0):
        a = set_up(adata.copy(), batch_key="batch")
        scvi.settings.seed = 0
        m = asc.SCARE(a, gt="is_gt", w_attr=w, n_latent=5, reducer="sum")
        m.train(max_epochs=40, early_stopping=False, **QUIET)
        out[w] = m
    a = set_up(adata.copy())
    scvi.settings.seed = 0
    m = asc.SCARE(a, n_latent=5, encode_covariates=False)
    m.train(max_epochs=40, early_stopping=False, **QUIET)
    out["no_batch"] = m
    return out


def gt_share(model, mask) -> float:
    a = np.abs(model.get_attributions(n_samples=4)).sum(0)
    return float(a[mask].sum() / a.sum())


def test_scare_is_the_scvi_tools_model(trained):
    m = trained[100.0]
    assert isinstance(m, scvi.model.SCVI)
    assert isinstance(m, scvi.model.base.BaseModelClass)
    assert isinstance(m.module, asc.SCAREVAE) and isinstance(m.module, scvi.module.VAE)
    enc = m.module.z_encoder.encoder
    layers = [x for x in enc.fc_layers[0] if x is not None]
    kinds = (torch.nn.Linear, torch.nn.LayerNorm, torch.nn.ReLU, torch.nn.Dropout)
    assert len(layers) == 4 and all(isinstance(x, k) for x, k in zip(layers, kinds, strict=True))
    assert m.module.gene_likelihood == "nb" and not m.module.use_observed_lib_size
    assert m.module.encode_covariates  # the batch enters the encoder
    assert not hasattr(m.module.decoder.px_dropout_decoder, "weight")  # no unused head


def test_training_reduces_the_loss(trained):
    m = trained[0.0]
    rec = curve(m, "reconstruction_loss_train")
    assert len(rec) == 40 and rec[-1] < 0.9 * rec[0]
    assert np.isfinite(curve(m, "validation_loss")).all()
    assert set(m.loss_history) >= {"loss", "reconstruction", "kl", "validation_loss"}


def test_prior_moves_encoder_attribution_to_gt_genes(trained, adata):
    """Synthetic data, GT = 10% of genes: baseline share ~0.1, scARE (w_attr=100) ~0.6."""
    mask = adata.var["is_gt"].to_numpy()
    base, prior = gt_share(trained[0.0], mask), gt_share(trained[100.0], mask)
    assert base < 0.2
    assert prior > 0.4 and prior > 3 * base
    att = curve(trained[100.0], "attribution_loss_train")
    assert att[-1] < att[0]
    # the prior costs little reconstruction
    rec = curve(trained[100.0], "reconstruction_loss_train")[-1]
    assert rec < 1.03 * curve(trained[0.0], "reconstruction_loss_train")[-1]


def _batch_accuracy(x, batches):
    return cross_val_score(KNeighborsClassifier(15), x, batches, cv=3).mean()


def test_baseline_latent_mixes_batches(trained, adata):
    """kNN batch prediction (chance 0.5): ~1.0 on log-normalized counts and in a VAE
    without the batch covariate, lower in the cVAE's latent."""
    from sklearn.decomposition import PCA

    batches = adata.obs["batch"].to_numpy()
    x = adata.X.toarray()
    pcs = PCA(10, random_state=0).fit_transform(np.log1p(x / x.sum(1, keepdims=True) * 1e4))
    acc_data = _batch_accuracy(pcs, batches)
    acc_latent = _batch_accuracy(trained[0.0].get_latent_representation(), batches)
    acc_no_batch = _batch_accuracy(trained["no_batch"].get_latent_representation(), batches)
    assert acc_data > 0.95 and acc_no_batch > 0.95
    assert acc_latent < acc_no_batch - 0.1


def test_latent_separates_cell_types(trained, adata):
    z = trained[0.0].get_latent_representation()
    acc = cross_val_score(KNeighborsClassifier(15), z, adata.obs["cell_type"], cv=3).mean()
    assert acc > 0.95


def test_new_cells_with_known_and_unknown_batches(trained, adata):
    m = trained[0.0]
    sub = adata[:50].copy()
    z = m.get_latent_representation(sub)
    assert np.allclose(z, m.get_latent_representation()[:50], atol=1e-5)
    other = adata[:10].copy()
    other.obs["batch"] = other.obs["batch"].astype(str)
    other.obs.iloc[0, other.obs.columns.get_loc("batch")] = "batch9"
    with pytest.raises(ValueError, match="batch9"):
        m.get_latent_representation(other)


def test_post_hoc_attributions(trained, adata):
    m = trained[0.0]
    a = m.get_attributions(method="ig", n_steps=5, batch_size=500)
    assert a.shape == adata.shape and np.isfinite(a).all()
    one = m.get_attributions(reducer=0, n_samples=2)
    assert one.shape == adata.shape and not np.allclose(one, 0)


def small(seed=1, **kw):
    return asc.datasets.synthetic(n_cells=200, n_genes=60, n_gt_genes=10, seed=seed, **kw)


def _latent_after(a, **train):
    set_up(a, batch_key="batch")
    scvi.settings.seed = 3
    m = asc.SCARE(a, gt="is_gt", n_latent=3)
    m.train(max_epochs=3, threads=1, **QUIET, **train)
    return m.get_latent_representation()


def test_sparse_dense_and_csc_give_identical_results():
    a = small()
    dense, csc = a.copy(), a.copy()
    dense.X = a.X.toarray()
    csc.X = sp.csc_matrix(a.X)
    z = [_latent_after(x) for x in (a, dense, csc)]
    assert np.allclose(z[0], z[1], atol=1e-6) and np.allclose(z[0], z[2], atol=1e-6)


def test_same_seed_same_latent_and_counts_untouched():
    a = small()
    before = a.copy()
    runs = [_latent_after(a.copy()) for _ in range(2)]
    assert np.array_equal(runs[0], runs[1])
    set_up(a, batch_key="batch")  # scvi-tools' setup adds its columns, nothing else changes
    assert (a.X != before.X).nnz == 0
    assert a.var.equals(before.var)
    assert a.obs[list(before.obs)].equals(before.obs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"gene_likelihood": "zinb"},
        {"dispersion": "gene-batch"},
        {"dispersion": "gene-cell"},
        {"use_observed_lib_size": True},
        {"normalize_input": True},
        {"normalize_input": True, "use_observed_lib_size": True},
        {"w_reconstruction": 0.5},
        {"target": "model"},
        {"attribution": "ig", "n_steps": 4},
        {"n_layers": 2, "reparameterizer": "sigmoid", "loss": "mae"},
        {"reducer": "per_dimension"},
        {"reducer": "sum", "reparameterizer": "abs_minmax", "loss": "mse"},
    ],
)
def test_options_train_with_finite_losses(kwargs):
    a = set_up(small(), batch_key="batch")
    m = asc.SCARE(a, gt="is_gt", n_latent=3, **kwargs)
    m.train(max_epochs=3, **QUIET)
    for key in ("train_loss", "reconstruction_loss_train", "kl_local_train",
                "attribution_loss_train"):
        assert np.isfinite(curve(m, key)).all(), key
    assert curve(m, "attribution_loss_train")[0] > 0


def test_module_options_do_what_they_say():
    """normalize_input: the encoders read log1p(counts / library * 1e4); w_reconstruction
    scales the reconstruction term of the loss."""
    a = set_up(small(), batch_key="batch")
    plain = asc.SCARE(a, n_latent=3)
    normalized = asc.SCARE(a, n_latent=3, normalize_input=True)
    normalized.module.load_state_dict(plain.module.state_dict())
    tensors = next(iter(plain._make_data_loader(a, batch_size=16)))
    x = tensors["X"]
    seen = []
    encoder = normalized.module.z_encoder
    hook = encoder.register_forward_hook(lambda m, args, o: seen.append(args[0]))
    normalized.module.inference(**normalized.module._get_inference_input(tensors))
    hook.remove()
    assert torch.allclose(seen[0], torch.log1p(x / x.sum(1, keepdim=True) * 1e4), atol=1e-5)
    weighted = asc.SCARE(a, n_latent=3, w_reconstruction=0.25)
    weighted.module.load_state_dict(plain.module.state_dict())
    for m in (plain, weighted):
        m.module.eval()
    torch.manual_seed(0)
    _, _, out1 = plain.module(tensors)
    torch.manual_seed(0)
    _, _, out2 = weighted.module(tensors)
    rec = out1.reconstruction_loss["reconstruction_loss"].mean()
    assert torch.allclose(out2.loss, out1.loss - 0.75 * rec, rtol=1e-5)


def test_grouped_cell_and_multiple_ground_truths():
    a = set_up(small(), batch_key="batch")
    genes = list(a.var_names)
    grouped = from_groups(a, "cell_type", {"type0": genes[:5], "type1": genes[5:10]})
    cell = np.zeros(a.shape, dtype=bool)
    cell[:, 20:25] = True
    m = asc.SCARE(
        a,
        gt={"vector": genes[:10], "grouped": grouped, "cell": cell},
        gt_weights={"cell": 0.5},
        aggregation="squared_sum",
        n_latent=3,
    )
    m.train(max_epochs=2, **QUIET)
    assert list(m.prior_config.ground_truths) == ["vector", "grouped", "cell"]
    assert m.prior_settings.gt_weights == {"cell": 0.5}
    assert np.isfinite(curve(m, "attribution_loss_train")).all()


def test_any_string_is_a_gt_name():
    """GT names are not module names: dots, reserved words and spaces all work."""
    a = set_up(small())
    genes = list(a.var_names)
    names = ["mapk.v2", "train", "float", "HALLMARK X 2023"]
    m = asc.SCARE(a, gt={n: genes[i : i + 5] for i, n in enumerate(names)}, n_latent=2)
    m.train(max_epochs=1, **QUIET)
    assert list(m.prior_config.ground_truths) == names


def test_plain_vae_without_gt_and_a_zero_weight():
    a = set_up(small(), batch_key="batch")
    for m in (asc.SCARE(a, n_latent=3), asc.SCARE(a, n_latent=3, gt="is_gt", w_attr=0.0)):
        assert m.prior_config is None or not m.prior_config.active
        m.train(max_epochs=2, **QUIET)
        assert "attribution_loss_train" not in m.history


def test_settings_are_one_object_with_one_set_of_checks():
    a = set_up(small())
    s = asc.PriorSettings(w_attr=7.0, reducer="sum")
    m = asc.SCARE(a, gt="is_gt", prior=s, n_directions=2)
    assert m.prior_settings == s.replace(n_directions=2)
    m.set_prior("is_gt", w_attr=3.0)
    assert m.prior_settings.w_attr == 3.0 and m.prior_settings.reducer == "sum"
    with pytest.raises(ValueError, match="w_attr must be a finite number"):
        asc.SCARE(a, gt="is_gt", w_attr=float("nan"))
    with pytest.raises(TypeError, match="unknown prior setting"):
        m.set_prior("is_gt", w_atr=3.0)


def bad(kind):
    a = small(seed=2)
    if kind == "nan":
        a.X = a.X.toarray()
        a.X[0, 0] = np.nan
    elif kind == "inf":
        a.X = a.X.toarray()
        a.X[0, 0] = np.inf
    elif kind == "negative":
        a.X = a.X.toarray()
        a.X[0, 0] = -1
    elif kind == "non_integer":
        a.X = a.X.toarray()
        a.X[0, 0] = 0.5
    elif kind == "zero_cell":
        a.X = a.X.toarray()
        a.X[3] = 0
    elif kind == "empty":
        a = a[:0].copy()
    elif kind == "one_cell":
        a = a[:1].copy()
    elif kind == "one_gene":
        a = a[:, :1].copy()
        a = a[np.asarray(a.X.sum(1)).ravel() > 0].copy()
    elif kind == "batch_nan":
        a.obs["batch"] = a.obs["batch"].astype(object)
        a.obs.iloc[0, a.obs.columns.get_loc("batch")] = np.nan
    elif kind == "duplicated_genes":
        names = list(a.var_names)
        names[1] = names[0]
        a.var_names = names
    elif kind == "index_out_of_range":
        a.X.indices[5] = 10**6
    elif kind == "negative_index":
        a.X.indices[5] = -3
    elif kind == "decreasing_indptr":
        a.X.indptr[5] = a.X.indptr[6] + 1
    elif kind == "strings":
        a.X = a.X.toarray().astype(str)
    return a


@pytest.mark.parametrize(
    "kind, setup, exc, match",
    [
        ("nan", {}, ValueError, "NaN or infinite"),
        ("inf", {}, ValueError, "NaN or infinite"),
        ("negative", {}, ValueError, "negative values"),
        ("non_integer", {}, ValueError, "non-integer values"),
        ("zero_cell", {}, ValueError, "1 cell\\(s\\) have zero counts"),
        ("empty", {}, ValueError, "at least two cells"),
        ("one_cell", {}, ValueError, "at least two cells"),
        ("one_gene", {}, ValueError, "two\\s+genes"),
        ("batch_nan", {}, ValueError, "missing value"),
        ("duplicated_genes", {}, ValueError, "1 duplicated gene name.*var_names_make_unique"),
        ("index_out_of_range", {}, ValueError, "indices point outside the matrix"),
        ("negative_index", {}, ValueError, "indices point outside the matrix"),
        ("decreasing_indptr", {}, ValueError, "indptr does not start at 0 and rise"),
        ("strings", {}, TypeError, "numeric"),
        (None, {"layer": "counts"}, KeyError, "layer 'counts' not found"),
        (None, {"batch_key": "sample"}, KeyError, "'sample' is not a column of adata.obs"),
        (None, {"labels_key": "nope"}, KeyError, "'nope' is not a column"),
    ],
)
def test_bad_data_is_refused_before_scvi_tools_reads_it(kind, setup, exc, match):
    a = bad(kind)
    before = copy.deepcopy(a)
    with pytest.raises(exc, match=match):
        asc.SCARE.setup_anndata(a, **{"batch_key": "batch", **setup})
    assert "_scvi_uuid" not in a.uns  # nothing registered, nothing written
    assert a.obs.equals(before.obs) and list(a.obs) == list(before.obs)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"gt": np.array(["a"] * 60)}, ValueError, "0 of 1 genes found"),
        ({"gt": ["NOPE1", "NOPE2"]}, ValueError, "0 of 2 genes found"),
        ({"gt": np.zeros(60, dtype=bool)}, ValueError, "selects no gene"),
        ({"gt": np.ones(60, dtype=bool)}, ValueError, "selects every gene"),
        ({"gt": np.ones(59, dtype=bool)}, ValueError, "has 59 entries"),
        ({"gt": np.full(60, 0.5)}, ValueError, "must be binary"),
        ({"gt": np.ones((3, 60), dtype=bool)}, ValueError, "expected \\(n_cells, n_genes\\)"),
        ({"gt": ["gene0"], "w_attr": -1.0}, ValueError, "w_attr must be a finite number >= 0"),
        ({"dispersion": "gene-type"}, ValueError, "dispersion"),
        ({"gt": ["gene0"], "gt_weights": {"x": 1.0}}, KeyError, "gt_weights names"),
        ({"gt": ["gene0"], "latent_blocks": {"x": 2}}, KeyError, "latent_blocks names"),
        ({"gt": ["gene0"], "reducer": "median"}, ValueError, "unknown reducer"),
        ({"batch_key": "batch"}, TypeError, "setup_anndata\\(adata, batch_key=...\\)"),
        ({"dropout": 0.2}, TypeError, "dropout_rate="),
        ({"w_reconstruction": 0.0}, ValueError, "w_reconstruction must be"),
    ],
)
def test_bad_settings_raise_before_training(kwargs, exc, match):
    a = set_up(small(seed=2), batch_key="batch")
    with pytest.raises(exc, match=match):
        asc.SCARE(a, **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr": 0.1}, "plan_kwargs=\\{'lr': ...\\}"),
        ({"patience": 3}, "early_stopping_patience="),
        ({"progress_bar": False}, "enable_progress_bar="),
        ({"threads": 0}, "threads must be"),
        ({"prior_warmup_epochs": -1}, "prior_warmup_epochs must be"),
        ({"checkpoint_every": 0}, "checkpoint_every must be"),
    ],
)
def test_bad_train_arguments_name_the_fix(kwargs, match):
    a = set_up(small(seed=2), batch_key="batch")
    m = asc.SCARE(a, gt="is_gt", n_latent=2)
    with pytest.raises((TypeError, ValueError), match=match):
        m.train(max_epochs=1, checkpoint_path=None, **kwargs)
    assert not m.is_trained


def test_non_integer_allowed_on_request_and_remembered(tmp_path):
    a = bad("non_integer")
    asc.SCARE.setup_anndata(a, batch_key="batch", allow_non_integer=True)
    m = asc.SCARE(a, n_latent=2)
    m.train(max_epochs=1, **QUIET)
    m.save(tmp_path / "m")
    assert asc.SCARE.load(tmp_path / "m", bad("non_integer")).is_trained


def test_layer_is_used():
    a = small()
    a.layers["counts"] = a.X.copy()
    a.X = sp.csr_matrix(np.log1p(a.X.toarray()))  # normalized data in X
    with pytest.raises(ValueError, match="non-integer"):
        asc.SCARE.setup_anndata(a, batch_key="batch")
    asc.SCARE.setup_anndata(a, layer="counts", batch_key="batch")
    m = asc.SCARE(a, n_latent=2)
    m.train(max_epochs=1, **QUIET)
    assert m.get_latent_representation().shape == (200, 2)


def test_float16_counts_and_all_zero_genes_are_accepted():
    a = small()
    x = a.X.toarray()
    x[:, :3] = 0
    a.X = x.astype(np.float16)
    set_up(a, batch_key="batch")
    m = asc.SCARE(a, gt="is_gt", n_latent=2)
    m.train(max_epochs=1, **QUIET)
    assert np.isfinite(curve(m, "train_loss")).all()


def test_train_size_one_trains_without_validation_or_early_stopping():
    """scvi-tools' train(train_size=1.0): no validation set, so scARE's default early
    stopping is off (asking for it explicitly is refused with the reason)."""
    a = set_up(small(), batch_key="batch")
    m = asc.SCARE(a, gt="is_gt", n_latent=2)
    m.train(max_epochs=2, train_size=1.0, **QUIET)
    assert len(curve(m, "train_loss")) == 2 and "validation_loss" not in m.history
    with pytest.raises(ValueError, match="no validation cells"):
        m.train(max_epochs=2, train_size=1.0, early_stopping=True, **QUIET)


def test_early_stopping_keeps_the_best_weights():
    a = set_up(small(seed=5), batch_key="batch")
    scvi.settings.seed = 0
    m = asc.SCARE(a, n_latent=2)
    m.train(max_epochs=300, early_stopping_patience=2, early_stopping_warmup_epochs=0,
            plan_kwargs={"lr": 3e-2, "n_epochs_kl_warmup": 1}, **QUIET)
    h = curve(m, "validation_loss")
    assert len(h) < 300  # stopped
    best = int(np.argmin(h))
    assert len(h) == best + 3  # the best epoch, then `patience` epochs without improvement
    m.module.eval()
    restored = -m.get_elbo(indices=m.validation_indices)  # negative ELBO of the kept weights
    assert float(restored) == pytest.approx(float(curve(m, "elbo_validation")[best]), rel=0.05)


def test_prior_warmup_trains_plain_first():
    a = set_up(small(), batch_key="batch")
    m = asc.SCARE(a, gt="is_gt", n_latent=2)
    m.train(max_epochs=4, prior_warmup_epochs=2, **QUIET)
    att = curve(m, "attribution_loss_train")
    assert np.all(att[:2] == 0) and np.all(att[2:] > 0)


def test_non_finite_loss_stops_with_step_and_term_and_keeps_last_good_weights(monkeypatch):
    a = set_up(small(seed=6), batch_key="batch")
    m = asc.SCARE(a, gt="is_gt", n_latent=2)
    m.train(max_epochs=1, batch_size=64, train_size=1.0, **QUIET)  # 3 steps: fine
    good = {k: v.clone() for k, v in m.module.state_dict().items()}
    from attreg_sc.train import plan as P

    original = P.AttributionPriorPlanMixin._attribution_loss
    calls = {"n": 0}

    def poisoned(self, tensors):
        calls["n"] += 1
        out = original(self, tensors)
        return out * float("nan") if calls["n"] == 2 else out

    monkeypatch.setattr(P.AttributionPriorPlanMixin, "_attribution_loss", poisoned)
    with pytest.raises(
        asc.NonFiniteLossError, match=r"L_A \(attribution\) became nan at epoch 0, step 1"
    ):
        m.train(max_epochs=1, batch_size=64, train_size=1.0, **QUIET)
    for k, v in m.module.state_dict().items():
        assert torch.equal(v, good[k]), k


def test_gradient_clipping_trains():
    a = set_up(small(), batch_key="batch")
    m = asc.SCARE(a, gt="is_gt", n_latent=2)
    m.train(max_epochs=2, gradient_clip_val=1.0, **QUIET)
    assert np.isfinite(curve(m, "train_loss")).all()


def test_backed_anndata_streams_rows_and_trains_like_in_memory(tmp_path):
    """A backed AnnData is read minibatch by minibatch (scvi-tools sorts each minibatch's
    rows for h5py, so the cells of a step are the same and their order is not)."""
    a = small(seed=8)
    a.write_h5ad(tmp_path / "a.h5ad")
    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    models = []
    for data in (a, backed):
        set_up(data, batch_key="batch")
        scvi.settings.seed = 3
        m = asc.SCARE(data, gt="is_gt", n_latent=3)
        m.train(max_epochs=12, threads=1, **QUIET)
        models.append(m)
    registered = models[1]._data_for(backed).matrix
    assert not sp.issparse(registered) and not isinstance(registered, np.ndarray)
    losses = [curve(m, "reconstruction_loss_validation")[-1] for m in models]
    assert losses[1] == pytest.approx(losses[0], rel=0.1)
    cells = [next(iter(m._make_data_loader(m.adata, indices=np.arange(10, 30))))["X"]
             for m in models]
    assert torch.equal(cells[0], cells[1])


def test_backed_training_reads_rows_without_the_chunk_cache_and_restores_the_file(tmp_path):
    """With the fast paths on, training reads a backed CSR file through a handle without
    HDF5's chunk cache (a whole chunk per random row otherwise); anndata's own handle (same
    file, same mode) is back afterwards, and every minibatch equals the cached read's."""
    import lightning.pytorch as pl

    import attreg

    a = small(seed=8)
    a.write_h5ad(tmp_path / "a.h5ad")

    def cache(backed):
        return backed.file._file.id.get_access_plist().get_cache()[2]

    class Spy(pl.Callback):
        def __init__(self, backed):
            self.backed, self.seen, self.batches = backed, set(), []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.seen.add(cache(self.backed))
            self.batches.append(batch["X"].clone())

    batches, seen = {}, {}
    for fast in (True, False):
        backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
        default = cache(backed)
        assert default > 0
        set_up(backed, batch_key="batch")
        scvi.settings.seed = 3
        m = asc.SCARE(backed, gt="is_gt", n_latent=3)
        spy = Spy(backed)
        with attreg.fast_paths(fast):
            m.train(max_epochs=1, batch_size=32, threads=1, callbacks=[spy], **QUIET)
        seen[fast] = spy.seen
        assert backed.file.is_open and cache(backed) == default
        assert backed.file._filemode == "r"
        np.testing.assert_array_equal(backed.X[:5].toarray(), a.X[:5].toarray())
        batches[fast] = spy.batches
        backed.file.close()
    assert seen == {True: {0}, False: {default}}
    assert len(batches[True]) == len(batches[False]) > 1
    for ours, theirs in zip(batches[True], batches[False], strict=True):
        assert torch.equal(ours, theirs)


def test_one_batch_trains_without_covariate():
    a = set_up(small())
    m = asc.SCARE(a, n_latent=2)
    assert m.summary_stats.n_batch == 1
    m.train(max_epochs=1, **QUIET)
    assert np.isfinite(m.get_latent_representation()).all()


def test_history_is_scvi_tools_history_with_the_prior(trained):
    h = trained[100.0].history
    assert isinstance(h["attribution_loss_train"], pd.DataFrame)
    assert {"elbo_train", "elbo_validation", "validation_loss", "kl_weight"} <= set(h)


@pytest.mark.parametrize("how", ["first", "again", "loaded", "query", "zoo"])
def test_every_fit_trains_with_dropout_on(tmp_path, how):
    """scvi-tools leaves the module in evaluation mode after ``train()``, ``load`` and
    ``load_query_data``, and Lightning (>= 2.2) keeps the mode a fit finds: without the
    plan's ``on_fit_start`` a second fit trained with dropout off. Every training step of
    every fit runs the dropout layers in training mode, with no eval-mode warning."""
    import warnings

    a = set_up(asc.datasets.synthetic(n_cells=200, n_genes=40, n_gt_genes=8, seed=3),
               batch_key="batch")
    fit = {"max_epochs": 1, "batch_size": 64, "train_size": 1.0, **QUIET}
    scvi.settings.seed = 0
    if how == "zoo":  # a scvi-tools model with the prior: the same plan mixin
        a = a.copy()
        zoo = asc.with_prior(scvi.model.SCVI)
        zoo.setup_anndata(a, batch_key="batch")
        model = zoo(a, n_latent=3)
        model.set_prior(a.var["is_gt"].to_numpy())
    else:
        model = asc.SCARE(a, gt="is_gt", n_latent=3)
    if how != "first":
        model.train(**fit)
        assert not model.module.training  # as scvi-tools leaves it
    if how == "loaded":
        model.save(tmp_path / "m")
        model = asc.SCARE.load(tmp_path / "m", adata=a)
    elif how == "query":
        query = a[:80].copy()
        query.obs["batch"] = pd.Categorical(["new_run"] * 80)
        asc.SCARE.prepare_query_anndata(query, model)
        model = asc.SCARE.load_query_data(query, model)
    modes = []
    dropouts = [m for m in model.module.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(m.p > 0 for m in dropouts)
    # the module's forward runs once per training step (no validation set here)
    hook = model.module.register_forward_pre_hook(
        lambda *_: modes.append(all(m.training for m in dropouts))
    )
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        model.train(**fit)
    hook.remove()
    assert len(modes) == -(-model.adata.n_obs // 64)  # one forward per minibatch
    assert all(modes), f"{modes.count(False)} of {len(modes)} steps with dropout in eval mode"
    assert not [w for w in seen if "eval mode" in str(w.message)]
    assert not model.module.training  # evaluation mode afterwards, as scvi-tools sets it
