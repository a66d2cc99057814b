"""Ground truths over genes: from gene lists, GMT gene sets, groups, cells, and markers.

A ground truth is one of

* a boolean vector ``(n_genes,)`` shared by all cells (:func:`from_genes`,
  :func:`from_gmt`, :func:`mutual_information_markers` without ``groupby``);
* a :class:`GroupedGroundTruth`: one gene set per group of cells, e.g. per cell type
  (:func:`from_groups`, :func:`mutual_information_markers` with ``groupby``);
* a :class:`CellGroundTruth`: any cells x genes boolean matrix (:func:`from_cell_matrix`).

Matrices are stored compactly (a group table plus one code per cell, or a sparse
matrix) and densified one minibatch of rows at a time.

Examples
--------
>>> import anndata as ad, numpy as np
>>> adata = ad.AnnData(np.ones((3, 4), dtype=np.float32))
>>> adata.var_names = ["MAPK1", "NFKB1", "CD3E", "LYZ"]
>>> from_genes(adata, ["mapk1", "nfkb1", "NOPE"]).astype(int).tolist()
[1, 1, 0, 0]
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = [
    "from_genes",
    "read_gene_list",
    "read_gmt",
    "gmt_line",
    "from_gmt",
    "from_groups",
    "from_cell_matrix",
    "mutual_information_markers",
    "GroupedGroundTruth",
    "CellGroundTruth",
    "as_ground_truths",
]

logger = logging.getLogger(__name__)


def _gene_index(adata, gene_key: str | None) -> pd.Index:
    if gene_key is None:
        names = adata.var_names
    else:
        if gene_key not in adata.var:
            raise KeyError(
                f"gene_key {gene_key!r} not in adata.var (columns: {list(adata.var)}); pass "
                "the column holding gene symbols, or gene_key=None to use var_names."
            )
        names = adata.var[gene_key]
    return pd.Index([str(g).upper() for g in names])


def from_genes(
    adata,
    genes: Iterable[str],
    gene_key: str | None = None,
    name: str = "gene list",
    min_found: int = 1,
) -> np.ndarray:
    """Boolean vector over ``adata``'s genes: True for the listed genes.

    Matching is case-insensitive against ``var_names`` or ``adata.var[gene_key]``.
    Genes not found are a WARNING (shown by the CLI) with their count and names (the
    first 20); fewer than ``min_found`` found is an error.

    Parameters
    ----------
    adata
        AnnData whose genes are matched.
    genes
        Any iterable of gene names (list, set, ``pd.Index``, array); not a single string.
    gene_key
        ``var`` column with gene symbols (``None``: ``var_names``).
    name
        How the list is named in messages.
    min_found
        Fewest genes that must be found.

    Returns
    -------
    Boolean ``(n_genes,)`` vector.
    """
    if isinstance(genes, str):
        raise TypeError(f"genes must be a list of gene names, not the string {genes!r}.")
    wanted = list(dict.fromkeys(str(g).upper() for g in genes))
    if not wanted:
        raise ValueError(f"{name} is empty; give at least one gene.")
    index = _gene_index(adata, gene_key)
    mask = index.isin(wanted)
    found = set(index[mask])
    missing = [g for g in wanted if g not in found]
    if len(found) < min_found:
        raise ValueError(
            f"{name}: {len(found)} of {len(wanted)} genes found in the data (need at least "
            f"{min_found}); first missing: {missing[:5]}. Check the species/ID type, or pass "
            "gene_key= naming the adata.var column with gene symbols."
        )
    if missing:
        few = 2 * len(found) < len(wanted)
        logger.warning(
            "%s: %s%d of %d genes found; %d not in the data: %s%s",
            name,
            "only " if few else "",
            len(found),
            len(wanted),
            len(missing),
            ", ".join(missing[:20]),
            " ..." if len(missing) > 20 else "",
        )
    return np.asarray(mask, dtype=bool)


def _read_text(path: str | os.PathLike, what: str) -> str:
    """UTF-8 text (a byte-order mark is dropped), with a clear error for other encodings."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not UTF-8 text (byte {err.start}): save the {what} as UTF-8."
        ) from err


def read_gene_list(path: str | os.PathLike) -> list[str]:
    r"""Read a gene list: names separated by newlines, spaces, tabs or commas; ``#`` starts a
    comment that runs to the end of its line; UTF-8 (with or without a byte-order mark).

    Parameters
    ----------
    path
        Text file with gene names.

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "genes.txt")
    >>> _ = open(path, "w").write("# markers of G5 and G6\nCD3D, CD3E  # T cells\nMS4A1\n")
    >>> read_gene_list(path)
    ['CD3D', 'CD3E', 'MS4A1']
    """
    genes = []
    for line in _read_text(path, "gene list").splitlines():
        genes += line.split("#", 1)[0].replace(",", " ").split()
    return genes


def read_gmt(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a GMT file: one set per line, ``name <TAB> description <TAB> gene ...``
    (UTF-8; a byte-order mark is dropped). A set name given twice is an error (which of
    the two was meant cannot be told).

    Parameters
    ----------
    path
        GMT file.
    """
    sets: dict[str, list[str]] = {}
    for lineno, line in enumerate(_read_text(path, "GMT file").splitlines(), 1):
        parts = line.rstrip("\r").split("\t")
        if not parts or not parts[0].strip():
            continue
        if len(parts) < 3:
            raise ValueError(
                f"{path}:{lineno}: a GMT line needs a name, a description and genes "
                "separated by tabs."
            )
        if parts[0] in sets:
            raise ValueError(
                f"{path}:{lineno}: gene set {parts[0]!r} appears twice; give each set a "
                "unique name."
            )
        sets[parts[0]] = [g for g in parts[2:] if g]
    if not sets:
        raise ValueError(f"{path} holds no gene set.")
    return sets


def gmt_line(name: str, description: str, genes: Iterable[str]) -> str:
    """One GMT line; refuses a name, description or gene containing a tab or a line break
    (it would split into extra fields or extra gene sets).

    Parameters
    ----------
    name
        The set's name (no tab or newline).
    description
        Its description (no tab or newline).
    genes
        Its genes.
    """
    fields = [str(name), str(description), *map(str, genes)]
    bad = [f for f in fields if any(c in f for c in "\t\n\r")]
    if bad:
        raise ValueError(
            f"GMT fields cannot contain tabs or line breaks: {bad[:3]!r}; rename the group or "
            "label."
        )
    return "\t".join(fields)


def from_gmt(
    adata,
    path: str | os.PathLike,
    sets: Iterable[str] | None = None,
    gene_key: str | None = None,
    min_found: int = 1,
) -> dict[str, np.ndarray]:
    """One boolean vector per gene set of a GMT file (all sets, or the named ones).

    Parameters
    ----------
    adata
        AnnData whose genes are matched.
    path
        GMT file (:func:`read_gmt`).
    sets
        Names of the sets to use (default: every set of the file).
    gene_key
        ``var`` column with gene symbols (``None``: ``var_names``).
    min_found
        Fewest genes of each set that must be found.
    """
    table = read_gmt(path)
    names = list(table) if sets is None else list(sets)
    unknown = [s for s in names if s not in table]
    if unknown:
        raise KeyError(f"gene sets {unknown} not in {path}; it has {list(table)[:10]}.")
    return {
        s: from_genes(adata, table[s], gene_key, name=f"gene set {s!r}", min_found=min_found)
        for s in names
    }


@dataclass
class GroupedGroundTruth:
    """One gene set per group of cells: ``table[codes[i]]`` is cell ``i``'s GT row.

    Attributes
    ----------
    codes
        Group code of every cell, ``(n_cells,)``; ``-1`` for cells outside every group
        (their row is all zeros).
    table
        Boolean ``(n_groups, n_genes)``.
    groups
        The group names (rows of ``table``).
    """

    codes: np.ndarray
    table: np.ndarray
    groups: list

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.codes), self.table.shape[1])

    def rows(self, idx: np.ndarray) -> np.ndarray:
        codes = self.codes[idx]
        out = np.zeros((len(codes), self.table.shape[1]), dtype=np.float32)
        ok = codes >= 0
        out[ok] = self.table[codes[ok]]
        return out

    def subset(self, idx: np.ndarray) -> GroupedGroundTruth:
        return GroupedGroundTruth(self.codes[idx], self.table, self.groups)

    def to_dense(self) -> np.ndarray:
        return self.rows(np.arange(len(self.codes))).astype(bool)


@dataclass
class CellGroundTruth:
    """Any cells x genes boolean matrix, stored as CSR.

    Parameters
    ----------
    matrix
        Cells x genes boolean CSR matrix (:func:`from_cell_matrix` builds it).
    """

    matrix: sp.csr_matrix

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape

    def rows(self, idx: np.ndarray) -> np.ndarray:
        return self.matrix[idx].toarray().astype(np.float32)

    def subset(self, idx: np.ndarray) -> CellGroundTruth:
        return CellGroundTruth(self.matrix[idx])

    def to_dense(self) -> np.ndarray:
        return self.matrix.toarray().astype(bool)


def from_groups(
    adata,
    groupby: str,
    genes_per_group: Mapping[str, Iterable[str]],
    gene_key: str | None = None,
) -> GroupedGroundTruth:
    """A GT matrix with one gene list per group (e.g. per cell type) of ``obs[groupby]``.

    Cells of groups without a gene list get an all-zero row. With the default share /
    outside_share loss those cells are outside the prior (left out of its mean: their
    loss could not move); with an MSE loss the prior asks them for small attributions
    everywhere.

    Parameters
    ----------
    adata
        AnnData whose cells and genes the GT covers.
    groupby
        ``obs`` column with the groups (e.g. cell type).
    genes_per_group
        ``{group: gene names}``.
    gene_key
        ``var`` column with gene symbols (``None``: ``var_names``).
    """
    if groupby not in adata.obs:
        raise KeyError(f"groupby {groupby!r} not in adata.obs (columns: {list(adata.obs)}).")
    labels = adata.obs[groupby]
    if labels.isna().any():
        raise ValueError(f"adata.obs[{groupby!r}] has missing values; label every cell.")
    labels = labels.astype(str).to_numpy()
    groups = [str(g) for g in genes_per_group]
    unknown = sorted(set(groups) - set(labels))
    if unknown:
        raise ValueError(
            f"groups {unknown} have gene lists but no cells in adata.obs[{groupby!r}]."
        )
    table = np.stack(
        [
            from_genes(adata, genes, gene_key, name=f"genes of group {g!r}")
            for g, genes in genes_per_group.items()
        ]
    )
    code_of = {g: i for i, g in enumerate(groups)}
    codes = np.array([code_of.get(v, -1) for v in labels], dtype=np.int64)
    return GroupedGroundTruth(codes, table, groups)


def from_cell_matrix(adata, matrix) -> CellGroundTruth:
    """A per-cell GT from any ``(n_cells, n_genes)`` boolean/0-1 array or sparse matrix.

    A sparse matrix's structure is checked before scipy touches it (a broken one would
    crash the interpreter), and the input is not modified.

    Parameters
    ----------
    adata
        AnnData whose cells and genes the matrix covers, in order.
    matrix
        ``(n_cells, n_genes)`` boolean or 0/1 array or sparse matrix.
    """
    from attreg_sc.validation import check_sparse_structure

    if sp.issparse(matrix):
        check_sparse_structure(matrix, name="the GT matrix")
        shape = tuple(matrix.shape)
    else:
        matrix = np.asarray(matrix)
        shape = matrix.shape
    if shape != (adata.n_obs, adata.n_vars):
        raise ValueError(
            f"GT matrix has shape {shape}; expected (n_cells, n_genes) = "
            f"{(adata.n_obs, adata.n_vars)} in the order of the AnnData."
        )
    m = sp.csr_matrix(matrix)
    if m.nnz and (m.data.dtype.kind not in "biuf" or not np.isin(m.data, (0, 1)).all()):
        raise ValueError("GT matrix must be binary (0/1 or boolean).")
    return CellGroundTruth(m.astype(bool))


def _checked_group_gt(g: GroupedGroundTruth, name: str) -> GroupedGroundTruth:
    codes, table = np.asarray(g.codes), np.asarray(g.table)
    if codes.ndim != 1 or codes.dtype.kind not in "iu":
        raise ValueError(f"GT {name!r}: codes must be one integer group code per cell.")
    if table.ndim != 2 or table.dtype != bool or len(g.groups) != table.shape[0]:
        raise ValueError(f"GT {name!r}: table must be boolean (groups x genes), one row per "
                         "group name.")
    if codes.size and (codes.min() < -1 or codes.max() >= table.shape[0]):
        raise ValueError(f"GT {name!r}: group codes must be in -1..{table.shape[0] - 1}.")
    return g


def _log_normalized_columns(matrix, cols: np.ndarray, lib: np.ndarray) -> np.ndarray:
    block = matrix[:, cols]
    block = block.toarray() if sp.issparse(block) else np.asarray(block)
    return np.log1p(block / lib[:, None] * 1e4).astype(np.float32)


def _mi_scores(matrix, labels: np.ndarray, random_state: int, chunk: int, bar=None) -> np.ndarray:
    from sklearn.feature_selection import mutual_info_classif

    lib = np.asarray(matrix.sum(axis=1)).ravel().clip(min=1.0)
    scores = np.zeros(matrix.shape[1])
    for start in range(0, matrix.shape[1], chunk):
        if bar is not None:
            bar.update(min(chunk, matrix.shape[1] - start))
        cols = np.arange(start, min(start + chunk, matrix.shape[1]))
        x = _log_normalized_columns(matrix, cols, lib)
        scores[cols] = mutual_info_classif(
            x, labels, discrete_features=False, random_state=random_state
        )
    return scores


def mutual_information_markers(
    adata,
    label_key: str,
    groupby: str | None = None,
    n_top: int = 40,
    layer: str | None = None,
    random_state: int = 0,
    min_cells: int = 10,
    chunk: int = 2000,
    progress_bar: bool = False,
) -> np.ndarray | GroupedGroundTruth:
    """Top-``n_top`` genes by mutual information with a label (e.g. time point).

    MI (scikit-learn's ``mutual_info_classif``) is computed on ``log1p(counts / library
    * 1e4)`` of each gene, in chunks of genes (the matrix is never densified whole).
    Without ``groupby``: one global vector. With ``groupby`` (e.g. cell type): MI within
    each group -> a :class:`GroupedGroundTruth`; groups with fewer than ``min_cells``
    cells or a single label are skipped (logged) and get all-zero rows (outside a
    share / outside_share prior, see :func:`from_groups`).

    Parameters
    ----------
    adata
        AnnData with raw counts.
    label_key
        ``obs`` column with the label (e.g. time point).
    groupby
        ``obs`` column: markers within each group (a :class:`GroupedGroundTruth`).
    n_top
        Markers per set.
    layer
        Layer with raw counts (``None``: ``X``).
    random_state
        Seed of scikit-learn's MI estimate.
    min_cells
        Groups with fewer cells are skipped.
    chunk
        Genes per chunk (bounds memory).
    progress_bar
        Show a tqdm bar over genes (and groups).
    """
    from attreg_sc.validation import get_counts_matrix

    if label_key not in adata.obs:
        raise KeyError(f"label_key {label_key!r} not in adata.obs (columns: {list(adata.obs)}).")
    labels = adata.obs[label_key]
    if labels.isna().any():
        raise ValueError(
            f"adata.obs[{label_key!r}] has {int(labels.isna().sum())} missing value(s); "
            "drop or label those cells first."
        )
    if n_top < 1 or n_top > adata.n_vars:
        raise ValueError(f"n_top must be in [1, {adata.n_vars}], got {n_top}.")
    labels = labels.astype(str).to_numpy()
    matrix = get_counts_matrix(adata, layer)
    if sp.issparse(matrix):
        matrix = sp.csr_matrix(matrix)

    from tqdm.auto import tqdm

    n_groups = adata.obs[groupby].nunique() if groupby in adata.obs else 1
    bar = tqdm(
        total=adata.n_vars * n_groups, desc="MI markers", unit="gene", disable=not progress_bar
    )

    def top_mask(rows: np.ndarray | slice) -> np.ndarray:
        scores = _mi_scores(matrix[rows], labels[rows], random_state, chunk, bar)
        mask = np.zeros(adata.n_vars, dtype=bool)
        mask[np.argsort(-scores, kind="stable")[:n_top]] = True
        return mask

    if groupby is None:
        if len(set(labels)) < 2:
            raise ValueError(f"adata.obs[{label_key!r}] has one value; MI needs two or more.")
        mask = top_mask(slice(None))
        bar.close()
        return mask
    if groupby not in adata.obs:
        raise KeyError(f"groupby {groupby!r} not in adata.obs (columns: {list(adata.obs)}).")
    groups_of_cells = adata.obs[groupby].astype(str).to_numpy()
    groups, table = [], []
    for g in pd.unique(groups_of_cells):
        rows = np.flatnonzero(groups_of_cells == g)
        if len(rows) < min_cells or len(set(labels[rows])) < 2:
            logger.info("markers: group %r skipped (%d cells, one label or too few)", g, len(rows))
            bar.update(adata.n_vars)
            continue
        groups.append(str(g))
        table.append(top_mask(rows))
    bar.close()
    if not groups:
        raise ValueError(f"no group of {groupby!r} has >= {min_cells} cells and two labels.")
    code_of = {g: i for i, g in enumerate(groups)}
    codes = np.array([code_of.get(v, -1) for v in groups_of_cells], dtype=np.int64)
    return GroupedGroundTruth(codes, np.stack(table), groups)


def _one_ground_truth(adata, name: str, g, gene_key: str | None):
    import torch

    if isinstance(g, (GroupedGroundTruth, CellGroundTruth)):
        if isinstance(g, CellGroundTruth):
            g = from_cell_matrix(adata, g.matrix)
        else:
            g = _checked_group_gt(g, name)
        if g.shape != (adata.n_obs, adata.n_vars):
            raise ValueError(
                f"GT {name!r} has shape {g.shape}; the AnnData has "
                f"{(adata.n_obs, adata.n_vars)} (cells x genes)."
            )
        return g
    if isinstance(g, str):
        if g not in adata.var:
            raise KeyError(
                f"GT {name!r} = {g!r} is not a column of adata.var (columns: "
                f"{list(adata.var)}); give a var column of booleans or a list of gene names."
            )
        column = adata.var[g]
        if column.dtype != bool:
            raise TypeError(
                f"adata.var[{g!r}] has dtype {column.dtype}; a GT column must be boolean."
            )
        return column.to_numpy().astype(bool)
    if torch.is_tensor(g):
        g = g.detach().cpu().numpy()
    if not (sp.issparse(g) or isinstance(g, np.ndarray)):
        items = list(g)
        if items and all(isinstance(v, str) for v in items):
            return from_genes(adata, items, gene_key, name=f"GT {name!r}")
        g = np.asarray(items)
    if isinstance(g, np.ndarray) and g.dtype.kind in "USO" and g.ndim == 1:
        return from_genes(adata, [str(v) for v in g], gene_key, name=f"GT {name!r}")
    arr = g if sp.issparse(g) else np.asarray(g)
    if arr.ndim == 1:
        if arr.shape[0] != adata.n_vars:
            raise ValueError(
                f"GT {name!r} has {arr.shape[0]} entries; the AnnData has "
                f"{adata.n_vars} genes. Build it with attreg_sc.gt.from_genes(adata, ...)."
            )
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"GT {name!r} must be binary (0/1 or boolean).")
        return arr.astype(bool)
    if arr.ndim == 2:
        return from_cell_matrix(adata, arr)
    raise ValueError(f"GT {name!r} must be a vector or a cells x genes matrix.")


def as_ground_truths(adata, gt, gene_key: str | None = None) -> dict:
    """Turn a user's ``gt`` into ``{name: bool vector | GroupedGroundTruth |
    CellGroundTruth}``, checked against ``adata``.

    Parameters
    ----------
    adata
        The AnnData the model is trained on.
    gt
        ``None`` (no GT); one GT; or a dict ``name -> GT``. A GT is any iterable of gene
        names, the name of a boolean ``adata.var`` column, a boolean/0-1 vector over the
        genes, a cells x genes matrix, or a :class:`GroupedGroundTruth` /
        :class:`CellGroundTruth`. One GT without a name is called ``"gt"``.
    gene_key
        ``var`` column with gene symbols used to match gene names.

    Returns
    -------
    The GTs by name; an empty dict for ``None``.

    Examples
    --------
    >>> import anndata as ad, numpy as np
    >>> adata = ad.AnnData(np.ones((2, 3), dtype=np.float32))
    >>> adata.var_names = ["A", "B", "C"]
    >>> adata.var["mine"] = [True, False, False]
    >>> {k: v.tolist() for k, v in as_ground_truths(adata, "mine").items()}
    {'gt': [True, False, False]}
    >>> as_ground_truths(adata, {"b": {"B"}})["b"].tolist()
    [False, True, False]
    """
    if gt is None:
        return {}
    if not isinstance(gt, Mapping):
        gt = {"gt": gt}
    out: dict = {}
    for name, g in gt.items():
        val = _one_ground_truth(adata, name, g, gene_key)
        dense_any = val.any() if isinstance(val, np.ndarray) else val.to_dense().any()
        if not dense_any:
            raise ValueError(f"GT {name!r} selects no gene; check the gene names.")
        if isinstance(val, np.ndarray) and val.all():
            raise ValueError(
                f"GT {name!r} selects every gene, which carries no information; "
                "give a proper subset of the genes."
            )
        out[name] = val
    return out
