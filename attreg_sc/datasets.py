"""Built-in data: a synthetic count simulator with planted structure.

Everything here is generated; call it *synthetic* wherever it is reported.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = [
    "synthetic",
    "go_gene_sets_path",
    "go_gene_sets",
    "go_panel_path",
    "go_panel",
    "pbmc3k",
    "pbmc68k",
    "pbmc_two_runs",
    "wu2020_tcells",
    "mouse_symbols",
    "pancreas",
    "PBMC_MARKERS",
]

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


def pbmc3k(genes: str = "all"):
    """PBMC 3k (10x Genomics): 2,700 real cells with raw UMI counts. No download.

    All 13,714 genes seen in at least 3 cells (CD3D included). ``var['highly_variable']``
    marks the 2,000 most variable genes (scanpy's ``seurat`` flavour), ``var['selected']``
    a compact selection of 2,265 genes: those, every gene of the shipped GO sets found in
    the data (269 of the 496 MAPK genes and 54 of the 67 NF-kB genes match a symbol
    among the 13,714; the data notes count 466 and 64, presumably against all 32,738
    genes of the 10x file) and the PBMC markers. ``obs['cell_type']`` names the Leiden
    clusters by :data:`PBMC_MARKERS` (``scripts/make_pbmc3k.py`` made the file and records
    every step). One batch.

    Parameters
    ----------
    genes
        ``"all"`` (default) or ``"selected"``: only ``var['selected']``, the genes the
        package's demo, reproduction and studies use (their numbers were measured on
        them); the same as ``adata[:, adata.var["selected"]].copy()``.

    Examples
    --------
    >>> adata = pbmc3k()
    >>> adata.shape, int(adata.obs["cell_type"].nunique()), "CD3D" in adata.var_names
    ((2700, 13714), 8, True)
    >>> pbmc3k(genes="selected").shape
    (2700, 2265)
    """
    import anndata as ad

    if genes not in ("all", "selected"):
        raise ValueError(f"genes must be 'all' or 'selected', got {genes!r}.")
    adata = ad.read_h5ad(_DATA / "pbmc3k.h5ad")
    if genes == "selected":
        adata = adata[:, adata.var["selected"].to_numpy()].copy()
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


def _read_shipped(name: str):
    import anndata as ad

    adata = ad.read_h5ad(_DATA / name)
    adata.X = adata.X.astype(np.float32)
    return adata


def pbmc_two_runs():
    """Two real 10x PBMC runs, 200 cells each: a small set with a real batch effect.

    The 5k and 10k "protein v3" PBMC runs from scvi-tools' test data (its 1.4.2 source
    distribution), raw UMI counts; ``obs['batch']`` is the run (``pbmc_5k`` /
    ``pbmc_10k``). 2,223 genes: highly variable per batch, the shipped GO sets' genes and
    the PBMC markers. ``obs['cell_type']`` is assigned per cell from scanpy's marker
    scores for :data:`PBMC_MARKERS` (no clustering, no model; ``"unassigned"`` when every
    score is <= 0). ``obsm['protein_expression']`` holds the CITE-seq counts of the 14
    antibodies both runs' panels share (a DataFrame; for totalVI).
    ``scripts/make_batch_sets.py`` made the file. No download.

    Examples
    --------
    >>> adata = pbmc_two_runs()
    >>> adata.obsm["protein_expression"].shape
    (400, 14)
    >>> adata.shape, sorted(adata.obs["batch"].cat.categories)
    ((400, 2223), ['pbmc_10k', 'pbmc_5k'])
    """
    return _read_shipped("pbmc_two_runs.h5ad")


def wu2020_tcells():
    """200 real T cells of 14 patients (Wu et al. 2020), with the authors' subtypes.

    From scirpy's test data (its 0.22.5 wheel), raw UMI counts. ``obs['cell_type']`` is
    the authors' ``cluster_orig`` (16 CD4/CD8 T-cell subtypes), ``obs['batch']`` the
    patient, ``obs['source']`` the tissue (tumour, adjacent normal, blood). 2,138 genes
    chosen as in :func:`pbmc_two_runs`. ``scripts/make_batch_sets.py`` made the file.

    Examples
    --------
    >>> adata = wu2020_tcells()
    >>> adata.shape, int(adata.obs["batch"].nunique()), int(adata.obs["cell_type"].nunique())
    ((200, 2138), 14, 16)
    """
    return _read_shipped("wu2020_tcells.h5ad")


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


def mouse_symbols(genes: Iterable[str]) -> list[str]:
    """Human gene symbols written as mouse symbols (``MAPK1`` -> ``Mapk1``), sorted and
    without duplicates: the shipped GO sets (human) on mouse data. Most one-to-one
    orthologs share the symbol up to case; genes without such a namesake (``HLA-A``,
    the human-only families) find no mouse gene and drop out when matched.

    Parameters
    ----------
    genes
        Human gene symbols (e.g. a set of :func:`go_panel`).

    Examples
    --------
    >>> mouse_symbols(["MAPK1", "CD74", "H2AZ1", "MAPK1"])
    ['Cd74', 'H2az1', 'Mapk1']
    """
    return sorted({g[:1].upper() + g[1:].lower() for g in map(str, genes)})


def pancreas(path: str | os.PathLike):
    """Mouse pancreatic endocrinogenesis (Bastidas-Ponce et al. 2019), a tissue not of
    blood: 739 cells, 8 cell types (``obs['cell_type']``), spliced UMI counts, one sample.

    Not shipped (its source, the Bioconductor package VeloViz, is GPL-3): read from the
    file ``scripts/make_pancreas.py`` makes from VeloViz's ``data/pancreas.rda``. Its genes
    are mouse symbols; :func:`mouse_symbols` maps the shipped GO sets to them.

    Parameters
    ----------
    path
        The ``.h5ad`` file ``scripts/make_pancreas.py`` wrote.

    Examples
    --------
    >>> try:
    ...     pancreas("no/such/file.h5ad")
    ... except FileNotFoundError as err:
    ...     "scripts/make_pancreas.py" in str(err)
    True
    """
    import anndata as ad

    where = Path(path)
    if not where.is_file():
        raise FileNotFoundError(f"{path}: no such file; make it with scripts/make_pancreas.py "
                                "from VeloViz's data/pancreas.rda.")
    adata = ad.read_h5ad(where)
    if "cell_type" not in adata.obs:
        raise ValueError(f"{path}: no obs['cell_type']; this is not the file "
                         "scripts/make_pancreas.py writes.")
    adata.X = adata.X.astype(np.float32)
    return adata


def go_panel_path() -> Path:
    """Path of the shipped GMT of the target-share evaluation panel (human symbols)."""
    return _DATA / "go_panel_human.gmt"


def go_panel(half: str = "development") -> dict[str, list[str]]:
    """The evaluation panel's GO biological processes: 14 terms of 26-927 genes (with
    descendant terms; Debian's ``r-bioc-org.hs.eg.db`` / ``r-bioc-go.db`` 3.16.0), fixed
    before any was trained on and split by size rank into a ``"development"`` half and a
    ``"held-out"`` half (the final check, run once); ``"all"`` gives both. How it was
    made: ``scripts/make_go_gmt.py``.

    Parameters
    ----------
    half
        ``"development"``, ``"held-out"`` or ``"all"``.

    Examples
    --------
    >>> dev, held = go_panel(), go_panel("held-out")
    >>> len(dev), len(held), sorted(dev)[0], set(dev) & set(held)
    (7, 7, 'GO:0006119', set())
    """
    if half not in ("development", "held-out", "all"):
        raise ValueError(f"half must be 'development', 'held-out' or 'all', got {half!r}.")
    from attreg_sc.gt import read_gmt

    path = go_panel_path()
    sets = read_gmt(path)
    halves = {}
    for line in path.read_text().splitlines():
        term, description = line.split("\t")[:2]
        halves[term] = description.split(":")[0]
    return {t: genes for t, genes in sets.items() if half == "all" or halves[t] == half}


def _fit_reference(reference, n_cell_types: int, rng: np.random.Generator):
    """Per-gene log mean proportions per cell type, inverse dispersions, library sizes."""
    x = reference.X
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    x = x.astype(np.float64)
    lib = x.sum(1)
    prop = x / lib[:, None].clip(min=1)
    if "cell_type" in reference.obs:
        types = reference.obs["cell_type"].astype(str)
        top = types.value_counts().index[:n_cell_types]
        groups = [np.flatnonzero(types.to_numpy() == t) for t in top]
    else:
        groups = [np.arange(reference.n_obs)]
    eps = 0.1 / np.median(lib)
    log_mu = np.stack([np.log(prop[g].mean(0) + eps) for g in groups])
    m = (prop * np.median(lib)).mean(0)
    v = (prop * np.median(lib)).var(0)
    theta = np.clip(m**2 / np.maximum(v - m, 1e-8), 0.05, 100.0)
    return log_mu, theta, lib


_CHUNK_ENTRIES = 4_000_000  # cells x genes per chunk of the simulator


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
    reference=None,
    gt_genes: list[str] | None = None,
    chunk_size: int | None = None,
):
    """Negative-binomial counts with cell types, batches and two hidden programs.

    * ``cell_type``: each type has its own mean profile (20% of genes shifted).
    * ``gt_state``: within every type, half of the cells have the GT genes
      (``var['is_gt']``; the first ``n_gt_genes`` genes or ``gt_genes``) multiplied by
      ``gt_fold``.
    * ``other_state``: an independent split driven by ``n_gt_genes`` other genes
      (``var['is_other']``), multiplied by ``other_fold`` — a competing structure that
      a model is free to encode instead of the GT program.
    * ``batch``: gene-wise multiplicative batch effects (log-normal, sd
      ``batch_effect``) and batch-specific library sizes.

    With ``reference`` (an AnnData of real counts, e.g. :func:`pbmc3k`), the genes, the
    per-cell-type mean profiles (of its ``n_cell_types`` largest ``obs['cell_type']``
    groups), the gene-wise inverse dispersions (method of moments) and the library sizes
    are fitted to it, so that the counts have realistic statistics.

    Counts are drawn ``chunk_size`` cells at a time (default: about 4 million matrix
    entries per chunk, 1,195 cells at 3,346 genes), so memory is the sparse result plus a
    few chunk-sized float64 buffers (about 32 MiB each), whatever ``n_cells``; the counts
    do not depend on ``chunk_size`` (the random stream is consumed in the same order).
    Returns an AnnData with integer counts in a CSR ``X`` (float32).

    Parameters
    ----------
    n_cells, n_genes
        Size of the count matrix (``n_genes`` is ignored with ``reference``).
    n_cell_types, n_batches
        Cell types and batches.
    n_gt_genes
        GT genes (and as many "other" genes).
    gt_fold, other_fold
        Expression factor of the GT / other genes in the cells of the state.
    batch_effect
        Standard deviation of the log-normal gene-wise batch factors.
    library_size
        Mean counts per cell (without ``reference``).
    theta
        NB inverse dispersion (without ``reference``).
    seed
        Seed of everything.
    reference
        AnnData of real counts to fit the statistics to.
    gt_genes
        Gene names of the GT program (with ``reference``).
    chunk_size
        Cells drawn at a time (bounds memory).

    Examples
    --------
    >>> adata = synthetic(n_cells=100, n_genes=80, n_gt_genes=10, seed=1)
    >>> adata.shape, int(adata.var["is_gt"].sum())
    ((100, 80), 10)
    """
    import anndata as ad

    rng = np.random.default_rng(seed)
    if reference is not None:
        log_mu_types, theta_g, ref_lib = _fit_reference(reference, n_cell_types, rng)
        n_cell_types, n_genes = log_mu_types.shape
        names = [str(g) for g in reference.var_names]
    else:
        names = [f"gene{j}" for j in range(n_genes)]
    is_gt = np.zeros(n_genes, dtype=bool)
    if gt_genes is not None:
        is_gt = pd.Index([n.upper() for n in names]).isin([g.upper() for g in gt_genes])
        n_gt_genes = int(is_gt.sum())
    else:
        is_gt[:n_gt_genes] = True
    if n_gt_genes == 0 or 2 * n_gt_genes > n_genes:
        raise ValueError("need 1 <= n_gt_genes <= n_genes / 2 (GT and competing programs).")
    candidates = np.flatnonzero(~is_gt)
    is_other = np.zeros(n_genes, dtype=bool)
    is_other[
        candidates[:n_gt_genes]
        if gt_genes is None
        else rng.choice(candidates, n_gt_genes, replace=False)
    ] = True
    if reference is None:
        base = rng.normal(0.0, 1.0, n_genes)
        type_shift = rng.normal(0.0, 1.0, (n_cell_types, n_genes)) * (
            rng.random((n_cell_types, n_genes)) < 0.2
        )
        log_mu_types = base[None, :] + type_shift
        theta_g = np.full(n_genes, theta)
    batch_shift = rng.normal(0.0, batch_effect, (n_batches, n_genes))
    cell_type = rng.integers(0, n_cell_types, n_cells)
    batch = rng.integers(0, n_batches, n_cells)
    gt_state = rng.integers(0, 2, n_cells)
    other_state = rng.integers(0, 2, n_cells)
    if reference is not None:
        lib = rng.choice(ref_lib, n_cells) * np.exp(0.2 * (batch - batch.mean()))
    else:
        lib = library_size * np.exp(rng.normal(0.0, 0.3, n_cells) + 0.2 * (batch - batch.mean()))
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ENTRIES // n_genes)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
    blocks = []
    for start in range(0, n_cells, chunk_size):  # bounded memory for large n_cells
        sl = slice(start, min(start + chunk_size, n_cells))
        log_mu = log_mu_types[cell_type[sl]]
        log_mu += batch_shift[batch[sl]]
        log_mu += np.log(gt_fold) * (gt_state[sl, None] * is_gt[None, :])
        log_mu += np.log(other_fold) * (other_state[sl, None] * is_other[None, :])
        log_mu -= log_mu.max(axis=1, keepdims=True)
        prop = np.exp(log_mu, out=log_mu)
        prop /= prop.sum(axis=1, keepdims=True)
        prop *= lib[sl, None]  # the mean
        p_success = np.divide(theta_g, np.add(theta_g, prop, out=prop), out=prop)
        blocks.append(sp.csr_matrix(rng.negative_binomial(theta_g, p_success), dtype=np.float32))
        del log_mu, prop, p_success
    counts = sp.vstack(blocks, format="csr")
    del blocks
    # a cell with no count gets one, in a random gene (after all chunks: the draws do not
    # depend on the chunking)
    empty = np.flatnonzero(np.diff(counts.indptr) == 0)
    if len(empty):
        counts = counts.tolil()
        counts[empty, rng.integers(0, n_genes, len(empty))] = 1.0
        counts = counts.tocsr()
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"type{t}" for t in cell_type]),
            "batch": pd.Categorical([f"batch{b}" for b in batch]),
            "gt_state": pd.Categorical([f"gt{s}" for s in gt_state]),
            "other_state": pd.Categorical([f"other{s}" for s in other_state]),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame({"is_gt": is_gt, "is_other": is_other}, index=names)
    return ad.AnnData(counts, obs=obs, var=var)
