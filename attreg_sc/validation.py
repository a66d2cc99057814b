"""Checks of a user's AnnData before anything touches its counts.

One set of checks for every path into the model (:meth:`attreg_sc.SCARE.setup_anndata`,
a new AnnData given to a trained model, a load, a query): the sparse structure first
(a broken CSR matrix crashes scipy or silently moves counts between genes), then the
values (NaN, inf, negative, non-integer), empty cells, duplicated gene names and missing
batch labels. Every check reads the matrix in chunks, so a backed (on-disk) matrix is
checked in one pass without loading it, and nothing in the AnnData is modified.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = [
    "InvalidDataError",
    "InvalidDataTypeError",
    "MissingDataKeyError",
    "check_anndata",
    "check_sparse_structure",
    "validate_counts",
    "get_counts_matrix",
    "row_totals",
    "batch_codes_of",
]

logger = logging.getLogger(__name__)


class InvalidDataError(ValueError):
    """An AnnData (or a matrix in it) that a model refuses; the message names the problem
    and the fix."""


class InvalidDataTypeError(InvalidDataError, TypeError):
    """Data of a type a model cannot read (e.g. non-numeric counts, not an AnnData)."""


class MissingDataKeyError(InvalidDataError, KeyError):
    """A layer or ``obs`` column that is not there."""

    def __str__(self) -> str:  # KeyError quotes its message
        return str(self.args[0]) if self.args else ""


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
            raise InvalidDataError(
                "adata.X is empty; pass layer= naming the layer with raw counts."
            )
        return adata.X
    if layer not in adata.layers:
        raise MissingDataKeyError(
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


def check_sparse_structure(
    matrix, chunk: int = 10_000_000, name: str = "the sparse counts"
) -> None:
    """Raise ``ValueError`` for a CSR/CSC/COO matrix whose structure is broken: ``indptr``
    of the wrong length or type, not starting at 0, decreasing, or not ending at the
    number of stored values; ``indices`` (or COO coordinates) out of range or not integers.
    Such a matrix crashes scipy (a segmentation fault or an abort) or silently puts values
    in the wrong places, so this runs before scipy touches it. Vectorized; ``indices`` are
    read in chunks, so a backed (on-disk) matrix is checked in one pass without loading it.

    Parameters
    ----------
    matrix
        A scipy sparse matrix or array, or anndata's backed sparse dataset (anything else
        passes).
    chunk
        Entries checked at a time.
    name
        How the matrix is named in the error.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> m = sp.csr_matrix(np.eye(3))
    >>> m.indices[1] = 7  # points beyond the last gene
    >>> check_sparse_structure(m)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    attreg_sc.validation.InvalidDataError: the sparse counts' indices point outside ...
    """
    fmt = getattr(matrix, "format", None)
    if fmt not in ("csr", "csc", "coo"):
        return
    fix = "the file is corrupt or was built with the wrong shape. Rebuild the matrix "
    fix += "(e.g. from the source counts)."
    shape = tuple(int(n) for n in matrix.shape)
    if fmt == "coo":
        data = matrix.data
        for axis, coords in enumerate(getattr(matrix, "coords", (matrix.row, matrix.col))):
            coords = np.asarray(coords)
            if coords.dtype.kind not in "iu" or coords.shape != (len(data),):
                raise InvalidDataError(f"{name}' coordinates are not one integer per value: {fix}")
            if coords.size and (coords.min() < 0 or coords.max() >= shape[axis]):
                raise InvalidDataError(f"{name}' coordinates point outside the matrix: {fix}")
        return
    group = getattr(matrix, "group", None)  # anndata's backed sparse dataset
    if group is not None:
        indptr, indices, data = group["indptr"], group["indices"], group["data"]
    else:
        indptr, indices, data = matrix.indptr, matrix.indices, matrix.data
    n_major, n_minor = shape if fmt == "csr" else shape[::-1]
    what = "rows" if fmt == "csr" else "columns"
    for part, values in (("indptr", indptr), ("indices", indices)):
        kind = np.dtype(values.dtype).kind
        if kind not in "iu" or len(values.shape) != 1:
            raise InvalidDataError(
                f"{name}' {part} is not a vector of integers ({values.dtype}): {fix}"
            )
    if indptr.shape != (n_major + 1,):
        raise InvalidDataError(
            f"{name}' indptr has {indptr.shape[0]} entries for {n_major} {what} "
            f"(expected {n_major + 1}): {fix}"
        )
    ptr = np.asarray(indptr[:])
    if ptr[0] != 0 or (np.diff(ptr) < 0).any():
        raise InvalidDataError(f"{name}' indptr does not start at 0 and rise: {fix}")
    nnz = int(ptr[-1])
    if nnz != len(indices) or nnz != len(data):
        raise InvalidDataError(
            f"{name}' indptr ends at {nnz} but {len(indices)} indices and "
            f"{len(data)} values are stored: {fix}"
        )
    for start in range(0, nnz, chunk):
        block = np.asarray(indices[start : start + chunk])
        if block.size and (block.min() < 0 or block.max() >= n_minor):
            bad = int(block.max()) if block.max() >= n_minor else int(block.min())
            raise InvalidDataError(
                f"{name}' indices point outside the matrix ({bad} is not in "
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
            raise InvalidDataTypeError(
                f"counts have dtype {block.dtype}; give a numeric (integer or float) matrix."
            )
        if block.dtype.kind == "f":
            if not np.isfinite(block).all():
                raise InvalidDataError(
                    "counts contain NaN or infinite values; scARE needs raw UMI counts. "
                    "Remove or fix those cells/genes before training."
                )
        if (block < 0).any():
            raise InvalidDataError(
                "counts contain negative values: this looks like normalized or scaled data. "
                "scARE needs raw counts: pass layer= with the raw-count layer."
            )
        if not allow_non_integer and block.dtype.kind == "f" and (block != np.round(block)).any():
            raise InvalidDataError(
                "counts contain non-integer values (e.g. log-normalized data). scARE models "
                "raw counts with a negative binomial: pass the raw-count layer, or "
                "allow_non_integer=True for estimated counts (e.g. ambient-corrected)."
            )


def batch_codes_of(
    adata, batch_key: str | None, categories: list | None = None
) -> tuple[np.ndarray, list]:
    """Integer batch codes and categories; unknown categories (at inference) raise.

    Parameters
    ----------
    adata
        The AnnData.
    batch_key
        ``obs`` column with the batch (``None``: one batch).
    categories
        Known categories (their order defines the codes); ``None``: from the column.
    """
    if batch_key is None:
        return np.zeros(adata.n_obs, dtype=np.int64), ["_single_batch"]
    if batch_key not in adata.obs:
        raise MissingDataKeyError(
            f"batch_key {batch_key!r} not found in adata.obs (columns: {list(adata.obs)}); "
            "pass the name of the column holding the batch, or batch_key=None."
        )
    col = adata.obs[batch_key]
    if col.isna().any():
        raise InvalidDataError(
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
        raise InvalidDataError(
            f"adata.obs[{batch_key!r}] has categories unseen in training: {unknown[:10]}; "
            f"the model knows {list(categories)}. Map those cells to a known batch or "
            "train a model that includes them."
        )
    return pd.Categorical(values, categories=list(categories)).codes.astype(np.int64), list(
        categories
    )


def check_anndata(
    adata,
    layer: str | None = None,
    batch_key: str | None = None,
    allow_non_integer: bool = False,
    obs_keys: tuple[str | None, ...] = (),
) -> None:
    """Every check a model runs on an AnnData before it reads the counts: at least two
    cells and two genes, unique gene names, a sound sparse structure, counts that are
    finite, non-negative and (unless ``allow_non_integer``) integers, no cell without
    counts, and every cell labelled in ``batch_key`` (and in ``obs_keys``). Raises
    ``TypeError``, ``KeyError`` or ``ValueError`` naming the problem and the fix; nothing
    is modified.

    Parameters
    ----------
    adata
        The AnnData (in memory or backed).
    layer
        Layer with raw counts (``None``: ``X``).
    batch_key
        ``obs`` column with the batch, or ``None``.
    allow_non_integer
        Accept non-integer counts (e.g. ambient-corrected estimates).
    obs_keys
        Other ``obs`` columns that must label every cell (labels, covariates).

    Examples
    --------
    >>> import anndata as ad
    >>> a = ad.AnnData(np.array([[1.0, 2.0], [0.5, 1.0]], dtype=np.float32))
    >>> check_anndata(a)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    attreg_sc.validation.InvalidDataError: counts contain non-integer values ...
    """
    import anndata

    if not isinstance(adata, anndata.AnnData):
        raise InvalidDataTypeError(
            f"expected an AnnData, got {type(adata).__name__}; read counts with "
            "anndata.read_h5ad or build anndata.AnnData(counts)."
        )
    if adata.n_obs < 2 or adata.n_vars < 2:
        raise InvalidDataError(
            f"the AnnData has {adata.n_obs} cell(s) x {adata.n_vars} gene(s); the model needs "
            "at least two cells (Expected Gradients draws references among them) and two "
            "genes."
        )
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()].unique()
        raise InvalidDataError(
            f"adata.var_names has {len(dup)} duplicated gene name(s) (e.g. {list(dup[:3])}); "
            "gene-set matching and saved models need unique names: call "
            "adata.var_names_make_unique() first."
        )
    matrix = get_counts_matrix(adata, layer)
    if len(getattr(matrix, "shape", ())) != 2 or tuple(matrix.shape) != adata.shape:
        raise InvalidDataError(
            f"the counts have shape {getattr(matrix, 'shape', None)}; the AnnData is "
            f"{adata.shape} (cells x genes). Rebuild the AnnData from a matching matrix."
        )
    check_sparse_structure(matrix)  # before scipy touches it (a broken one can segfault)
    if adata.isbacked and getattr(matrix, "format", None) == "csc":
        raise InvalidDataError(
            "the backed counts are stored CSC (by gene): a minibatch of cells would read "
            "every gene's column from disk. Write them CSR once: a = ad.read_h5ad(path); "
            "a.X = a.X.tocsr(); a.write_h5ad(new_path) (or train in memory)."
        )
    validate_counts(matrix, allow_non_integer=allow_non_integer)
    n_zero = int((row_totals(matrix) == 0).sum())
    if n_zero:
        raise InvalidDataError(
            f"{n_zero} cell(s) have zero counts over the {adata.n_vars} genes; their "
            "library size is undefined. Remove them first, e.g. "
            "sc.pp.filter_cells(adata, min_counts=1)."
        )
    for key in (batch_key, *obs_keys):
        if key is None:
            continue
        if key not in adata.obs:
            raise MissingDataKeyError(
                f"{key!r} is not a column of adata.obs (columns: {list(adata.obs)}); pass "
                "the name of the column, or None."
            )
        missing = int(adata.obs[key].isna().sum())
        if missing:
            raise InvalidDataError(
                f"adata.obs[{key!r}] has {missing} missing value(s); give every cell a "
                "value (e.g. fill them with 'unknown')."
            )
