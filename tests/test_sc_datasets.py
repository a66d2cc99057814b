"""The shipped real datasets: raw integer counts, the labels the studies need, valid input."""

from __future__ import annotations

import numpy as np
import pytest

import attreg_sc as asc
from attreg_sc.validation import batch_codes_of, check_anndata

SHIPPED = {
    "pbmc3k": (asc.datasets.pbmc3k, None),
    "pbmc68k": (asc.datasets.pbmc68k, None),
    "pbmc_two_runs": (asc.datasets.pbmc_two_runs, "batch"),
    "wu2020_tcells": (asc.datasets.wu2020_tcells, "batch"),
}


@pytest.fixture(scope="module", params=sorted(SHIPPED))
def shipped(request):
    load, batch_key = SHIPPED[request.param]
    return request.param, load(), batch_key


def test_counts_are_raw_non_negative_integers(shipped):
    name, adata, _ = shipped
    values = adata.X.data
    assert values.size > 0, name
    assert (values >= 0).all() and (values == np.round(values)).all(), name
    assert adata.X.dtype == np.float32
    # Raw UMI counts: per-cell totals in the hundreds to tens of thousands, not normalized.
    totals = np.asarray(adata.X.sum(1)).ravel()
    assert totals.min() >= 100 and np.median(totals) > 500, (name, totals.min())


def test_labels_complete_and_validation_accepts(shipped):
    name, adata, batch_key = shipped
    assert "cell_type" in adata.obs and not adata.obs["cell_type"].isna().any()
    assert adata.var_names.is_unique
    check_anndata(adata, batch_key=batch_key)  # raises on anything a model would refuse
    _, categories = batch_codes_of(adata, batch_key)
    n_batches = 1 if batch_key is None else adata.obs[batch_key].nunique()
    assert len(categories) == n_batches
    if batch_key is not None:
        assert n_batches >= 2, name


def test_go_sets_overlap_every_shipped_dataset(shipped):
    name, adata, _ = shipped
    sets = asc.datasets.go_gene_sets()
    gt = asc.gt.from_genes(adata, sets["GO:0043410"], name="MAPK")
    assert 0 < gt.sum() < adata.n_vars / 2, (name, int(gt.sum()))


def test_two_runs_keep_both_runs_balanced():
    adata = asc.datasets.pbmc_two_runs()
    counts = adata.obs["batch"].value_counts()
    assert counts.to_dict() == {"pbmc_5k": 200, "pbmc_10k": 200}
    # Marker-scored types: the main PBMC lineages are all present in both runs.
    for t in ("CD4 T", "CD14 Monocytes", "B", "NK"):
        per_run = adata.obs.loc[adata.obs["cell_type"] == t, "batch"].value_counts()
        assert (per_run > 0).all() and len(per_run) == 2, t


def test_simulator_counts_do_not_depend_on_the_chunk_size():
    import attreg_sc as asc

    kw = dict(n_cells=300, n_genes=50, n_gt_genes=5, seed=4, library_size=0.3)  # many empty
    whole = asc.datasets.synthetic(chunk_size=10_000, **kw)
    for chunk in (1, 7, None):
        part = asc.datasets.synthetic(chunk_size=chunk, **kw)
        assert (part.X != whole.X).nnz == 0
        assert part.obs.equals(whole.obs)
    assert (whole.X.sum(1) > 0).all()  # cells without counts got one
    assert (np.asarray(whole.X.sum(1)).ravel() == 1).sum() > 100
    import pytest

    with pytest.raises(ValueError, match="chunk_size"):
        asc.datasets.synthetic(chunk_size=0, **kw)


def test_pbmc3k_ships_every_gene_and_the_selection_one_argument_away():
    full = asc.datasets.pbmc3k()
    assert full.shape == (2700, 13714) and "CD3D" in full.var_names
    hvg, selected = full.var["highly_variable"], full.var["selected"]
    assert hvg.sum() == 2000 and selected.sum() == 2265 and not (hvg & ~selected).any()
    compact = asc.datasets.pbmc3k(genes="selected")
    assert list(compact.var_names) == list(full.var_names[selected])
    assert (compact.X != full[:, selected].X).nnz == 0
    go = asc.datasets.go_gene_sets()["GO:0043410"]
    assert asc.gt.from_genes(compact, go).sum() == asc.gt.from_genes(full, go).sum() == 269
    with pytest.raises(ValueError, match="'all' or 'selected'"):
        asc.datasets.pbmc3k(genes="hvg")


def test_the_go_panel_spans_set_sizes_in_both_halves_and_meets_pbmc3k():
    dev, held = asc.datasets.go_panel(), asc.datasets.go_panel("held-out")
    assert len(dev) == len(held) == 7 and not set(dev) & set(held)
    assert asc.datasets.go_panel("all") == {**dev, **held}
    for half in (dev, held):
        sizes = sorted(len(g) for g in half.values())
        assert 15 <= sizes[0] < 100 and 700 < sizes[-1] <= 1500, sizes  # small to large
    genes = set(asc.datasets.pbmc3k().var_names)
    found = {t: len(set(g) & genes) for t, g in {**dev, **held}.items()}
    assert min(found.values()) >= 15, found  # every set is in the data
    with pytest.raises(ValueError, match="half must be"):
        asc.datasets.go_panel("test")
