"""Sparse counts with broken structure fail before scipy or training touches them (a
broken CSR used to crash the interpreter or train on counts in the wrong genes)."""

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import attreg_sc as asc
from attreg_sc.validation import check_sparse_structure


def _counts(fmt="csr"):
    rng = np.random.default_rng(0)
    x = rng.poisson(2.0, (30, 12)).astype(np.float32)
    x[:, 0] += 1
    return sp.csr_matrix(x) if fmt == "csr" else sp.csc_matrix(x)


def _break(m, how):
    m = m.copy()
    if how == "index_too_large":
        m.indices[5] = m.shape[1] + 3 if m.format == "csr" else m.shape[0] + 3
    elif how == "index_negative":
        m.indices = m.indices.astype(np.int64)
        m.indices[2] = -1
    elif how == "indptr_decreasing":
        m.indptr[3], m.indptr[4] = m.indptr[4], m.indptr[3]
    elif how == "indptr_end":
        m.indptr[-1] -= 1
    elif how == "indptr_start":
        m.indptr[0] = 1
    return m


HOW = ["index_too_large", "index_negative", "indptr_decreasing", "indptr_end", "indptr_start"]


@pytest.mark.parametrize("fmt", ["csr", "csc"])
@pytest.mark.parametrize("how", HOW)
def test_broken_structure_is_refused_in_memory_before_training(fmt, how):
    good = _counts(fmt)
    check_sparse_structure(good)  # a valid matrix passes
    bad = _break(good, how)
    adata = ad.AnnData(bad)
    before = (bad.indptr.copy(), bad.indices.copy(), bad.data.copy())
    with pytest.raises(ValueError, match="sparse counts' (indices|indptr)"):
        asc.SCARE.setup_anndata(adata)
    after = (bad.indptr, bad.indices, bad.data)
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_flipped_index_bytes_in_a_backed_file_are_refused(tmp_path):
    path = tmp_path / "cells.h5ad"
    ad.AnnData(_counts("csr")).write_h5ad(path)
    import h5py

    with h5py.File(path, "r+") as f:
        idx = f["X"]["indices"]
        idx[7] = 10_000  # a flipped high byte
    backed = ad.read_h5ad(path, backed="r")
    with pytest.raises(ValueError, match="indices point outside the matrix"):
        asc.SCARE.setup_anndata(backed)
    backed.file.close()


def test_backed_csc_counts_are_refused_with_the_conversion(tmp_path):
    # a backed CSC matrix cannot stream rows: each minibatch would read every gene's column
    ad.AnnData(_counts("csc")).write_h5ad(tmp_path / "csc.h5ad")
    backed = ad.read_h5ad(tmp_path / "csc.h5ad", backed="r")
    with pytest.raises(ValueError, match=r"CSC.*tocsr\(\)"):
        asc.SCARE.setup_anndata(backed)
    ad.AnnData(_counts("csr")).write_h5ad(tmp_path / "csr.h5ad")
    asc.SCARE.setup_anndata(ad.read_h5ad(tmp_path / "csr.h5ad", backed="r"))  # CSR streams
