"""Gene-list and GMT files: the format is defined, and malformed or hostile files fail
clearly (comments, duplicate set names, byte-order marks, other encodings, tabs or line
breaks in names written to a GMT)."""

import pytest

from attreg_sc.gt import gmt_line, read_gene_list, read_gmt


def test_gene_list_comments_separators_and_bom(tmp_path):
    path = tmp_path / "genes.txt"
    path.write_bytes("\ufeff# markers of G5 and G6\nCD3D,CD3E\tMS4A1  # B cells\n\nNKG7\n".encode())
    assert read_gene_list(path) == ["CD3D", "CD3E", "MS4A1", "NKG7"]


def test_gene_list_in_another_encoding_names_the_fix(tmp_path):
    path = tmp_path / "genes.txt"
    path.write_bytes("CD3D\nGÈNE\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8.*save the gene list as UTF-8"):
        read_gene_list(path)


def test_gmt_bom_duplicates_and_encoding(tmp_path):
    path = tmp_path / "sets.gmt"
    path.write_bytes("\ufeffSET_A\tdesc\tCD3D\tCD3E\nSET_B\tdesc\tMS4A1\n".encode())
    assert read_gmt(path) == {"SET_A": ["CD3D", "CD3E"], "SET_B": ["MS4A1"]}
    path.write_text("S\td\tA\nT\td\tB\nS\td\tC\n")
    with pytest.raises(ValueError, match="sets.gmt:3: gene set 'S' appears twice"):
        read_gmt(path)
    path.write_bytes(b"S\td\t\xff\xfe\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_gmt(path)


@pytest.mark.parametrize("name", ["G5\tEXTRA\tgene", "G5\nINJECTED\tset\tCD3D", "a\rb"])
def test_gmt_writer_refuses_tabs_and_line_breaks(name):
    with pytest.raises(ValueError, match="tabs or line breaks"):
        gmt_line(name, "MI markers", ["CD3D"])
    assert gmt_line("ok", "fine", ["A", "B"]) == "ok\tfine\tA\tB"


def test_a_mostly_missing_gene_list_is_a_visible_warning(tmp_path, caplog):
    import logging

    import attreg_sc as asc
    from attreg_sc.cli import main
    from attreg_sc.gt import from_genes

    adata = asc.datasets.synthetic(n_cells=60, n_genes=20, n_gt_genes=4, seed=0)
    genes = [adata.var_names[0], *[f"NOT_A_GENE_{i}" for i in range(30)]]
    with caplog.at_level(logging.INFO, logger="attreg_sc"):
        from_genes(adata, genes, name="mostly missing")
        from_genes(adata, list(adata.var_names[:3]) + ["NOT_A_GENE"], name="mostly found")
    levels = {r.getMessage().split(":")[0]: r.levelname for r in caplog.records}
    # any missing gene is a visible warning with the count and the names
    assert levels == {"mostly missing": "WARNING", "mostly found": "WARNING"}
    assert "only 1 of 31 genes found; 30 not in the data: NOT_A_GENE_0" in caplog.text
    assert "3 of 4 genes found; 1 not in the data: NOT_A_GENE" in caplog.text

    path = tmp_path / "data.h5ad"
    adata.write_h5ad(path)
    (tmp_path / "g.txt").write_text("\n".join(genes))
    argv = ["train", path, "--genes", tmp_path / "g.txt", "--max-epochs", 1, "--n-latent", 2]
    caplog.clear()
    assert main([*map(str, argv), "--no-progress", "--out", str(tmp_path / "run")]) == 0
    # the CLI logs at WARNING by default (INFO only with -v): this record is shown
    shown = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("only 1 of 31 genes found" in r.getMessage() for r in shown)
