"""Make the mouse pancreas evaluation set (a non-blood tissue) from VeloViz's copy (run once).

Not shipped: the counts are Bastidas-Ponce et al.'s (Development 2019, GEO GSE132188,
mouse pancreatic endocrinogenesis at E15.5, the data of scVelo's ``pancreas`` example),
subsampled to 739 cells by the authors of the Bioconductor package VeloViz (GPL-3), whose
``data/pancreas.rda`` this script reads (``rdata`` parses it; no R is needed)::

    git clone https://github.com/JEFworks-Lab/veloviz   # or the Bioconductor package
    pip install rdata
    python scripts/make_pancreas.py veloviz/data/pancreas.rda pancreas.h5ad

The studies that use it take the file's path (``examples/target_share_panel.py --data
pancreas --pancreas pancreas.h5ad``).

The file: the spliced UMI counts (integers, CSR float32) of the genes seen in >= 3 cells
that are highly variable (2,000, scanpy's ``seurat`` flavour on log-normalized counts) or
in a shipped GO set (human symbols mapped to mouse by case, ``MAPK1`` -> ``Mapk1``);
``obs['cell_type']``: the scVelo annotation VeloViz ships (8 types: Ductal, Ngn3 low EP,
Ngn3 high EP, Pre-endocrine, Alpha, Beta, Delta, Epsilon); one sample, no batch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import rdata
import scanpy as sc
import scipy.sparse as sp

import attreg_sc as asc


def main(rda: str, out: str) -> None:
    data = rdata.conversion.convert(rdata.parser.parse_file(rda))["pancreas"]
    spliced = data["spliced"]  # genes x cells
    counts = np.asarray(spliced.values, dtype=np.float64).T
    if not np.array_equal(counts, np.round(counts)) or counts.min() < 0:
        raise ValueError("the spliced matrix is not counts")
    genes = np.asarray(spliced.coords[spliced.dims[0]].values).astype(str)
    cells = np.asarray(spliced.coords[spliced.dims[1]].values).astype(str)
    labels = pd.Categorical(np.asarray(data["clusters"]).astype(str))
    adata = ad.AnnData(sp.csr_matrix(counts.astype(np.float32)),
                       obs=pd.DataFrame({"cell_type": labels}, index=cells),
                       var=pd.DataFrame(index=genes))
    adata = adata[:, np.asarray((adata.X > 0).sum(0)).ravel() >= 3].copy()
    logged = adata.copy()
    sc.pp.normalize_total(logged, target_sum=1e4)
    sc.pp.log1p(logged)
    sc.pp.highly_variable_genes(logged, n_top_genes=2000, flavor="seurat")
    sets = {**asc.datasets.go_gene_sets(), **asc.datasets.go_panel("all")}
    in_sets = set(asc.datasets.mouse_symbols([g for genes_ in sets.values() for g in genes_]))
    keep = logged.var["highly_variable"].to_numpy() | np.isin(adata.var_names, list(in_sets))
    adata = adata[:, keep].copy()
    adata.var["highly_variable"] = logged.var["highly_variable"].to_numpy()[keep]
    adata.uns["source"] = ("Bastidas-Ponce et al. 2019 (GEO GSE132188), 739 cells as "
                           "subsampled in VeloViz's data/pancreas.rda; spliced counts")
    adata.write_h5ad(Path(out), compression="gzip")
    print(f"{out}: {adata.n_obs} cells x {adata.n_vars} genes, "
          f"{int(adata.var['highly_variable'].sum())} highly variable")


if __name__ == "__main__":
    main(*sys.argv[1:3])
