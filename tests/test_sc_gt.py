import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import attreg_sc as asc
from attreg_sc import gt as G


@pytest.fixture
def small():
    adata = ad.AnnData(sp.csr_matrix(np.ones((6, 5), dtype=np.float32)))
    adata.var_names = ["MAPK1", "Nfkb1", "CD3E", "LYZ", "GNLY"]
    adata.var["symbol"] = ["a", "b", "c", "d", "e"]
    adata.obs["cell_type"] = pd.Categorical(["T", "T", "B", "B", "NK", "NK"])
    return adata


def test_from_genes_case_insensitive_and_reports_missing(small, caplog):
    with caplog.at_level(logging.INFO, logger="attreg_sc.gt"):
        mask = G.from_genes(small, ["mapk1", "NFKB1", "NOT_A_GENE"])
    assert mask.tolist() == [True, True, False, False, False]
    assert "NOT_A_GENE" in caplog.text and "2 of 3" in caplog.text


def test_from_genes_with_var_column(small):
    assert G.from_genes(small, ["C", "e"], gene_key="symbol").tolist() == [0, 0, 1, 0, 1]


@pytest.mark.parametrize(
    "genes, kwargs, exc, match",
    [
        (["X1", "X2"], {}, ValueError, "0 of 2 genes found"),
        ([], {}, ValueError, "empty"),
        ("MAPK1", {}, TypeError, "list of gene names"),
        (["MAPK1"], {"gene_key": "nope"}, KeyError, "gene_key 'nope' not in adata.var"),
    ],
)
def test_from_genes_errors(small, genes, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        G.from_genes(small, genes, **kwargs)


def test_read_and_use_shipped_gmt(small):
    sets = G.read_gmt(asc.datasets.go_gene_sets_path())
    assert len(sets["GO:0043410"]) == 496 and "ABL1" in sets["GO:0043410"]
    assert len(sets["GO:1901224"]) == 67 and "CCL19" in sets["GO:1901224"]
    small.var_names = ["ABL1", "ccl19", "CD3E", "LYZ", "GNLY"]
    vectors = G.from_gmt(small, asc.datasets.go_gene_sets_path())
    assert set(vectors) == {"GO:0043410", "GO:1901224"}
    expected = {k: [g.upper() in set(v) for g in small.var_names] for k, v in sets.items()}
    assert {k: v.tolist() for k, v in vectors.items()} == expected
    assert expected["GO:0043410"][0] and expected["GO:1901224"][1]
    with pytest.raises(KeyError, match="not in"):
        G.from_gmt(small, asc.datasets.go_gene_sets_path(), sets=["GO:1"])


def test_bad_gmt(tmp_path):
    p = tmp_path / "bad.gmt"
    p.write_text("only_a_name\n")
    with pytest.raises(ValueError, match="needs a name, a description and genes"):
        G.read_gmt(p)


def test_from_groups_rows_follow_cells(small):
    g = G.from_groups(small, "cell_type", {"T": ["CD3E"], "B": ["MAPK1", "LYZ"]})
    dense = g.to_dense()
    assert dense.shape == (6, 5)
    assert dense[0].tolist() == [0, 0, 1, 0, 0]
    assert dense[2].tolist() == [1, 0, 0, 1, 0]
    assert not dense[4].any()  # NK has no list -> zero row
    assert np.array_equal(g.rows(np.array([3, 0])), dense[[3, 0]].astype(np.float32))
    with pytest.raises(ValueError, match="no cells"):
        G.from_groups(small, "cell_type", {"Mono": ["LYZ"]})
    with pytest.raises(KeyError, match="groupby"):
        G.from_groups(small, "nope", {"T": ["CD3E"]})


def test_from_cell_matrix(small):
    m = np.zeros((6, 5), dtype=bool)
    m[:, 0] = True
    c = G.from_cell_matrix(small, m)
    assert np.array_equal(c.to_dense(), m)
    with pytest.raises(ValueError, match="expected \\(n_cells, n_genes\\)"):
        G.from_cell_matrix(small, m[:3])
    with pytest.raises(ValueError, match="binary"):
        G.from_cell_matrix(small, m * 2.5)


def test_mutual_information_markers_find_the_planted_genes():
    adata = asc.datasets.synthetic(n_cells=600, n_genes=120, n_gt_genes=15, seed=3)
    is_gt = adata.var["is_gt"].to_numpy()
    glob = G.mutual_information_markers(adata, "gt_state", n_top=15)
    assert glob.dtype == bool and glob.sum() == 15
    assert (glob & is_gt).sum() >= 13
    per_type = G.mutual_information_markers(adata, "gt_state", groupby="cell_type", n_top=15)
    assert isinstance(per_type, G.GroupedGroundTruth)
    assert per_type.table.shape == (3, 120)
    for row in per_type.table:  # ~200 cells per type: noisier; chance level is ~1.9 of 15
        assert (row & is_gt).sum() >= 7
    other = G.mutual_information_markers(adata, "other_state", n_top=15)
    assert (other & adata.var["is_other"].to_numpy()).sum() >= 13


def test_mutual_information_errors():
    adata = asc.datasets.synthetic(n_cells=50, n_genes=40, n_gt_genes=5)
    adata.obs["lab"] = "a"
    with pytest.raises(ValueError, match="one value"):
        G.mutual_information_markers(adata, "lab")
    adata.obs["nan"] = np.nan
    with pytest.raises(ValueError, match="missing value"):
        G.mutual_information_markers(adata, "nan")
    with pytest.raises(ValueError, match="n_top"):
        G.mutual_information_markers(adata, "gt_state", n_top=0)


def test_as_ground_truths_accepts_var_column_and_any_iterable_of_names(small):
    import pandas as pd

    small = small.copy()
    small.var["mine"] = [True, False, True, False, False]
    assert G.as_ground_truths(small, "mine")["gt"].tolist() == [1, 0, 1, 0, 0]
    names = list(small.var_names[[0, 1]])
    expected = [1, 1, 0, 0, 0]
    for form in (set(names), tuple(names), pd.Index(names), np.array(names), iter(names)):
        assert G.as_ground_truths(small, form)["gt"].tolist() == expected
    with pytest.raises(KeyError, match="not a column of adata.var"):
        G.as_ground_truths(small, "no_such_column")
    small.var["numbers"] = np.arange(5)
    with pytest.raises(TypeError, match="must be boolean"):
        G.as_ground_truths(small, "numbers")
    with pytest.raises(ValueError, match="selects every gene"):
        G.as_ground_truths(small, np.ones(5, bool))
