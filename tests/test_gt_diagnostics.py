"""Gene-set diagnostics before training: per-gene statistics (dense, sparse, backed
alike, equal to a direct computation), verdicts, and the warning a model gives for a set
too small to steer."""

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import attreg_sc as asc
from attreg_sc.gt_diagnostics import MIN_EXPRESSED, MIN_VARIABLE, diagnose, gene_statistics


def _reference(x: np.ndarray) -> pd.DataFrame:
    lib = x.sum(1, keepdims=True)
    logged = np.log1p(np.divide(x * 1e4, lib, out=np.zeros_like(x), where=lib > 0))
    return pd.DataFrame({"detected": (x > 0).mean(0), "variance": logged.var(0)})


@pytest.fixture(scope="module")
def counts():
    rng = np.random.default_rng(0)
    x = rng.poisson(rng.gamma(0.5, 2.0, size=(1, 60)), size=(250, 60)).astype(np.float64)
    x[7] = 0  # an empty cell
    return x


@pytest.mark.parametrize("kind", ["dense", "csr", "csc", "backed"])
def test_gene_statistics_equal_a_direct_computation(counts, kind, tmp_path):
    ref = _reference(counts)
    if kind == "dense":
        m = counts
    elif kind == "csr":
        m = sp.csr_matrix(counts)
    elif kind == "csc":
        m = sp.csc_matrix(counts)
    else:
        path = tmp_path / "x.h5ad"
        ad.AnnData(sp.csr_matrix(counts.astype(np.float32))).write_h5ad(path)
        m = ad.read_h5ad(path, backed="r").X
    got = gene_statistics(m, chunk=64)  # several chunks
    np.testing.assert_allclose(got["detected"], ref["detected"])
    np.testing.assert_allclose(got["variance"], ref["variance"], rtol=1e-6, atol=1e-9)


def test_verdicts_follow_the_counts_of_expressed_and_variable_genes(caplog):
    n = 200
    detected = np.r_[np.ones(150), np.zeros(50)]  # genes 150.. never detected
    variance = np.r_[np.linspace(0, 1, 150), np.zeros(50)]  # median of expressed: 0.5
    stats = pd.DataFrame({"detected": detected, "variance": variance})
    gts = {
        "ok": np.r_[np.zeros(100, bool), np.ones(50, bool), np.zeros(50, bool)],
        "small": np.r_[np.ones(MIN_EXPRESSED - 1, bool), np.zeros(n - MIN_EXPRESSED + 1, bool)],
        "unexpressed": np.r_[np.zeros(150, bool), np.ones(50, bool)],
        "flat": np.r_[np.ones(40, bool), np.zeros(n - 40, bool)],  # low variance only
    }
    with caplog.at_level(logging.WARNING, logger="attreg_sc.gt_diagnostics"):
        table = diagnose(None, gts, statistics=stats)
    assert table.loc["ok"].tolist() == [50, 50, 50, "ok"]
    assert table.loc["small", "verdict"] == "too small"
    assert table.loc["unexpressed"].tolist() == [50, 0, 0, "too small"]
    assert table.loc["flat"].tolist() == [40, 40, 0, "too flat"]
    assert 0 < MIN_VARIABLE
    text = caplog.text
    assert "GT 'small' may be too small" in text and f"fewer than {MIN_EXPRESSED}" in text
    assert "GT 'flat' may be too flat" in text and "0 of its 40 expressed genes" in text
    assert "'ok'" not in text


def test_a_model_with_a_small_gene_set_says_so_before_training(caplog):
    adata = asc.datasets.synthetic(n_cells=300, n_genes=120, n_gt_genes=40, seed=0)
    asc.SCARE.setup_anndata(adata)
    few = list(adata.var_names[adata.var["is_gt"].to_numpy()][:8])
    with caplog.at_level(logging.WARNING, logger="attreg_sc.gt_diagnostics"):
        m = asc.SCARE(adata, gt={"few": few, "planted": "is_gt"}, n_latent=3)
    assert "GT 'few' may be too small" in caplog.text
    assert m.gt_diagnostics_.loc["few", "genes"] == 8
    assert m.gt_diagnostics_.loc["planted", "verdict"] == "ok"
    assert not m.is_trained  # all of it before training


def test_diagnose_refuses_a_mask_of_the_wrong_length():
    stats = pd.DataFrame({"detected": np.ones(5), "variance": np.ones(5)})
    with pytest.raises(ValueError, match="GT 'x' has 4 entries; the data has 5 genes"):
        diagnose(None, {"x": np.ones(4, bool)}, statistics=stats)
    with pytest.raises(ValueError, match="min_cell_fraction must be in"):
        diagnose(None, {"x": np.ones(5, bool)}, statistics=stats, min_cell_fraction=1.5)
