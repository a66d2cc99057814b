"""Tutorial 4: the ``attreg-sc`` command line, end to end, on a small synthetic file.

Equivalent shell commands (see docs/cli.md)::

    attreg-sc train data.h5ad --batch-key batch --genes gt.txt --out run
    attreg-sc fssf run/model data.h5ad --batch-key batch --genes gt.txt \\
        --cell-type-key cell_type --out fssf.csv
    attreg-sc markers data.h5ad --label gt_state --groupby cell_type --out markers.gmt
    attreg-sc report --model scARE=run/model data.h5ad --batch-key batch --genes gt.txt \\
        --cell-type-key cell_type --out report

Run::

    python examples/tutorial_cli.py [--workdir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import attreg_sc as asc
from attreg_sc.cli import main as cli


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=None)
    p.add_argument("--max-epochs", type=int, default=20)
    args = p.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp())
    adata = asc.datasets.synthetic(n_cells=800, n_genes=200, n_gt_genes=20, seed=0)
    adata.write_h5ad(work / "data.h5ad")
    (work / "gt.txt").write_text("\n".join(adata.var_names[adata.var["is_gt"]]))
    common = ["--batch-key", "batch", "--genes", str(work / "gt.txt")]
    steps = [
        [
            "train",
            str(work / "data.h5ad"),
            *common,
            "--max-epochs",
            str(args.max_epochs),
            "--no-progress",
            "--out",
            str(work / "run"),
        ],
        [
            "fssf",
            str(work / "run" / "model"),
            str(work / "data.h5ad"),
            *common,
            "--cell-type-key",
            "cell_type",
            "--n-random",
            "20",
            "--out",
            str(work / "fssf.csv"),
        ],
        [
            "markers",
            str(work / "data.h5ad"),
            "--label",
            "gt_state",
            "--groupby",
            "cell_type",
            "--n-top",
            "20",
            "--out",
            str(work / "markers.gmt"),
        ],
        [
            "report",
            "--model",
            f"scARE={work / 'run' / 'model'}",
            str(work / "data.h5ad"),
            *common,
            "--cell-type-key",
            "cell_type",
            "--label-key",
            "gt_state",
            "--n-random",
            "20",
            "--out",
            str(work / "report"),
        ],
    ]
    for argv_ in steps:
        print("$ attreg-sc " + " ".join(argv_))
        code = cli(argv_)
        if code:
            raise SystemExit(code)
    return work


if __name__ == "__main__":
    main()
