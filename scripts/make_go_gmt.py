"""Regenerate attreg_sc/data/go_mapk_nfkb_human.gmt (the paper's two sets) and
attreg_sc/data/go_panel_human.gmt (the target-share evaluation panel) from Debian's GO
annotation packages.

Source: Debian packages ``r-bioc-org.hs.eg.db`` (3.16.0; Entrez Gene 2022-09) and
``r-bioc-go.db`` (3.16.0; GO 2022-07-01); each ships an SQLite file. No R is needed::

    apt-get download r-bioc-org.hs.eg.db r-bioc-go.db
    for f in r-bioc-*.deb; do dpkg -x "$f" /tmp/godb; done
    python scripts/make_go_gmt.py /tmp/godb attreg_sc/data/go_mapk_nfkb_human.gmt
    python scripts/make_go_gmt.py /tmp/godb attreg_sc/data/go_panel_human.gmt panel

The panel (fixed before any of its sets was trained on): 14 GO biological processes of
26-927 genes, immune and general (metabolism, replication, matrix, translation), split
by size rank into a development half (ranks 0, 2, 4, ...) and a held-out half (ranks 1,
3, 5, ...: the final check, run once); the half is the description's first word.

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
PANEL = {  # in order of size (genes with descendant terms)
    "GO:0060333": "interferon-gamma-mediated signaling pathway",
    "GO:0006635": "fatty acid beta-oxidation",
    "GO:0034340": "response to type I interferon",
    "GO:0006096": "glycolytic process",
    "GO:0042100": "B cell proliferation",
    "GO:0019882": "antigen processing and presentation",
    "GO:0006119": "oxidative phosphorylation",
    "GO:0007596": "blood coagulation",
    "GO:0006260": "DNA replication",
    "GO:0030198": "extracellular matrix organization",
    "GO:0030098": "lymphocyte differentiation",
    "GO:0006914": "autophagy",
    "GO:0006412": "translation",
    "GO:0045087": "innate immune response",
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


def main(root: str, out: str, which: str = "paper") -> None:
    lines = []
    source = "Homo sapiens; with descendant terms; org.Hs.eg.db 3.16.0 / GO.db 3.16.0"
    terms = PANEL if which == "panel" else TERMS
    for rank, (term, name) in enumerate(terms.items()):
        desc = f"{name} ({source})"
        if which == "panel":
            desc = f"{'development' if rank % 2 == 0 else 'held-out'}: {desc}"
        lines.append("\t".join([term, desc, *term_genes(Path(root), term)]))
    Path(out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:4])
