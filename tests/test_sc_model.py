import copy

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

import attreg_sc as asc
from attreg_sc._io import load_versioned, save_versioned
from attreg_sc.gt import from_groups
from attreg_sc.model import FORMAT_VERSION


@pytest.fixture(scope="module")
def adata():
    return asc.datasets.synthetic(n_cells=1500, n_genes=300, n_gt_genes=30, seed=0)


@pytest.fixture(scope="module")
def trained(adata):
    """Baseline (w_attr=0) and scARE (the paper's sum prior, w_attr=100) on the same data
    and seed (the share of the sum's attributions is what this prior acts on)."""
    gt = adata.var["is_gt"].to_numpy()
    out = {}
    for w in (0.0, 100.0):
        m = asc.SCARE(adata, batch_key="batch", gt=gt, w_attr=w, n_latent=5, reducer="sum")
        m.train(max_epochs=40, early_stopping=False, progress_bar=False)
        out[w] = m
    m = asc.SCARE(adata, batch_key=None, w_attr=0.0, n_latent=5)
    m.train(max_epochs=40, early_stopping=False, progress_bar=False)
    out["no_batch"] = m
    return out


def gt_share(model, adata):
    a = np.abs(model.get_attributions(n_samples=4)).sum(0)
    return float(a[adata.var["is_gt"].to_numpy()].sum() / a.sum())


def test_training_reduces_the_loss(trained):
    h = trained[0.0].history
    assert len(h["loss"]) == 40
    assert h["reconstruction"][-1] < 0.9 * h["reconstruction"][0]
    assert np.isfinite(h["validation_loss"]).all()


def test_prior_moves_encoder_attribution_to_gt_genes(trained, adata):
    """Synthetic data, GT = 10% of genes: baseline share ~0.1, scARE (w_attr=100) ~0.6."""
    base, prior = gt_share(trained[0.0], adata), gt_share(trained[100.0], adata)
    assert base < 0.2
    assert prior > 0.4 and prior > 3 * base
    h = trained[100.0].history
    assert h["attribution"][-1] < h["attribution"][0]
    # the prior costs little reconstruction
    assert h["reconstruction"][-1] < 1.02 * trained[0.0].history["reconstruction"][-1]


def _batch_accuracy(x, batches):
    clf = KNeighborsClassifier(15)
    return cross_val_score(clf, x, batches, cv=3).mean()


def test_baseline_latent_mixes_batches(trained, adata):
    """kNN batch prediction (chance 0.5): ~1.0 on log-normalized counts and in a VAE
    without batch covariate, ~0.83 in the cVAE's latent after 40 epochs."""
    batches = adata.obs["batch"].to_numpy()
    x = adata.X.toarray()
    lognorm = np.log1p(x / x.sum(1, keepdims=True) * 1e4)
    from sklearn.decomposition import PCA

    pcs = PCA(10, random_state=0).fit_transform(lognorm)
    acc_data = _batch_accuracy(pcs, batches)
    acc_latent = _batch_accuracy(trained[0.0].get_latent_representation(), batches)
    acc_no_batch = _batch_accuracy(trained["no_batch"].get_latent_representation(), batches)
    assert acc_data > 0.95 and acc_no_batch > 0.95
    assert acc_latent < acc_no_batch - 0.1


def test_latent_separates_cell_types(trained, adata):
    z = trained[0.0].get_latent_representation()
    acc = cross_val_score(KNeighborsClassifier(15), z, adata.obs["cell_type"], cv=3).mean()
    assert acc > 0.95


def test_save_load_round_trip(trained, adata, tmp_path):
    m = trained[100.0]
    m.save(tmp_path / "run")
    loaded = asc.SCARE.load(tmp_path / "run", adata)
    assert np.array_equal(loaded.get_latent_representation(), m.get_latent_representation())
    assert loaded.history == m.history and loaded.w_attr == 100.0
    assert np.array_equal(loaded.ground_truths["gt"], m.ground_truths["gt"])
    with pytest.raises(FileExistsError, match="overwrite=True"):
        m.save(tmp_path / "run")
    m.save(tmp_path / "run", overwrite=True)
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["model.pt"]  # no temp left


def test_load_errors(trained, adata, tmp_path):
    m = trained[0.0]
    m.save(tmp_path / "ok")
    with pytest.raises(ValueError, match="genes differ"):
        asc.SCARE.load(tmp_path / "ok", adata[:, :-1].copy())
    payload = load_versioned(tmp_path / "ok" / "model.pt", FORMAT_VERSION, "model")
    payload["format_version"] = 0
    (tmp_path / "old").mkdir()
    save_versioned(tmp_path / "old" / "model.pt", payload)
    with pytest.raises(ValueError, match="format version 0"):
        asc.SCARE.load(tmp_path / "old", adata)
    (tmp_path / "bad").mkdir()
    data = (tmp_path / "ok" / "model.pt").read_bytes()
    (tmp_path / "bad" / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt: its checksum"):
        asc.SCARE.load(tmp_path / "bad", adata)
    with pytest.raises(FileNotFoundError):
        asc.SCARE.load(tmp_path / "none", adata)


def test_unknown_batch_at_inference(trained, adata):
    other = adata[:10].copy()
    other.obs["batch"] = other.obs["batch"].astype(str)
    other.obs.iloc[0, other.obs.columns.get_loc("batch")] = "batch9"
    with pytest.raises(ValueError, match="unseen in training: \\['batch9'\\]"):
        trained[0.0].get_latent_representation(other)


def test_new_cells_with_known_batches(trained, adata):
    sub = adata[:50].copy()
    z = trained[0.0].get_latent_representation(sub)
    assert np.allclose(z, trained[0.0].get_latent_representation()[:50], atol=1e-5)


def small(seed=1, **kw):
    return asc.datasets.synthetic(n_cells=200, n_genes=60, n_gt_genes=10, seed=seed, **kw)


def test_sparse_dense_and_csc_give_identical_results():
    a = small()
    dense = a.copy()
    dense.X = a.X.toarray()
    csc = a.copy()
    csc.X = sp.csc_matrix(a.X)
    latents = []
    for data in (a, dense, csc):
        m = asc.SCARE(data, batch_key="batch", gt=data.var["is_gt"].to_numpy(), n_latent=3)
        m.train(max_epochs=3, progress_bar=False)
        latents.append(m.get_latent_representation())
    assert np.array_equal(latents[0], latents[1]) and np.array_equal(latents[0], latents[2])


def test_same_seed_same_latent_and_input_untouched():
    a = small()
    before = a.copy()
    runs = []
    for _ in range(2):
        m = asc.SCARE(a, batch_key="batch", gt=a.var["is_gt"].to_numpy(), n_latent=3, seed=7)
        m.train(max_epochs=3, progress_bar=False)
        runs.append(m.get_latent_representation())
    assert np.array_equal(runs[0], runs[1])
    assert (a.X != before.X).nnz == 0
    assert a.obs.equals(before.obs) and a.var.equals(before.var)
    assert list(a.uns) == list(before.uns) and list(a.obsm) == list(before.obsm)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"likelihood": "zinb"},
        {"dispersion": "gene-batch"},
        {"dispersion": "gene-cell"},
        {"use_observed_library": True},
        {"normalize_input": True},
        {"target": "model"},
        {"attribution": "ig", "n_steps": 4},
        {"n_layers": 2, "reparameterizer": "sigmoid", "loss": "mae"},
    ],
)
def test_options_train_with_finite_losses(kwargs):
    a = small()
    m = asc.SCARE(a, batch_key="batch", gt=a.var["is_gt"].to_numpy(), n_latent=3, **kwargs)
    m.train(max_epochs=3, progress_bar=False)
    for key in ("loss", "reconstruction", "kl", "attribution"):
        assert np.isfinite(m.history[key]).all(), key
    assert m.history["attribution"][0] > 0


def test_grouped_cell_and_multiple_ground_truths():
    a = small()
    genes = list(a.var_names)
    grouped = from_groups(a, "cell_type", {"type0": genes[:5], "type1": genes[5:10]})
    cell = np.zeros(a.shape, dtype=bool)
    cell[:, 20:25] = True
    m = asc.SCARE(
        a,
        batch_key="batch",
        gt={"vector": genes[:10], "grouped": grouped, "cell": cell},
        gt_weights={"cell": 0.5},
        aggregation="squared_sum",
        n_latent=3,
    )
    m.train(max_epochs=2, progress_bar=False)
    assert set(m.priors_by_gt) == {"vector", "grouped", "cell"}
    assert m.priors_by_gt["cell"].weight == 0.5
    assert np.isfinite(m.history["attribution"]).all()


def test_any_string_is_a_gt_name():
    """GT names are not module names: dots, reserved words and spaces all work."""
    a = small()
    genes = list(a.var_names)
    names = ["mapk.v2", "train", "float", "HALLMARK X 2023"]
    m = asc.SCARE(a, gt={n: genes[i : i + 5] for i, n in enumerate(names)}, n_latent=2)
    m.train(max_epochs=1, progress_bar=False)
    assert list(m.priors_by_gt) == names


def test_post_hoc_attributions(trained, adata):
    a = trained[0.0].get_attributions(method="ig", n_steps=5, batch_size=500)
    assert a.shape == adata.shape and np.isfinite(a).all()


def test_plain_cvae_without_gt():
    a = small()
    m = asc.SCARE(a, batch_key="batch", n_latent=3)
    assert m.priors is None
    m.train(max_epochs=2, progress_bar=False)
    assert all(v == 0 for v in m.history["attribution"])


def bad(kind):
    a = small(seed=2)
    if kind == "nan":
        a.X = a.X.toarray()
        a.X[0, 0] = np.nan
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
    return a


@pytest.mark.parametrize(
    "kind, kwargs, exc, match",
    [
        ("nan", {}, ValueError, "NaN or infinite"),
        ("negative", {}, ValueError, "negative values"),
        ("non_integer", {}, ValueError, "non-integer values"),
        ("zero_cell", {}, ValueError, "1 cell\\(s\\) have zero counts"),
        ("empty", {}, ValueError, "AnnData is empty"),
        ("one_cell", {}, ValueError, "at least two cells"),
        ("one_gene", {}, ValueError, "two\\s+genes"),
        (None, {"gt": np.array(["a"] * 60)}, ValueError, "0 of 1 genes found"),
        ("batch_nan", {}, ValueError, "missing value"),
        (None, {"layer": "counts"}, KeyError, "layer 'counts' not found"),
        (None, {"batch_key": "sample"}, KeyError, "batch_key 'sample' not found"),
        (None, {"gt": ["NOPE1", "NOPE2"]}, ValueError, "0 of 2 genes found"),
        (None, {"gt": np.zeros(60, dtype=bool)}, ValueError, "selects no gene"),
        (None, {"gt": np.ones(60, dtype=bool)}, ValueError, "selects every gene"),
        (None, {"gt": np.ones(59, dtype=bool)}, ValueError, "has 59 entries"),
        (None, {"gt": np.full(60, 0.5)}, ValueError, "must be binary"),
        (None, {"gt": np.ones((3, 60), dtype=bool)}, ValueError, "expected \\(n_cells, n_genes\\)"),
        (None, {"w_attr": -1.0}, ValueError, "w_attr must be a finite number >= 0"),
        (None, {"dispersion": "gene-type"}, ValueError, "unknown dispersion"),
        (None, {"gt_weights": {"x": 1.0}, "gt": ["gene0"]}, KeyError, "gt_weights names"),
    ],
)
def test_bad_input_raises_before_training_and_leaves_adata_untouched(kind, kwargs, exc, match):
    a = bad(kind)
    before = copy.deepcopy(a)
    kwargs = {"batch_key": "batch", **kwargs}
    with pytest.raises(exc, match=match):
        asc.SCARE(a, **kwargs)
    xa = a.X.toarray() if sp.issparse(a.X) else a.X
    xb = before.X.toarray() if sp.issparse(before.X) else before.X
    assert np.array_equal(xa, xb, equal_nan=True)
    assert a.obs.equals(before.obs)


def test_non_integer_allowed_on_request():
    a = bad("non_integer")
    m = asc.SCARE(a, batch_key="batch", allow_non_integer=True, n_latent=2)
    m.train(max_epochs=1, progress_bar=False)
    assert np.isfinite(m.history["loss"]).all()


def test_layer_is_used(adata):
    a = small()
    a.layers["counts"] = a.X.copy()
    a.X = sp.csr_matrix(np.log1p(a.X.toarray()))  # normalized data in X
    with pytest.raises(ValueError, match="non-integer"):
        asc.SCARE(a, batch_key="batch")
    m = asc.SCARE(a, layer="counts", batch_key="batch", n_latent=2)
    m.train(max_epochs=1, progress_bar=False)
    assert m.get_latent_representation().shape == (200, 2)


def test_float16_counts_accepted():
    a = small()
    a.X = a.X.toarray().astype(np.float16)
    m = asc.SCARE(a, batch_key="batch", n_latent=2)
    m.train(max_epochs=1, progress_bar=False)
    assert np.isfinite(m.history["loss"]).all()


def test_one_batch_category_trains_without_covariate():
    a = small()
    m = asc.SCARE(a, n_latent=2)
    assert m.module.n_batches == 1 and m.module.encoder.body.covariate is None
    m.train(max_epochs=1, progress_bar=False)


def test_anndata_object_not_required_to_be_copied(adata):
    assert isinstance(adata, ad.AnnData)


def test_early_stopping_rule():
    from attreg_sc.train.trainer import EarlyStopping

    es = EarlyStopping(patience=3)
    # steadily improving: never stops (regression: the first value used to compare to inf)
    assert not any(es.step(v) for v in np.linspace(100, 50, 30))
    es = EarlyStopping(patience=3)
    stops = [es.step(v) for v in [5.0, 4.0, 4.0, 4.1, 4.0]]
    assert stops == [False, False, False, False, True] and es.best == 4.0 and es.best_step == 1


def test_early_stopping_restores_best_weights():
    a = small(seed=5)
    m = asc.SCARE(a, batch_key="batch", n_latent=2)
    m.train(max_epochs=300, kl_warmup_epochs=1, patience=2, lr=3e-2, progress_bar=False)
    h = m.history["validation_loss"]
    assert len(h) < 300  # stopped
    best = int(np.argmin(h))
    assert len(h) == best + 3  # the best epoch, then `patience` epochs without improvement
    from attreg_sc.train.trainer import TrainingPlan, _split, _validation_loss

    _, val_idx = _split(a.n_obs, 0.1, np.random.default_rng(m.seed))
    codes = torch.from_numpy(m.data.batch_codes)
    restored, _ = _validation_loss(m.module, m.data, val_idx, codes, TrainingPlan(), "cpu")
    assert restored == pytest.approx(h[best], rel=1e-5)


def test_non_finite_loss_stops_with_step_and_term_and_keeps_last_good_weights():
    a = small(seed=6)

    class NaNAfterFirstEpoch(torch.nn.Module):
        calls = 0

        def forward(self, attr):
            NaNAfterFirstEpoch.calls += 1
            out = attr.abs() / (attr.abs().amax(1, keepdim=True) + 1e-12)
            return out * float("nan") if NaNAfterFirstEpoch.calls > 3 else out

    m = asc.SCARE(
        a,
        batch_key="batch",
        gt=a.var["is_gt"].to_numpy(),
        n_latent=2,
        reparameterizer=NaNAfterFirstEpoch(),
    )
    m.train(max_epochs=1, batch_size=64, progress_bar=False)  # 3 steps: fine
    good = {k: v.clone() for k, v in m.module.state_dict().items()}
    with pytest.raises(
        asc.NonFiniteLossError, match=r"L_A \(attribution\) became nan at epoch 0, step 0"
    ):
        m.train(max_epochs=1, batch_size=64, progress_bar=False)
    for k, v in m.module.state_dict().items():
        assert torch.equal(v, good[k]), k


def test_grad_clip_trains():
    a = small()
    m = asc.SCARE(a, batch_key="batch", gt=a.var["is_gt"].to_numpy(), n_latent=2)
    m.train(max_epochs=2, grad_clip=1.0, progress_bar=False)
    assert np.isfinite(m.history["loss"]).all()


def test_backed_anndata_streams_rows_and_matches_in_memory(tmp_path):
    a = small(seed=8)
    a.write_h5ad(tmp_path / "a.h5ad")
    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    latents = []
    for data in (a, backed):
        m = asc.SCARE(data, batch_key="batch", gt=data.var["is_gt"].to_numpy(), n_latent=2)
        m.train(max_epochs=2, progress_bar=False)
        latents.append(m.get_latent_representation())
    assert not sp.issparse(m.data.matrix) and not isinstance(m.data.matrix, np.ndarray)
    assert np.array_equal(latents[0], latents[1])


def test_backed_csc_and_duplicated_genes_are_refused(tmp_path):
    a = small(seed=8)
    a.X = sp.csc_matrix(a.X)
    a.write_h5ad(tmp_path / "c.h5ad")
    with pytest.raises(ValueError, match="cannot stream rows; rewrite it as CSR"):
        asc.SCARE(ad.read_h5ad(tmp_path / "c.h5ad", backed="r"), n_latent=2)
    b = small(seed=8)
    names = list(b.var_names)
    names[1] = names[0]
    b.var_names = names
    with pytest.raises(ValueError, match="1 duplicated gene name.*var_names_make_unique"):
        asc.SCARE(b, n_latent=2)


def test_all_zero_genes_are_accepted():
    """Genes with no counts are harmless (the decoder learns tiny proportions)."""
    a = small(seed=9)
    x = a.X.toarray()
    x[:, :3] = 0
    a.X = sp.csr_matrix(x)
    m = asc.SCARE(a, batch_key="batch", gt=a.var["is_gt"].to_numpy(), n_latent=2)
    m.train(max_epochs=2, progress_bar=False)
    assert np.isfinite(m.history["loss"]).all()


def test_make_optimizer_fuses_adam_where_it_can():
    from attreg_sc.train.trainer import TrainingPlan, make_optimizer

    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(2))]
    plan = TrainingPlan(lr=0.01, weight_decay=0.1)
    opt = make_optimizer(params, plan)
    assert opt.defaults["fused"] is True
    assert opt.defaults["lr"] == 0.01 and opt.defaults["weight_decay"] == 0.1
    assert not make_optimizer(params, plan, fused=False).defaults["fused"]
    # the fused step equals the per-tensor loop's (same update, float rounding only)
    grads = [torch.randn_like(p) for p in params]
    results = []
    for fused in (True, False):
        ps = [torch.nn.Parameter(p.detach().clone()) for p in params]
        o = make_optimizer(ps, plan, fused=fused)
        for _ in range(3):
            for p, g in zip(ps, grads, strict=True):
                p.grad = g.clone()
            o.step()
        results.append(ps)
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_covariate_codes_equal_the_one_hot_product():
    """Layers look the batch covariate up by code; the one-hot product gives the same
    values and the same weight gradients (to second order, as the prior needs)."""
    from attreg_sc.nn.layers import FCLayers

    torch.manual_seed(0)
    layer = FCLayers(7, 5, n_cat=3, dropout=0.0).double()
    x = torch.randn(6, 7, dtype=torch.float64, requires_grad=True)
    codes = torch.tensor([0, 2, 1, 2, 0, 1])
    one_hot = torch.nn.functional.one_hot(codes, 3).double()

    def second_order(cat):
        out = layer(x, cat)
        (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        return out, torch.autograd.grad(gx.square().sum(), layer.covariate.weight)[0]

    (out_codes, g_codes), (out_hot, g_hot) = second_order(codes), second_order(one_hot)
    assert torch.allclose(out_codes, out_hot, atol=1e-12)
    assert torch.allclose(g_codes, g_hot, atol=1e-12) and g_codes.abs().sum() > 0
    with pytest.raises(IndexError):
        layer(x, torch.tensor([0, 1, 2, 3, 0, 1]))  # a code beyond the covariate width


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_keeps_units_with_probability_one_minus_p(p):
    from attreg_sc.nn.layers import Dropout

    torch.manual_seed(0)
    layer = Dropout(p)
    x = torch.rand(400, 500, requires_grad=True)
    y = layer(x)
    kept = y != 0
    # 200,000 Bernoulli(1 - p) draws: the rate is within 5 standard errors of 1 - p
    assert abs(float(kept.float().mean()) - (1 - p)) < 5 * (p * (1 - p) / kept.numel()) ** 0.5
    assert torch.allclose(y[kept], x[kept] / (1 - p))
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(g, kept.float() / (1 - p))  # the gradient is the scaled mask
    layer.eval()
    assert torch.equal(layer(x), x)
    assert torch.equal(Dropout(1.0)(x), torch.zeros_like(x))
