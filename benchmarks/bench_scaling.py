"""Time per epoch and peak memory vs number of cells and genes (synthetic, CPU).

Each configuration is written once as a sparse ``.h5ad`` (synthetic counts, call them
so), then trained for one epoch in a fresh process that reports its wall time per epoch
and its peak RSS (VmHWM), so that data generation does not count. Also compares the
peak RSS of a plain and an EG-regularized epoch at paper scale (12,000 x 3,346), and
the peak RSS of the largest run with the dense size of its count matrix.

Run::

    python benchmarks/bench_scaling.py [--json out.json] [--plot docs/scaling.png]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import record, write_json

import attreg_sc as asc

CHILD = """
import json, logging, sys, time, warnings, torch, anndata as ad, attreg_sc as asc
warnings.filterwarnings("ignore"); logging.disable(logging.WARNING)
torch.set_num_threads({threads})
adata = ad.read_h5ad({path!r})
asc.SCARE.setup_anndata(adata, batch_key="batch")
gt = adata.var["is_gt"].to_numpy() if {w} > 0 else None
m = asc.SCARE(adata, gt=gt, w_attr={w})
t0 = time.perf_counter()
m.train(max_epochs=1, train_size=1.0, enable_progress_bar=False, threads=None)
sec = time.perf_counter() - t0
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0] / 1024
print(json.dumps({{"seconds_per_epoch": sec, "peak_rss_mb": hwm}}))
"""


def run_child(path: Path, w: float, threads: int) -> dict:
    code = CHILD.format(path=str(path), w=w, threads=threads)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    p.add_argument("--genes", type=int, nargs="+", default=[1000, 3346, 10_000])
    p.add_argument("--memory-cells", type=int, default=12_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None)
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        configs = [("cells", n, 3346, 0.0) for n in args.cells]
        configs += [("genes", 10_000, g, 0.0) for g in args.genes]
        mc = args.memory_cells
        configs += [("memory", mc, 3346, 0.0), ("memory", mc, 3346, 100.0)]
        for axis, n_cells, n_genes, w in configs:
            path = Path(tmp) / f"{n_cells}_{n_genes}.h5ad"
            if not path.exists():
                adata = asc.datasets.synthetic(
                    n_cells=n_cells,
                    n_genes=n_genes,
                    n_cell_types=5,
                    n_gt_genes=min(300, n_genes // 4),
                    library_size=1000.0,
                    seed=0,
                )
                adata.write_h5ad(path)
                nnz = adata.X.nnz
                del adata
            res = run_child(path, w, args.threads)
            rows.append(
                record(
                    f"scaling_{axis}",
                    "EG k=1" if w else "plain",
                    batch_size=128,  # SCARE.train's default
                    median_ms=1000 * res["seconds_per_epoch"],  # one timed epoch
                    peak_rss_mb=res["peak_rss_mb"],
                    cells=n_cells,
                    genes=n_genes,
                    nnz=nnz,
                    dense_mb=n_cells * n_genes * 4 / 2**20,
                    seconds_per_epoch=res["seconds_per_epoch"],
                )
            )
            r = rows[-1]
            print(
                f"{axis:<7} {r['variant']:<7} {n_cells:>8} cells {n_genes:>6} genes "
                f"{r['seconds_per_epoch']:>8.1f} s/epoch {r['peak_rss_mb']:>8.0f} MB peak "
                f"(dense X {r['dense_mb']:.0f} MB)",
                flush=True,
            )
    mem = [r for r in rows if r["benchmark"] == "scaling_memory"]
    if len(mem) == 2:
        print(
            f"peak RSS EG / plain at {args.memory_cells} x 3,346: "
            f"{mem[1]['peak_rss_mb'] / mem[0]['peak_rss_mb']:.2f}"
        )
    cells = [r for r in rows if r["benchmark"] == "scaling_cells"]
    if len(cells) > 1:
        per = [r["seconds_per_epoch"] / r["cells"] * 1e4 for r in cells]
        print("seconds per epoch per 10k cells: " + ", ".join(f"{v:.2f}" for v in per))
    write_json(rows, args.json)
    if args.plot:
        plot(rows, args.plot)
    return rows


def plot(rows: list[dict], path: str) -> None:
    """Seconds per epoch against cells and against genes (two panels) as an image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, axis, label in (
        (axes[0], "cells", "cells (3,346 genes)"),
        (axes[1], "genes", "genes (10,000 cells)"),
    ):
        data = [r for r in rows if r["benchmark"] == f"scaling_{axis}"]
        ax.plot([r[axis] for r in data], [r["seconds_per_epoch"] for r in data], "o-")
        ax.set_xlabel(label)
        ax.set_ylabel("seconds per epoch (CPU, 2 threads)")
        ax.grid(alpha=0.3)
    fig.suptitle("scARE plain epoch time (synthetic counts)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
