"""Make the compact PBMC 3k file shipped in attreg_sc/data/ (run once; recorded here).

Source: ``pbmc3k_counts.h5ad`` (10x Genomics PBMC 3k, 2,700 cells x 13,714 genes seen in
>= 3 cells, integer UMI counts; the same matrix ships in the ``desc`` 2.1.1 wheel as
``desc/datasets/pbmc.h5ad``). Steps:

1. keep all 2,700 cells and all 13,714 genes; ``var['highly_variable']`` marks the 2,000
   highly variable genes (scanpy's ``seurat`` flavour on log-normalized counts) and
   ``var['selected']`` the compact selection the package used until 0.x: the highly
   variable genes, the genes of either shipped GO set and of the marker lists below
   (2,265 genes; ``pbmc3k(genes="selected")``);
2. annotate cell types: normalize to 1e4, log1p, HVG, PCA (50), kNN (15), Leiden
   (resolution 0.8, seed 0) on all 13,714 genes; each cluster is named after the
   marker set with the highest mean z-scored expression (classic PBMC markers);
3. write integer counts (CSR, int32) + ``obs['cell_type']``, ``obs['leiden']`` +
   ``var['gene_ids']``, ``var['highly_variable']``, ``var['selected']``, gzip-compressed.

Usage::

    python scripts/make_pbmc3k.py ../shared/data/pbmc3k_counts.h5ad attreg_sc/data/pbmc3k.h5ad
"""

from __future__ import annotations

import sys

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from attreg_sc.datasets import PBMC_MARKERS, go_gene_sets


def annotate(adata: ad.AnnData, seed: int = 0) -> pd.DataFrame:
    """Leiden clusters named by the classic PBMC markers (returns obs columns)."""
    a = adata.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.highly_variable_genes(a, n_top_genes=2000, flavor="seurat")
    sc.pp.pca(a, n_comps=50, mask_var="highly_variable", random_state=seed)
    sc.pp.neighbors(a, n_neighbors=15, random_state=seed)
    sc.tl.leiden(a, resolution=0.8, random_state=seed, flavor="igraph", n_iterations=2)
    x = a.X.toarray() if sp.issparse(a.X) else a.X
    z = (x - x.mean(0)) / (x.std(0) + 1e-8)
    names = {}
    for cl in a.obs["leiden"].cat.categories:
        rows = (a.obs["leiden"] == cl).to_numpy()
        scores = {
            t: z[np.ix_(rows, a.var_names.isin(genes))].mean() for t, genes in PBMC_MARKERS.items()
        }
        names[cl] = max(scores, key=scores.get)
    cell_type = a.obs["leiden"].map(names).astype("category")
    return pd.DataFrame({"cell_type": cell_type, "leiden": a.obs["leiden"]}, index=a.obs_names)


def main(src: str, dst: str) -> None:
    full = ad.read_h5ad(src)
    obs = annotate(full)
    a = full.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.highly_variable_genes(a, n_top_genes=2000, flavor="seurat")
    hvg = a.var["highly_variable"].to_numpy()
    wanted = {g.upper() for genes in go_gene_sets().values() for g in genes}
    wanted |= {g.upper() for genes in PBMC_MARKERS.values() for g in genes}
    var = full.var[["gene_ids"]].copy()
    var["highly_variable"] = hvg
    var["selected"] = hvg | full.var_names.str.upper().isin(wanted)
    out = ad.AnnData(sp.csr_matrix(full.X).astype(np.int32), obs=obs, var=var)
    out.uns["source"] = (
        "10x Genomics PBMC 3k (Zheng et al. 2017), raw UMI counts, all 13,714 genes seen in "
        ">= 3 cells; var['highly_variable']: 2,000 HVG; var['selected']: HVG + GO "
        "GO:0043410/GO:1901224 + PBMC markers (2,265); cell types: Leiden (res 0.8) named by "
        "markers; made by scripts/make_pbmc3k.py"
    )
    out.write_h5ad(dst, compression="gzip")
    print(out)
    print(out.obs["cell_type"].value_counts())


if __name__ == "__main__":
    main(*sys.argv[1:3])
