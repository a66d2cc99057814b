"""A hypothesis fuzzer over the AnnData a user hands to the model: shapes, dtypes, values,
sparse formats and broken sparse structures, gene and cell names, batch columns.

Axiom: ``SCARE.setup_anndata`` either refuses the data with attreg_sc's own error
(:class:`attreg_sc.validation.InvalidDataError`, naming the problem) before scvi-tools or
scipy reads it, leaving the AnnData as it was, or accepts it, and then a model trains on
it with finite losses and a finite latent. Never a crash, a hang, a raw library error or
a silent train on nonsense. A bounded run is in the default suite; ``-m slow`` runs a long
one.
"""

import copy

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attreg_sc as asc
from attreg_sc.validation import InvalidDataError

CORRUPTIONS = [
    "none", "nan", "inf", "negative", "fraction", "zero_cell", "huge",
    "index_out_of_range", "negative_index", "indptr_decreasing", "indptr_short",
    "indptr_end", "float_indices", "duplicate_genes", "one_name", "batch_nan",
    "strings", "bool", "int64", "float16", "complex",
]  # fmt: skip
BAD = {
    "nan", "inf", "negative", "fraction", "zero_cell", "index_out_of_range",
    "negative_index", "indptr_decreasing", "indptr_short", "indptr_end", "float_indices",
    "duplicate_genes", "one_name", "batch_nan", "strings", "complex",
}  # fmt: skip
SPARSE_ONLY = {"index_out_of_range", "negative_index", "indptr_decreasing", "indptr_short",
               "indptr_end", "float_indices"}


def _build(counts, corruption, fmt, n_batches, rng):
    counts = counts.copy()
    counts[:, 0] += 1  # every cell has counts unless corrupted below
    i, j = int(rng.integers(0, counts.shape[0])), int(rng.integers(0, counts.shape[1]))
    values = {"nan": np.nan, "inf": np.inf, "negative": -1.0, "fraction": 0.5, "huge": 1e7}
    if corruption in values:
        counts[i, j] = values[corruption]
    elif corruption == "zero_cell":
        counts[i] = 0
    x = counts
    if corruption in ("strings", "bool", "int64", "float16", "complex"):
        x = counts.astype({"strings": str, "bool": bool, "int64": np.int64,
                           "float16": np.float16, "complex": np.complex64}[corruption])
        if corruption == "bool":  # keep every cell non-empty
            x[:, 0] = True
    elif fmt != "dense" or corruption in SPARSE_ONLY:
        x = sp.csr_matrix(counts) if fmt != "csc" else sp.csc_matrix(counts)
        x.indices = x.indices.copy()
        x.indptr = x.indptr.copy()
        k = min(i, len(x.indices) - 1)
        if corruption == "index_out_of_range":
            x.indices[k] = max(x.shape) + 3
        elif corruption == "negative_index":
            x.indices[k] = -2
        elif corruption == "indptr_decreasing" and len(x.indptr) > 2:
            x.indptr[1] = x.indptr[-1] + 1
        elif corruption == "indptr_short":
            x.indptr = x.indptr[:-1]
        elif corruption == "indptr_end":
            x.indptr[-1] += 1
        elif corruption == "float_indices":
            x.indices = x.indices.astype(np.float64)
    batches = pd.Categorical([f"b{k % n_batches}" for k in range(counts.shape[0])])
    obs = pd.DataFrame({"batch": batches}, index=[f"c{k}" for k in range(len(counts))])
    if corruption == "batch_nan":
        obs["batch"] = obs["batch"].astype(object)
        obs.iloc[0, 0] = np.nan
    adata = ad.AnnData(x, obs=obs)  # anndata keeps a broken structure as given
    names = [f"g{k}" for k in range(counts.shape[1])]
    if corruption == "duplicate_genes":
        names[-1] = names[0]
    elif corruption == "one_name":
        names = ["g"] * len(names)
    adata.var_names = names
    return adata


def _snapshot(adata):
    x = adata.X
    parts = (x.data, x.indices, x.indptr) if sp.issparse(x) else (np.asarray(x),)
    return [copy.deepcopy(p) for p in parts], adata.obs.copy(), list(adata.uns)


def _same(a, b) -> bool:
    (xa, oa, ua), (xb, ob, ub) = a, b
    same_x = all(
        p.shape == q.shape and np.array_equal(p, q, equal_nan=p.dtype.kind in "fc")
        for p, q in zip(xa, xb, strict=True)
    )
    return same_x and oa.equals(ob) and ua == ub


def check_one(counts, corruption, fmt, n_batches, seed):
    import scvi

    rng = np.random.default_rng(seed)
    adata = _build(counts, corruption, fmt, n_batches, rng)
    before = _snapshot(adata)
    try:
        asc.SCARE.setup_anndata(adata, batch_key="batch")
    except InvalidDataError as err:
        assert str(err), corruption
        assert corruption in BAD, (corruption, err)
        assert _same(_snapshot(adata), before), "refused data was modified"
        return "refused"
    assert corruption not in BAD, f"{corruption} was accepted"
    scvi.settings.seed = seed
    m = asc.SCARE(adata, n_latent=2, n_hidden=8)
    m.train(max_epochs=1, batch_size=max(2, adata.n_obs), train_size=1.0,
            enable_progress_bar=False, threads=1)
    assert np.isfinite(m.history["train_loss"].to_numpy(float)).all(), corruption
    assert np.isfinite(m.get_latent_representation()).all(), corruption
    return "trained"


_counts = st.integers(2, 10).flatmap(
    lambda n: st.integers(2, 7).flatmap(
        lambda g: st.lists(
            st.lists(st.integers(0, 30), min_size=g, max_size=g), min_size=n, max_size=n
        ).map(lambda rows: np.asarray(rows, dtype=np.float32))
    )
)
_case = dict(
    counts=_counts,
    corruption=st.sampled_from(CORRUPTIONS),
    fmt=st.sampled_from(["dense", "csr", "csc"]),
    n_batches=st.integers(1, 3),
    seed=st.integers(0, 1000),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**_case)
def test_fuzzed_anndata_is_refused_untouched_or_trains(counts, corruption, fmt, n_batches, seed):
    check_one(counts, corruption, fmt, n_batches, seed)


@pytest.mark.slow
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**_case)
def test_fuzzed_anndata_long_run(counts, corruption, fmt, n_batches, seed):
    check_one(counts, corruption, fmt, n_batches, seed)


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_every_corruption_is_handled(corruption):
    """Each kind at least once, whatever hypothesis draws."""
    counts = np.arange(24, dtype=np.float32).reshape(6, 4) % 7
    fmt = "csr" if corruption in SPARSE_ONLY else "dense"
    outcome = check_one(counts, corruption, fmt, 2, 0)
    assert outcome == ("refused" if corruption in BAD else "trained")
