"""Make the two small real sets *with batches* shipped in attreg_sc/data/ (run once).

Sources (files inside registry packages, no installation needed; see the shared data
notes): ``pip download --no-deps --no-binary :all: scvi-tools==1.4.2`` (sdist) and
``pip download --no-deps scirpy==0.22.5`` (wheel), then unpack.

``pbmc_two_runs.h5ad``
    ``tests/test_data/pbmc_5k_protein_v3.h5ad`` and ``pbmc_10k_protein_v3.h5ad`` of the
    scvi-tools 1.4.2 sdist: 200 cells each of two real 10x PBMC runs (two batches,
    ``obs['batch']`` = ``pbmc_5k`` / ``pbmc_10k``), dense integer counts, no labels, and
    the counts of the 14 CITE-seq antibodies both panels share
    (``obsm['protein_expression']``, for totalVI).
    Steps: keep the genes of both files; keep the genes seen in >= 3 of the 400 cells
    that are highly variable (2,000, scanpy's ``seurat`` flavour on log-normalized
    counts, ``batch_key='batch'``), in either shipped GO set, or in the PBMC markers.
    Cell types (``obs['cell_type']``) are assigned per cell, independently of any model:
    scanpy's ``score_genes`` for each marker list of
    :data:`attreg_sc.datasets.PBMC_MARKERS` on log-normalized counts of all shared
    genes, the highest score names the cell (``"unassigned"`` when every score <= 0).
``wu2020_tcells.h5ad``
    ``scirpy/tests/data/wu2020_200_v0_11.h5ad`` of the scirpy 0.22.5 wheel: 200 tumour /
    adjacent-tissue / blood T cells of 14 patients (Wu et al. 2020), integer counts.
    ``obs['cell_type']`` is the authors' ``cluster_orig`` (16 T-cell subtypes),
    ``obs['batch']`` the patient (one 10x library set each), ``obs['source']`` the tissue.
    Same gene selection as above (``batch_key='batch'``).

Usage::

    python scripts/make_batch_sets.py SCVI_SDIST_DIR SCIRPY_WHEEL_DIR attreg_sc/data
"""

from __future__ import annotations

import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from attreg_sc.datasets import PBMC_MARKERS, go_gene_sets


def select_genes(adata: ad.AnnData, n_hvg: int = 2000) -> np.ndarray:
    """HVG (per batch, seurat flavour) + GO genes + markers among genes in >= 3 cells."""
    seen = np.asarray((adata.X > 0).sum(0)).ravel() >= 3
    a = adata[:, seen].copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.highly_variable_genes(a, n_top_genes=n_hvg, flavor="seurat", batch_key="batch")
    keep = a.var["highly_variable"].to_numpy()
    wanted = {g.upper() for genes in go_gene_sets().values() for g in genes}
    wanted |= {g.upper() for genes in PBMC_MARKERS.values() for g in genes}
    keep |= a.var_names.str.upper().isin(wanted)
    return adata.var_names.isin(a.var_names[keep])


def marker_cell_types(adata: ad.AnnData, seed: int = 0) -> pd.Categorical:
    """Per-cell argmax of scanpy's marker scores (no clustering, no model)."""
    a = adata.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    scores = {}
    for name, genes in PBMC_MARKERS.items():
        present = [g for g in genes if g in a.var_names]
        sc.tl.score_genes(a, present, score_name="s", random_state=seed)
        scores[name] = a.obs["s"].to_numpy()
    table = pd.DataFrame(scores, index=a.obs_names)
    best = table.idxmax(axis=1).where(table.max(axis=1) > 0, "unassigned")
    return pd.Categorical(best)


def write(out: ad.AnnData, path: Path, source: str) -> None:
    out.X = sp.csr_matrix(out.X).astype(np.int32)
    out.uns["source"] = source
    out.write_h5ad(path, compression="gzip")
    print(path, out)
    print(out.obs["cell_type"].value_counts().to_dict(), out.obs["batch"].value_counts().to_dict())


def protein_table(runs: dict) -> pd.DataFrame:
    """The CITE-seq antibody counts of both runs for the antibodies of both panels (the
    5k run has 29, the 10k run 14, all among the 29: 14 columns, integers), one row per
    cell named like the cells of the shipped file (``obsm['protein_expression']``)."""
    tables = {
        name: pd.DataFrame(
            np.asarray(a.obsm["protein_expression"], dtype=np.int64),
            index=[f"{name}_{i}" for i in a.obs_names],
            columns=[str(p).removesuffix("_TotalSeqB") for p in a.uns["protein_names"]],
        )
        for name, a in runs.items()
    }
    shared = [p for p in tables["pbmc_10k"].columns if p in set(tables["pbmc_5k"].columns)]
    return pd.concat([t[shared] for t in tables.values()])


def main(scvi_dir: str, scirpy_dir: str, dst: str) -> None:
    data = Path(scvi_dir) / "tests" / "test_data"
    runs = {
        "pbmc_5k": ad.read_h5ad(data / "pbmc_5k_protein_v3.h5ad"),
        "pbmc_10k": ad.read_h5ad(data / "pbmc_10k_protein_v3.h5ad"),
    }
    shared = runs["pbmc_5k"].var_names.intersection(runs["pbmc_10k"].var_names)
    proteins = protein_table(runs)
    parts = []
    for name, a in runs.items():
        b = ad.AnnData(
            sp.csr_matrix(np.asarray(a[:, shared].X)),
            obs=pd.DataFrame({"batch": name}, index=[f"{name}_{i}" for i in a.obs_names]),
            var=pd.DataFrame(index=shared),
        )
        parts.append(b)
    both = ad.concat(parts)
    both.obsm["protein_expression"] = proteins.loc[both.obs_names]
    both.obs["batch"] = both.obs["batch"].astype("category")
    both.obs["cell_type"] = marker_cell_types(both)
    keep = select_genes(both)
    write(
        both[:, keep].copy(),
        Path(dst) / "pbmc_two_runs.h5ad",
        "10x PBMC 5k and 10k protein v3 runs, 200 cells each (scvi-tools 1.4.2 sdist test "
        "data); genes: HVG per batch + GO sets + PBMC markers; cell types: per-cell marker "
        "scores; made by scripts/make_batch_sets.py",
    )
    wu = ad.read_h5ad(Path(scirpy_dir) / "scirpy" / "tests" / "data" / "wu2020_200_v0_11.h5ad")
    obs = pd.DataFrame(
        {
            "cell_type": wu.obs["cluster_orig"].astype(str).astype("category"),
            "batch": wu.obs["patient"].astype(str).astype("category"),
            "source": wu.obs["source"].astype(str).astype("category"),
        },
        index=wu.obs_names,
    )
    wu = ad.AnnData(sp.csr_matrix(wu.X), obs=obs, var=pd.DataFrame(index=wu.var_names))
    wu.var_names_make_unique()
    keep = select_genes(wu)
    write(
        wu[:, keep].copy(),
        Path(dst) / "wu2020_tcells.h5ad",
        "Wu et al. 2020 T cells, 200 cells of 14 patients (scirpy 0.22.5 wheel test data); "
        "cell_type = cluster_orig, batch = patient; genes: HVG per batch + GO sets + PBMC "
        "markers; made by scripts/make_batch_sets.py",
    )


if __name__ == "__main__":
    main(*sys.argv[1:4])
