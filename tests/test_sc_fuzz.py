"""Hypothesis fuzz over AnnData shapes and contents: bad data never trains and is never
modified; good data trains."""

import anndata as ad
import hypothesis.extra.numpy as hnp
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import attreg_sc as asc

CORRUPTIONS = ["none", "nan", "inf", "negative", "fraction", "zero_cell"]
MESSAGES = {
    "nan": "NaN or infinite",
    "inf": "NaN or infinite",
    "negative": "negative values",
    "fraction": "non-integer values",
    "zero_cell": "zero counts",
}


@settings(max_examples=25, deadline=None)
@given(
    counts=hnp.arrays(
        np.float32,
        st.tuples(st.integers(2, 12), st.integers(2, 8)),
        elements=st.integers(0, 50).map(float),
    ),
    corruption=st.sampled_from(CORRUPTIONS),
    sparse=st.booleans(),
    n_batches=st.integers(1, 3),
    seed=st.integers(0, 1000),
)
def test_fuzzed_anndata(counts, corruption, sparse, n_batches, seed):
    rng = np.random.default_rng(seed)
    counts = counts.copy()
    counts[:, 0] += 1  # every cell has counts unless corrupted below
    i, j = rng.integers(0, counts.shape[0]), rng.integers(0, counts.shape[1])
    if corruption == "nan":
        counts[i, j] = np.nan
    elif corruption == "inf":
        counts[i, j] = np.inf
    elif corruption == "negative":
        counts[i, j] = -1
    elif corruption == "fraction":
        counts[i, j] = 0.5
    elif corruption == "zero_cell":
        counts[i] = 0
    x = sp.csr_matrix(counts) if sparse else counts
    batches = pd.Categorical([f"b{k % n_batches}" for k in range(counts.shape[0])])
    adata = ad.AnnData(
        x, obs=pd.DataFrame({"batch": batches}, index=[f"c{k}" for k in range(len(counts))])
    )
    adata.var_names = [f"g{k}" for k in range(counts.shape[1])]
    before = counts.copy()
    if corruption == "none":
        m = asc.SCARE(adata, batch_key="batch", n_latent=2, n_hidden=8)
        m.train(max_epochs=1, batch_size=4, progress_bar=False, validation_fraction=0.0)
        assert np.isfinite(m.get_latent_representation()).all()
    else:
        with pytest.raises(ValueError, match=MESSAGES[corruption]):
            asc.SCARE(adata, batch_key="batch", n_latent=2, n_hidden=8)
    after = adata.X.toarray() if sparse else adata.X
    assert np.array_equal(after, before, equal_nan=True)
