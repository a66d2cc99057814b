"""Cost of a scARE training step with and without an attribution prior (paper scale).

Synthetic counts (call them so): 12,000 cells x 3,346 genes, 2 batches, sparse CSR, as
in the scARE paper; model: n_hidden 128, n_latent 10, NB likelihood, gene dispersion.
For each batch size, the full step of ``SCARE`` (scvi-tools' row gather, the training
plan's step: forward, loss, prior; backward, Adam; ``benchmarks/_scare.py``) is timed
for the plain cVAE (w_attr = 0); with an EG prior (k = 1, references from
the minibatch) on one random latent direction per step with the share loss (the
default; and with the references drawn within the cell type, ``references="label"``),
on the paper's sum with abs_minmax + MSE, and on every latent dimension
(``per_dimension``); and with an IG prior (m = 20), interleaved so that machine noise
hits all variants alike; medians after warm-up and ratios to the plain step of the same
run.

Run::

    python benchmarks/bench_scare_step.py [--batches 128 512] [--json out.json]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from _common import print_table, record, write_json
from _scare import scare_step

import attreg
import attreg_sc as asc

VARIANTS = {
    "plain": {},
    "EG k=1": {"attribution": "eg"},  # the default prior: one random direction, share loss
    # the paper's F, reparameterization and loss
    "EG paper": {
        "attribution": "eg",
        "reducer": "sum",
        "reparameterizer": "abs_minmax",
        "loss": "mse",
    },
    # the default prior with references drawn within the cell type (references="label")
    "EG k=1 label": {"attribution": "eg", "references": "label"},
    "EG per-dim": {"attribution": "eg", "reducer": "per_dimension"},
    "IG m=20": {"attribution": "ig"},
}
SLOW = ("IG", "EG per-dim")  # timed for --ig-steps steps only


def make_data(n_cells: int, n_genes: int):
    adata = asc.datasets.synthetic(
        n_cells=n_cells, n_genes=n_genes, n_cell_types=5, n_gt_genes=min(300, n_genes // 4), seed=0
    )
    # labels registered for "EG k=1 label"; the other variants do not read them
    asc.SCARE.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    return adata


def make_runner(adata, variant: str, device: str):
    w = 0.0 if variant == "plain" else 30.0
    return scare_step(adata, device=device, gt="is_gt", w_attr=w, n_steps=20, **VARIANTS[variant])


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=12_000)
    p.add_argument("--genes", type=int, default=3346)
    p.add_argument("--batches", type=int, nargs="+", default=[128, 512])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--ig-steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--retain-freed-memory",
        action="store_true",
        help="attreg.retain_freed_cpu_memory() first (glibc keeps freed blocks for reuse)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.retain_freed_memory:
        attreg.retain_freed_cpu_memory()
    adata = make_data(args.cells, args.genes)
    rng = np.random.default_rng(0)
    rows = []
    for batch in args.batches:
        runners = {v: make_runner(adata, v, args.device) for v in VARIANTS}
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for i in range(args.warmup + args.steps):
            idx = np.sort(rng.choice(adata.n_obs, batch, replace=False))
            for v, run in runners.items():
                if v.startswith(SLOW) and i >= args.warmup + args.ig_steps:
                    continue
                t0 = time.perf_counter()
                run(idx)
                if i >= args.warmup:
                    times[v].append(time.perf_counter() - t0)
        plain = statistics.median(times["plain"])
        for v, ts in times.items():
            med = statistics.median(ts)
            rows.append(
                record(
                    "scare_step",
                    v,
                    batch_size=batch,
                    median_ms=1000 * med,
                    ratio_to_plain=med / plain,
                    n_steps=len(ts),
                )
            )
    print_table(
        f"scARE step, synthetic {args.cells} x {args.genes}, 2 batches, device={args.device}, "
        f"threads={args.threads}, torch {torch.__version__}",
        rows,
        [
            ("batch_size", "batch", ">5"),
            ("variant", "variant", "<12"),
            ("median_ms", "median ms", ">10.2f"),
            ("ratio_to_plain", "x plain", ">8.2f"),
            ("n_steps", "steps", ">6"),
        ],
    )
    write_json(rows, args.json)
    return rows


if __name__ == "__main__":
    main()
