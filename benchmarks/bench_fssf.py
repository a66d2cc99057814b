"""FSSF cost on ~10k cells: the linear-first-layer path vs encoding swapped counts.

Synthetic counts (call them so): 10,000 cells x 3,346 genes, 4 cell types, 2 batches,
a 300-gene GT program. A scARE model is trained briefly (the FSSF cost does not depend
on how well), then FSSF is timed with ``n_random`` random-gene controls on the fast path
and, with fewer repetitions, on the generic path (materialised swapped counts); the
per-repetition ratio is reported from the same run.

Run::

    python benchmarks/bench_fssf.py [--cells 10000] [--n-random 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import print_table, record, write_json

import attreg_sc as asc
from attreg_sc.metrics import fssf


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=10_000)
    p.add_argument("--genes", type=int, default=3346)
    p.add_argument("--n-random", type=int, default=100)
    p.add_argument("--slow-random", type=int, default=5, help="repetitions on the slow path")
    p.add_argument("--resolution", type=float, default=0.3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    adata = asc.datasets.synthetic(
        n_cells=args.cells,
        n_genes=args.genes,
        n_cell_types=4,
        n_gt_genes=min(300, args.genes // 4),
        seed=0,
    )
    gt = adata.var["is_gt"].to_numpy()
    asc.SCARE.setup_anndata(adata, batch_key="batch")
    model = asc.SCARE(adata, gt=gt, w_attr=100.0)
    t0 = time.perf_counter()
    model.train(max_epochs=3, early_stopping=False, enable_progress_bar=False)
    train_s = time.perf_counter() - t0
    rows = []
    for variant, fast, n_random in (
        ("fast (linear first layer)", True, args.n_random),
        ("generic (swapped counts)", False, args.slow_random),
    ):
        t0 = time.perf_counter()
        res = fssf(model, gt, "cell_type", resolution=args.resolution, n_random=n_random, fast=fast)
        sec = time.perf_counter() - t0
        rows.append(
            record(
                "fssf",
                variant,
                median_ms=1000 * sec,  # one timed run: all repetitions
                cells=args.cells,
                pairs=len(res.table),
                n_random=n_random,
                seconds=sec,
                seconds_per_repetition=sec / (n_random + 1),
            )
        )
    base = rows[0]["seconds_per_repetition"]
    for r in rows:
        r["ratio_per_repetition_to_fast"] = r["seconds_per_repetition"] / base
    print_table(
        f"synthetic {args.cells} cells x {args.genes} genes, threads={args.threads}, "
        f"training 3 epochs: {train_s:.1f} s",
        rows,
        [
            ("variant", "variant", "<28"),
            ("pairs", "pairs", ">5"),
            ("n_random", "n_random", ">8"),
            ("seconds", "seconds", ">8.1f"),
            ("seconds_per_repetition", "s/rep", ">7.2f"),
            ("ratio_per_repetition_to_fast", "x fast", ">7.1f"),
        ],
    )
    write_json(rows, args.json)
    return rows


if __name__ == "__main__":
    main()
