"""Built-in data: a synthetic count simulator with planted structure.

Everything here is generated; call it *synthetic* wherever it is reported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["synthetic", "go_gene_sets_path", "go_gene_sets", "pbmc3k", "pbmc68k", "PBMC_MARKERS"]

#: Classic PBMC marker genes used to name the Leiden clusters of PBMC 3k.
PBMC_MARKERS: dict[str, list[str]] = {
    "CD4 T": ["IL7R", "CCR7", "CD3E", "LDHB"],
    "CD14 Monocytes": ["CD14", "LYZ", "S100A9"],
    "B": ["MS4A1", "CD79A", "CD79B"],
    "CD8 T": ["CD8A", "CD8B", "GZMK"],
    "NK": ["GNLY", "NKG7", "GZMB"],
    "FCGR3A Monocytes": ["FCGR3A", "MS4A7"],
    "Dendritic": ["FCER1A", "CST3", "CLEC10A"],
    "Megakaryocytes": ["PPBP", "PF4"],
}

_DATA = Path(__file__).resolve().parent / "data"


def pbmc3k():
    """PBMC 3k (10x Genomics): 2,700 real cells with raw UMI counts, shipped compactly.

    2,265 genes: the 2,000 most variable, every gene of the shipped GO sets found in
    the data (466 MAPK, 64 NF-kB) and the PBMC markers. ``obs['cell_type']`` names the
    Leiden clusters by :data:`PBMC_MARKERS` (``scripts/make_pbmc3k.py`` made the file and
    records every step). One batch. No download.

    Examples
    --------
    >>> adata = pbmc3k()
    >>> adata.shape, int(adata.obs["cell_type"].nunique())
    ((2700, 2265), 8)
    """
    import anndata as ad

    adata = ad.read_h5ad(_DATA / "pbmc3k.h5ad")
    adata.X = adata.X.astype(np.float32)
    return adata


def pbmc68k():
    """The 700 labelled PBMC cells inside scanpy's wheel, with integer counts recovered.

    scanpy's ``pbmc68k_reduced`` stores ``log1p(counts / n_counts * 1e4)`` in ``raw.X``;
    ``round(expm1(raw.X) * n_counts / 1e4)`` recovers the UMI counts of its 765 genes
    exactly (largest distance to an integer 0.08). ``obs['cell_type']`` is scanpy's
    ``bulk_labels`` (10 types); ``obs['phase']`` the cell-cycle phase. One batch.

    Examples
    --------
    >>> adata = pbmc68k()
    >>> adata.shape, bool((adata.X.data == adata.X.data.round()).all())
    ((700, 765), True)
    """
    import anndata as ad
    import scanpy as sc

    ref = sc.datasets.pbmc68k_reduced()
    raw = ref.raw.X.toarray() if sp.issparse(ref.raw.X) else np.asarray(ref.raw.X)
    n_counts = ref.obs["n_counts"].to_numpy()[:, None]
    counts = np.round(np.expm1(raw.astype(np.float64)) * n_counts / 1e4).astype(np.float32)
    obs = pd.DataFrame(
        {
            "cell_type": ref.obs["bulk_labels"].astype("category"),
            "phase": ref.obs["phase"].astype("category"),
            "n_counts": ref.obs["n_counts"].to_numpy(),
        },
        index=ref.obs_names,
    )
    return ad.AnnData(sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=ref.raw.var_names))


def go_gene_sets_path() -> Path:
    """Path of the shipped GMT with the scARE paper's GO sets (human symbols).

    GO:0043410 (positive regulation of MAPK cascade, 496 genes) and GO:1901224
    (positive regulation of NIK/NF-kappaB signaling, 67 genes), each with the genes of
    the term and of its descendant terms, from Debian's ``r-bioc-org.hs.eg.db`` 3.16.0 and
    ``r-bioc-go.db`` 3.16.0.
    """
    return _DATA / "go_mapk_nfkb_human.gmt"


def go_gene_sets() -> dict[str, list[str]]:
    """The shipped GO sets as ``{"GO:0043410": [...], "GO:1901224": [...]}``.

    Examples
    --------
    >>> sets = go_gene_sets()
    >>> sorted(sets), len(sets["GO:0043410"]), len(sets["GO:1901224"])
    (['GO:0043410', 'GO:1901224'], 496, 67)
    """
    from attreg_sc.gt import read_gmt

    return read_gmt(go_gene_sets_path())


def synthetic(
    n_cells: int = 2000,
    n_genes: int = 500,
    n_cell_types: int = 3,
    n_batches: int = 2,
    n_gt_genes: int = 50,
    gt_fold: float = 4.0,
    other_fold: float = 4.0,
    batch_effect: float = 0.5,
    library_size: float = 1500.0,
    theta: float = 5.0,
    seed: int = 0,
):
    """Negative-binomial counts with cell types, batches and two hidden programs.

    * ``cell_type``: each type has its own mean profile (20% of genes shifted).
    * ``gt_state``: within every type, half of the cells have the first
      ``n_gt_genes`` genes (``var['is_gt']``) multiplied by ``gt_fold``.
    * ``other_state``: an independent split driven by ``n_gt_genes`` other genes
      (``var['is_other']``), multiplied by ``other_fold`` — a competing structure that
      a model is free to encode instead of the GT program.
    * ``batch``: gene-wise multiplicative batch effects (log-normal, sd
      ``batch_effect``) and batch-specific library sizes.

    Returns an AnnData with integer counts in a CSR ``X`` (float32).

    Examples
    --------
    >>> adata = synthetic(n_cells=100, n_genes=80, n_gt_genes=10, seed=1)
    >>> adata.shape, int(adata.var["is_gt"].sum())
    ((100, 80), 10)
    """
    import anndata as ad

    if 2 * n_gt_genes > n_genes:
        raise ValueError("need n_genes >= 2 * n_gt_genes (GT and competing programs).")
    rng = np.random.default_rng(seed)
    base = rng.normal(0.0, 1.0, n_genes)
    type_shift = rng.normal(0.0, 1.0, (n_cell_types, n_genes)) * (
        rng.random((n_cell_types, n_genes)) < 0.2
    )
    batch_shift = rng.normal(0.0, batch_effect, (n_batches, n_genes))
    cell_type = rng.integers(0, n_cell_types, n_cells)
    batch = rng.integers(0, n_batches, n_cells)
    gt_state = rng.integers(0, 2, n_cells)
    other_state = rng.integers(0, 2, n_cells)
    is_gt = np.zeros(n_genes, dtype=bool)
    is_gt[:n_gt_genes] = True
    is_other = np.zeros(n_genes, dtype=bool)
    is_other[n_gt_genes : 2 * n_gt_genes] = True
    log_mu = base[None, :] + type_shift[cell_type] + batch_shift[batch]
    log_mu = log_mu + np.log(gt_fold) * (gt_state[:, None] * is_gt[None, :])
    log_mu = log_mu + np.log(other_fold) * (other_state[:, None] * is_other[None, :])
    prop = np.exp(log_mu - log_mu.max(axis=1, keepdims=True))
    prop /= prop.sum(axis=1, keepdims=True)
    lib = library_size * np.exp(rng.normal(0.0, 0.3, n_cells) + 0.2 * (batch - batch.mean()))
    mean = prop * lib[:, None]
    counts = rng.negative_binomial(theta, theta / (theta + mean)).astype(np.float32)
    empty = counts.sum(axis=1) == 0
    counts[empty, rng.integers(0, n_genes, int(empty.sum()))] = 1.0
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"type{t}" for t in cell_type]),
            "batch": pd.Categorical([f"batch{b}" for b in batch]),
            "gt_state": pd.Categorical([f"gt{s}" for s in gt_state]),
            "other_state": pd.Categorical([f"other{s}" for s in other_state]),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(
        {"is_gt": is_gt, "is_other": is_other}, index=[f"gene{j}" for j in range(n_genes)]
    )
    return ad.AnnData(sp.csr_matrix(counts), obs=obs, var=var)
