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
