"""AnnData access for scARE: validation before training and sparse minibatches.

The count matrix is never densified as a whole: minibatches of rows are sliced from
the (CSR) matrix and densified on the fly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from attreg.transfer import to_device

__all__ = [
    "CountData",
    "check_sparse_structure",
    "validate_counts",
    "get_counts_matrix",
    "row_totals",
]

logger = logging.getLogger(__name__)


def get_counts_matrix(adata, layer: str | None):
    """``adata.X`` or ``adata.layers[layer]``, with a clear error for a missing layer.

    Parameters
    ----------
    adata
        The AnnData.
    layer
        Layer with raw counts (``None``: ``X``).
    """
    if layer is None:
        if adata.X is None:
            raise ValueError("adata.X is empty; pass layer= naming the layer with raw counts.")
        return adata.X
    if layer not in adata.layers:
        raise KeyError(
            f"layer {layer!r} not found in adata.layers (available: {list(adata.layers)}); "
            "pass layer=None to use adata.X or the name of the raw-count layer."
        )
    return adata.layers[layer]


def _row_blocks(matrix, chunk: int = 10_000):
    """Consecutive blocks of rows (read from disk for a backed matrix)."""
    for start in range(0, matrix.shape[0], chunk):
        yield matrix[start : start + chunk]


def _values(block) -> np.ndarray:
    return np.asarray(block.data) if sp.issparse(block) else np.asarray(block)


def row_totals(matrix, chunk: int = 10_000) -> np.ndarray:
    """Per-row sums; backed matrices are read in chunks of rows.

    Parameters
    ----------
    matrix
        Counts (dense or sparse).
    chunk
        Rows summed at a time.
    """
    if sp.issparse(matrix) or isinstance(matrix, np.ndarray):
        return np.asarray(matrix.sum(axis=1)).ravel()
    return np.concatenate([np.asarray(b.sum(axis=1)).ravel() for b in _row_blocks(matrix, chunk)])


def check_sparse_structure(matrix, chunk: int = 10_000_000) -> None:
    """Raise ``ValueError`` for a CSR/CSC matrix whose structure is broken: ``indptr`` of
    the wrong length, not starting at 0, decreasing, or not ending at the number of
    stored values; ``indices`` out of range. Such a matrix crashes scipy (a segmentation
    fault) or silently puts counts in the wrong genes. Vectorized; ``indices`` are read in
    chunks, so a backed (on-disk) matrix is checked in one pass without loading it.

    Parameters
    ----------
    matrix
        A scipy sparse matrix.
    chunk
        Entries checked at a time.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> m = sp.csr_matrix(np.eye(3))
    >>> m.indices[1] = 7  # points beyond the last gene
    >>> check_sparse_structure(m)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: the sparse counts' indices point outside the matrix (7 is not in 0..2): ...
    """
    fmt = getattr(matrix, "format", None)
    if fmt not in ("csr", "csc"):
        return
    group = getattr(matrix, "group", None)  # anndata's backed sparse dataset
    if group is not None:
        indptr, indices, data = group["indptr"], group["indices"], group["data"]
    else:
        indptr, indices, data = matrix.indptr, matrix.indices, matrix.data
    n_major, n_minor = matrix.shape if fmt == "csr" else matrix.shape[::-1]
    what = "rows" if fmt == "csr" else "columns"
    fix = "the file is corrupt or was built with the wrong shape. Rebuild the matrix "
    fix += "(e.g. from the source counts)."
    ptr = np.asarray(indptr[:])
    if ptr.shape != (n_major + 1,):
        raise ValueError(
            f"the sparse counts' indptr has {ptr.size} entries for {n_major} {what} "
            f"(expected {n_major + 1}): {fix}"
        )
    if ptr[0] != 0 or (np.diff(ptr) < 0).any():
        raise ValueError(f"the sparse counts' indptr does not start at 0 and rise: {fix}")
    nnz = int(ptr[-1])
    if nnz != len(indices) or nnz != len(data):
        raise ValueError(
            f"the sparse counts' indptr ends at {nnz} but {len(indices)} indices and "
            f"{len(data)} values are stored: {fix}"
        )
    for start in range(0, nnz, chunk):
        block = np.asarray(indices[start : start + chunk])
        if block.size and (block.min() < 0 or block.max() >= n_minor):
            bad = int(block.max()) if block.max() >= n_minor else int(block.min())
            raise ValueError(
                f"the sparse counts' indices point outside the matrix ({bad} is not in "
                f"0..{n_minor - 1}): {fix}"
            )


def validate_counts(matrix, allow_non_integer: bool = False, chunk: int = 10_000) -> None:
    """Raise ``ValueError`` for NaN/inf, negative or (unless allowed) non-integer counts.

    Checked in chunks (rows of a dense matrix, ``chunk * 1000`` stored values of a
    sparse one), so the temporaries stay small whatever the size of the data.

    Parameters
    ----------
    matrix
        Counts (dense, CSR or CSC).
    allow_non_integer
        Accept non-integer values.
    chunk
        Rows checked at a time.
    """
    if sp.issparse(matrix):
        data = np.asarray(matrix.data)
        step = chunk * 1000
        blocks = (data[s : s + step] for s in range(0, max(len(data), 1), step))
    else:  # dense, or a backed dataset read in chunks of rows
        blocks = (_values(block) for block in _row_blocks(matrix, chunk))
    for block in blocks:
        if block.dtype.kind not in "biuf":
            raise TypeError(
                f"counts have dtype {block.dtype}; give a numeric (integer or float) matrix."
            )
        if block.dtype.kind == "f":
            if not np.isfinite(block).all():
                raise ValueError(
                    "counts contain NaN or infinite values; scARE needs raw UMI counts. "
                    "Remove or fix those cells/genes before training."
                )
        if (block < 0).any():
            raise ValueError(
                "counts contain negative values: this looks like normalized or scaled data. "
                "scARE needs raw counts: pass layer= with the raw-count layer."
            )
        if not allow_non_integer and block.dtype.kind == "f" and (block != np.round(block)).any():
            raise ValueError(
                "counts contain non-integer values (e.g. log-normalized data). scARE models "
                "raw counts with a negative binomial: pass the raw-count layer, or "
                "allow_non_integer=True for estimated counts (e.g. ambient-corrected)."
            )


@dataclass
class CountData:
    """Validated counts, batch codes and optional ground-truth rows for training.

    Attributes
    ----------
    matrix
        CSR matrix (or dense array) of counts, cells x genes; not copied when it is
        already CSR or dense.
    batch_codes
        Integer batch code per cell.
    batch_categories
        The batch categories (their order defines the codes).
    var_names
        Gene names.
    library_sizes
        Total counts per cell (computed once, during validation).
    """

    matrix: object
    batch_codes: np.ndarray
    batch_categories: list
    var_names: list = field(default_factory=list)
    library_sizes: np.ndarray | None = None

    @classmethod
    def from_anndata(
        cls,
        adata,
        layer: str | None = None,
        batch_key: str | None = None,
        batch_categories: list | None = None,
        allow_non_integer: bool = False,
        check_zero_cells: bool = True,
    ) -> CountData:
        """Validate an AnnData and wrap its counts (nothing in ``adata`` is modified)."""
        if adata.n_obs == 0 or adata.n_vars == 0:
            raise ValueError(
                f"the AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes); "
                "give at least one cell and one gene."
            )
        if adata.n_obs < 2 or adata.n_vars < 2:
            raise ValueError(
                f"the AnnData has {adata.n_obs} cell(s) x {adata.n_vars} gene(s); scARE needs "
                "at least two cells (Expected Gradients draws references among them) and two "
                "genes (the decoder's gene proportions)."
            )
        if not adata.var_names.is_unique:
            dup = adata.var_names[adata.var_names.duplicated()].unique()
            raise ValueError(
                f"adata.var_names has {len(dup)} duplicated gene name(s) (e.g. {list(dup[:3])}); "
                "gene-set matching and saved models need unique names: call "
                "adata.var_names_make_unique() first."
            )
        matrix = get_counts_matrix(adata, layer)
        check_sparse_structure(matrix)  # before scipy touches it (a broken one can segfault)
        if getattr(adata, "isbacked", False) and layer is None:
            fmt = getattr(matrix, "format", "dense")
            if fmt not in ("csr", "dense"):
                raise ValueError(
                    f"backed AnnData with a {fmt} matrix cannot stream rows; rewrite it as CSR "
                    "(adata.X = scipy.sparse.csr_matrix(adata.X); adata.write_h5ad(...))."
                )
            logger.info("backed AnnData: minibatches are read from disk as needed")
        elif (
            sp.issparse(matrix)
            and not sp.isspmatrix_csr(matrix)
            and not isinstance(matrix, sp.csr_array)
        ):
            logger.info("converting %s counts to CSR for row slicing", type(matrix).__name__)
            matrix = sp.csr_matrix(matrix)
        elif not sp.issparse(matrix):
            matrix = np.asarray(matrix)
        validate_counts(matrix, allow_non_integer=allow_non_integer)
        totals = row_totals(matrix)
        if check_zero_cells:
            n_zero = int((totals == 0).sum())
            if n_zero:
                raise ValueError(
                    f"{n_zero} cell(s) have zero counts over the {adata.n_vars} genes; their "
                    "library size is undefined. Remove them first, e.g. "
                    "adata = adata[adata.X.sum(1).A1 > 0].copy() or "
                    "sc.pp.filter_cells(adata, min_counts=1)."
                )
        codes, categories = batch_codes_of(adata, batch_key, batch_categories)
        return cls(matrix, codes, categories, list(map(str, adata.var_names)), totals)

    @property
    def n_cells(self) -> int:
        return self.matrix.shape[0]

    @property
    def n_genes(self) -> int:
        return self.matrix.shape[1]

    def rows(self, idx: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """Dense float32 counts of the cells ``idx`` (a minibatch)."""
        block = self.matrix[idx]
        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        return to_device(torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)), device)

    def library_log_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-batch mean and variance of the log library size (the scVI library prior)."""
        totals = row_totals(self.matrix) if self.library_sizes is None else self.library_sizes
        log_lib = np.log(totals.clip(min=1.0))
        k = len(self.batch_categories)
        means, vars_ = np.zeros(k), np.ones(k)
        for b in range(k):
            v = log_lib[self.batch_codes == b]
            if v.size:
                means[b] = v.mean()
                vars_[b] = max(v.var(), 1e-4)
        return means.astype(np.float32), vars_.astype(np.float32)


def batch_codes_of(
    adata, batch_key: str | None, categories: list | None = None
) -> tuple[np.ndarray, list]:
    """Integer batch codes and categories; unknown categories (at inference) raise."""
    if batch_key is None:
        return np.zeros(adata.n_obs, dtype=np.int64), ["_single_batch"]
    if batch_key not in adata.obs:
        raise KeyError(
            f"batch_key {batch_key!r} not found in adata.obs (columns: {list(adata.obs)}); "
            "pass the name of the column holding the batch, or batch_key=None."
        )
    col = adata.obs[batch_key]
    if col.isna().any():
        raise ValueError(
            f"adata.obs[{batch_key!r}] has {int(col.isna().sum())} missing value(s); give "
            "every cell a batch (e.g. fill them with 'unknown')."
        )
    values = col.astype(str).to_numpy()
    if categories is None:
        cats = (
            [str(c) for c in col.cat.categories if (values == str(c)).any()]
            if isinstance(col.dtype, pd.CategoricalDtype)
            else sorted(set(values))
        )
        return pd.Categorical(values, categories=cats).codes.astype(np.int64), cats
    unknown = sorted(set(values) - set(map(str, categories)))
    if unknown:
        raise ValueError(
            f"adata.obs[{batch_key!r}] has categories unseen in training: {unknown[:10]}; "
            f"the model knows {list(categories)}. Map those cells to a known batch or "
            "train a model that includes them."
        )
    return pd.Categorical(values, categories=list(categories)).codes.astype(np.int64), list(
        categories
    )
