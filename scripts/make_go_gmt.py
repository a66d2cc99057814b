"""Regenerate attreg_sc/data/go_mapk_nfkb_human.gmt from Debian's GO annotation packages.

Source: Debian packages ``r-bioc-org.hs.eg.db`` (3.16.0; Entrez Gene 2022-09) and
``r-bioc-go.db`` (3.16.0; GO 2022-07-01); each ships an SQLite file. No R is needed::

    apt-get download r-bioc-org.hs.eg.db r-bioc-go.db
    for f in r-bioc-*.deb; do dpkg -x "$f" /tmp/godb; done
    python scripts/make_go_gmt.py /tmp/godb attreg_sc/data/go_mapk_nfkb_human.gmt

A term's genes are those annotated to the term or to any descendant term (GO's
"with offspring" convention), as human gene symbols, sorted.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

TERMS = {
    "GO:0043410": "positive regulation of MAPK cascade",
    "GO:1901224": "positive regulation of NIK/NF-kappaB signaling",
}
ORG = "usr/lib/R/site-library/org.Hs.eg.db/extdata/org.Hs.eg.sqlite"
GO = "usr/lib/R/site-library/GO.db/extdata/GO.sqlite"


def term_genes(root: Path, term: str) -> list[str]:
    go = sqlite3.connect(root / GO)
    offspring = [
        r[0]
        for r in go.execute(
            "select o.go_id from go_bp_offspring f join go_term t on t._id=f._id "
            "join go_term o on o._id=f._offspring_id where t.go_id=?",
            (term,),
        )
    ]
    org = sqlite3.connect(root / ORG)
    genes: set[str] = set()
    for t in [term, *offspring]:
        genes |= {
            r[0]
            for r in org.execute(
                "select distinct s.symbol from go_bp b join gene_info s on s._id=b._id "
                "where b.go_id=?",
                (t,),
            )
        }
    return sorted(genes)


def main(root: str, out: str) -> None:
    lines = []
    for term, name in TERMS.items():
        desc = f"{name} (Homo sapiens; with descendant terms; org.Hs.eg.db 3.16.0 / GO.db 3.16.0)"
        lines.append("\t".join([term, desc, *term_genes(Path(root), term)]))
    Path(out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
