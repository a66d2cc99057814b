import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import attreg_sc as asc
from attreg_sc.metrics import (
    attribution_share,
    fssf,
    fssf_from_encoder,
    gt_polarization,
    integration_metrics,
    label_separation,
)

GT = np.array([True, True, False, False])


def two_state_data(n=40, gt_level=(10, 0), other_level=(0, 0), seed=0):
    """Subcluster A and B; GT genes 0-1, other genes 2-3 at the given levels."""
    rng = np.random.default_rng(seed)
    x = np.zeros((2 * n, 4), dtype=np.float32)
    x[:n, :2], x[n:, :2] = gt_level[0], gt_level[1]
    x[:n, 2:], x[n:, 2:] = other_level[0], other_level[1]
    x += rng.integers(0, 2, x.shape)
    sub = np.array(["A"] * n + ["B"] * n, dtype=object)
    return x, sub


def enc_gt(x, b):
    return np.stack([x[:, :2].sum(1), np.zeros(len(x))], 1)


def enc_other(x, b):
    return np.stack([x[:, 2:].sum(1), np.zeros(len(x))], 1)


def test_fssf_is_one_when_gt_genes_alone_decide():
    x, sub = two_state_data(gt_level=(10, 0), other_level=(5, 0))
    r = fssf_from_encoder(enc_gt, x, GT, np.array(["T"] * len(x)), sub, n_random=5)
    assert r.table["score"].tolist() == [1.0]
    assert r.table.loc[0, "n_t"] == len(x)
    assert r.table.loc[0, "random_mean"] == -1.0  # random non-GT genes carry the other info


def test_fssf_is_minus_one_when_gt_genes_are_irrelevant():
    x, sub = two_state_data(gt_level=(10, 0), other_level=(5, 0))
    r = fssf_from_encoder(enc_other, x, GT, np.array(["T"] * len(x)), sub, n_random=5)
    assert r.table["score"].tolist() == [-1.0]


def test_fssf_is_zero_when_swaps_land_in_neither_subcluster():
    """Latent (GT total, other total): A=(hi, hi), B=(lo, lo); swapped cells land in the
    mixed subclusters C=(lo, hi) and D=(hi, lo), so n_g = n_o = 0."""
    n = 30
    blocks = {"A": (10, 10), "B": (0, 0), "C": (0, 10), "D": (10, 0)}
    x = np.concatenate(
        [np.tile(np.array([g, g, o, o], np.float32), (n, 1)) for g, o in blocks.values()]
    )
    sub = np.repeat(list(blocks), n).astype(object)

    def enc(c, b):
        return np.stack([c[:, :2].sum(1), c[:, 2:].sum(1)], 1)

    r = fssf_from_encoder(enc, x, GT, np.array(["T"] * len(x)), sub, n_random=0)
    ab = r.table[(r.table.subcluster_a == "A") & (r.table.subcluster_b == "B")].iloc[0]
    assert ab.n_g == 0 and ab.n_o == 0 and ab.score == 0.0
    assert len(r.table) == 6  # all pairs of 4 subclusters


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 1000), w=st.floats(-1, 1))
def test_fssf_in_range_and_control_size(seed, w):
    rng = np.random.default_rng(seed)
    x = rng.poisson(3, (60, 10)).astype(np.float32)
    sub = rng.choice(["A", "B", "C"], 60).astype(object)
    gt = np.zeros(10, bool)
    gt[:3] = True

    def enc(c, b):
        return np.stack([c[:, :3].sum(1) + w * c[:, 3:].sum(1), c[:, 5]], 1)

    r = fssf_from_encoder(enc, x, gt, np.array(["T"] * 60), sub, n_random=7, seed=seed)
    assert ((r.table.score >= -1) & (r.table.score <= 1)).all()
    assert ((r.table.n_g + r.table.n_o) <= r.table.n_t).all()
    assert len(r.random_scores) == 7 * len(r.table)
    assert r.random_scores.score.between(-1, 1).all()
    again = fssf_from_encoder(enc, x, gt, np.array(["T"] * 60), sub, n_random=7, seed=seed)
    assert again.random_scores.equals(r.random_scores) and again.table.equals(r.table)


def test_fssf_errors():
    x, sub = two_state_data()
    with pytest.raises(ValueError, match="some but not all"):
        fssf_from_encoder(enc_gt, x, np.ones(4, bool), np.array(["T"] * len(x)), sub)
    with pytest.raises(ValueError, match="expected \\(4,\\)"):
        fssf_from_encoder(enc_gt, x, np.ones(3, bool), np.array(["T"] * len(x)), sub)


@pytest.fixture(scope="module")
def model():
    adata = asc.datasets.synthetic(n_cells=600, n_genes=100, n_gt_genes=10, seed=4)
    asc.SCARE.setup_anndata(adata, batch_key="batch")
    m = asc.SCARE(adata, gt=adata.var["is_gt"].to_numpy(), n_latent=4)
    m.train(max_epochs=15, enable_progress_bar=False)
    return m


def test_model_fssf_fast_path_equals_encoding_swapped_counts(model):
    gt = model.adata.var["is_gt"].to_numpy()
    fast = fssf(model, gt, "cell_type", n_random=5, min_cells=50)
    slow = fssf(model, gt, "cell_type", n_random=5, min_cells=50, fast=False)
    assert len(fast.table) > 0
    # the counts and scores are equal; how far cells move is equal up to float rounding
    exact = fast.table.drop(columns="move_median")
    assert exact.equals(slow.table.drop(columns="move_median"))
    np.testing.assert_allclose(fast.table.move_median, slow.table.move_median, atol=1e-4)
    assert set(fast.subclusters.index) == set(model.adata.obs_names)
    assert fast.summary().shape[0] == fast.table.cell_type.nunique()


def test_model_fssf_skips_small_types_and_reports(model):
    gt = model.adata.var["is_gt"].to_numpy()
    r = fssf(model, gt, "cell_type", n_random=2, min_cells=10_000)
    assert r.table.empty and set(r.skipped) == set(model.adata.obs["cell_type"].astype(str))
    with pytest.raises(KeyError, match="cell_type_key"):
        fssf(model, gt, "nope")


def test_attribution_share_and_polarization():
    attr = np.array([[1.0, 1, 2], [0, 0, 0]])
    s = attribution_share(attr, np.array([True, True, False]), groups=["a", "b"])
    assert s.share.tolist() == [0.5, 0.0] and s.group.tolist() == ["a", "b"]
    rng = np.random.default_rng(0)
    gt_total = rng.poisson(5, 200)
    counts = sp.csr_matrix(np.stack([gt_total, rng.poisson(5, 200) + 50], 1).astype(float))
    lib = np.asarray(counts.sum(1)).ravel()
    pol = np.log1p(gt_total / lib * 1e4)  # the GT-total the metric uses
    latent_pol = np.stack([pol + rng.normal(0, 0.05, 200), rng.normal(0, 0.01, 200)], 1)
    latent_rand = rng.normal(size=(200, 2))
    types = np.array(["T"] * 200)
    hi = gt_polarization(latent_pol, counts, np.array([True, False]), types)
    lo = gt_polarization(latent_rand, counts, np.array([True, False]), types)
    assert hi.abs_corr_pc1.iloc[0] > 0.9 and lo.abs_corr_pc1.iloc[0] < 0.3


def test_label_separation_and_integration_metrics():
    rng = np.random.default_rng(0)
    labels = np.repeat(["t0", "t1"], 100)
    types = np.array(["T"] * 200)
    apart = rng.normal(size=(200, 2)) + (labels == "t1")[:, None] * 10
    mixed = rng.normal(size=(200, 2))
    sep_a = label_separation(apart, labels, types).iloc[0]
    sep_m = label_separation(mixed, labels, types).iloc[0]
    assert sep_a.knn_purity > 0.99 and sep_a.silhouette > 0.8
    assert abs(sep_m.purity_over_chance) < 0.1
    batches = np.tile(["b0", "b1"], 100)
    good = integration_metrics(apart, batches, labels)
    bad = integration_metrics(apart + (batches == "b1")[:, None] * 30, batches, labels)
    assert good["knn_batch_mixing"] > 0.9 and bad["knn_batch_mixing"] < 0.1
    assert good["silhouette_batch"] > bad["silhouette_batch"]
    assert good["silhouette_label"] > 0.8 and good["graph_connectivity"] == 1.0


def test_neighbour_metrics_use_the_nearest_other_cells():
    """k = 1 sees exactly the nearest other cell (not itself, not the second nearest)."""
    # Two pairs of cells 100 apart; each cell's nearest other cell shares its label, its
    # second nearest does not.
    latent = np.array([[0.0], [1.0], [100.0], [101.0]])
    labels = np.array(["x", "x", "y", "y"])
    sep = label_separation(latent, labels, np.array(["T"] * 4), k=1, min_cells=2).iloc[0]
    assert sep.knn_purity == 1.0
    # Triples: each cell's two nearest others are the other two batches -> mixing 1.
    latent = np.array([[0.0], [1.0], [2.0], [100.0], [101.0], [102.0]])
    batches = np.array(["a", "b", "c", "a", "b", "c"])
    m = integration_metrics(latent, batches, np.array(["x"] * 3 + ["y"] * 3), k=2)
    assert m["knn_batch_mixing"] < 1.0  # each cell sees 2 of 3 batches: entropy log 2
    assert m["knn_batch_mixing"] == pytest.approx(np.log(2) / np.log(3))


def test_integration_metrics_accept_labels_smaller_than_k():
    """A cell type with fewer cells than k (a rare type in a small real set) is scored."""
    rng = np.random.default_rng(1)
    latent = rng.normal(size=(60, 3))
    labels = np.array(["big"] * 55 + ["rare"] * 5)
    batches = np.tile(["b0", "b1"], 30)
    m = integration_metrics(latent, batches, labels, k=15)
    assert all(np.isfinite(v) for v in m.values())
    assert 0.0 <= m["graph_connectivity"] <= 1.0


def test_scib_metrics_missing_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "scib_metrics", None)  # as if not installed
    z = np.zeros((10, 2))
    with pytest.raises(ImportError, match=r"pip install -e '\.\[scib\]'"):
        asc.metrics.scib_integration_metrics(z, np.zeros(10), np.zeros(10))


def test_scib_metrics_score_mixed_batches_above_separated_ones():
    pytest.importorskip("scib_metrics")
    rng = np.random.default_rng(0)
    z = rng.normal(size=(200, 5))
    z[:100] += 4  # two well separated cell types
    labels = np.repeat(["a", "b"], 100)
    batches = np.tile(["x", "y"], 100)
    mixed = asc.metrics.scib_integration_metrics(z, batches, labels, n_neighbors=30)
    shifted = z.copy()
    shifted[batches == "x"] += 6  # the batches pulled apart within each type
    apart = asc.metrics.scib_integration_metrics(shifted, batches, labels, n_neighbors=30)
    assert mixed["batch_correction"] > apart["batch_correction"] + 0.3
    assert mixed["bio_conservation"] > 0.8
    assert mixed["total"] == pytest.approx(
        0.6 * mixed["bio_conservation"] + 0.4 * mixed["batch_correction"]
    )
