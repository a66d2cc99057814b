"""Peak memory of training from a backed .h5ad vs the number of cells (synthetic).

Writes synthetic CSR counts chunk by chunk straight into an ``.h5ad`` (never holding
the whole matrix), then, in a fresh process per size, opens it with ``backed="r"``,
validates it and trains one epoch (rows streamed from disk), and reports the peak RSS
(VmHWM). Memory should not grow with the number of cells (only the per-cell vectors —
batch codes, library sizes — do, a few bytes per cell).

Run::

    python benchmarks/bench_backed.py [--cells 100000 1000000] [--json out.json]

It also times the row reads of random minibatches with h5py's default chunk cache and
without one (``--row-reads``), the cause of the time per cell growing with the file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import record, write_json

CHILD = """
import json, logging, time, warnings, torch, anndata as ad, attreg_sc as asc
warnings.filterwarnings("ignore"); logging.disable(logging.WARNING)
torch.set_num_threads({threads})
t0 = time.perf_counter()
adata = ad.read_h5ad({path!r}, backed="r")
asc.SCARE.setup_anndata(adata, batch_key="batch")
m = asc.SCARE(adata, n_hidden=128)
t1 = time.perf_counter()
m.train(max_epochs=1, batch_size={batch}, train_size=1.0, enable_progress_bar=False,
        threads=None, limit_train_batches={limit})
t2 = time.perf_counter()
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0] / 1024
print(json.dumps({{"setup_s": t1 - t0, "epoch_s": t2 - t1, "peak_rss_mb": hwm}}))
"""
#: the rows of random sorted minibatches read as scvi-tools' loader reads them (anndata's
#: backed CSR), through h5py's default chunk cache or without one (``rdcc_nbytes=0``, what
#: ``SCARE.train`` uses): median of 12 minibatches after 2 warm ones, the file's pages cached
READS_CHILD = """
import json, time, numpy as np, h5py, anndata as ad
f = h5py.File({path!r}, "r", **({kwargs}))
x = ad.io.sparse_dataset(f["X"])
rng = np.random.default_rng(0)
ts = []
for _ in range(14):
    rows = np.sort(rng.choice(x.shape[0], {batch}, replace=False))
    t0 = time.perf_counter(); x[rows]; ts.append(time.perf_counter() - t0)
print(json.dumps({{"ms": 1e3 * float(np.median(ts[2:]))}}))
"""
#: attreg 0.1's hand-written SCARE (``--baseline-tree``: its checkout, commit fe6f216)
OLD_CHILD = """
import json, time, torch, anndata as ad, attreg_sc as asc
torch.set_num_threads({threads})
t0 = time.perf_counter()
adata = ad.read_h5ad({path!r}, backed="r")
m = asc.SCARE(adata, batch_key="batch", n_hidden=128)
t1 = time.perf_counter()
m.train(max_epochs=1, batch_size={batch}, early_stopping=False, progress_bar=False,
        validation_fraction=0.0)
t2 = time.perf_counter()
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0] / 1024
print(json.dumps({{"setup_s": t1 - t0, "epoch_s": t2 - t1, "peak_rss_mb": hwm}}))
"""


def write_synthetic_h5ad(path: Path, n_cells: int, n_genes: int, chunk: int = 50_000,
                         chunk_elements: int = 2**20) -> int:
    """CSR counts written chunk by chunk (h5py, anndata's on-disk layout), ``data`` and
    ``indices`` stored in HDF5 chunks of ``chunk_elements`` values; returns nnz."""
    import anndata as ad
    import h5py
    import pandas as pd
    from anndata.io import write_elem

    import attreg_sc as asc

    nnz = 0
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        x = f.create_group("X")
        x.attrs.update(
            {
                "encoding-type": "csr_matrix",
                "encoding-version": "0.1.0",
                "shape": (n_cells, n_genes),
            }
        )
        data = x.create_dataset("data", (0,), maxshape=(None,), dtype="float32",
                                chunks=(chunk_elements,))
        ind = x.create_dataset("indices", (0,), maxshape=(None,), dtype="int32",
                               chunks=(chunk_elements,))
        indptr = [0]
        batches = []
        for s in range(0, n_cells, chunk):
            n = min(chunk, n_cells - s)
            block = asc.datasets.synthetic(
                n_cells=n, n_genes=n_genes, n_gt_genes=n_genes // 10, library_size=800.0, seed=s
            )
            m = block.X
            data.resize((nnz + m.nnz,))
            ind.resize((nnz + m.nnz,))
            data[nnz:] = m.data
            ind[nnz:] = m.indices
            indptr.extend((m.indptr[1:] + nnz).tolist())
            nnz += m.nnz
            batches.append(block.obs["batch"].astype(str).to_numpy())
        x.create_dataset("indptr", data=np.asarray(indptr, dtype=np.int64))
        obs = pd.DataFrame(
            {"batch": pd.Categorical(np.concatenate(batches))},
            index=[f"c{i}" for i in range(n_cells)],
        )
        write_elem(f, "obs", obs)
        write_elem(f, "var", pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)]))
        for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            write_elem(f, key, {})
    ad.read_h5ad(path, backed="r").file.close()  # readable by anndata
    return nnz


def _child(code: str, env: dict | None = None, cwd: str | None = None) -> dict:
    # ``-c`` puts the working folder first on sys.path: a baseline tree runs from its own
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=cwd)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[dict]:
    import os

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, nargs="+", default=[100_000, 200_000, 1_000_000])
    p.add_argument("--genes", type=int, default=1000)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit-train-batches", type=float, default=1.0,
                   help="share of an epoch's steps to run (Lightning's limit_train_batches)")
    p.add_argument("--baseline-tree", default=None,
                   help="a checkout of attreg 0.1 (fe6f216): its SCARE on the same files")
    p.add_argument("--chunk-elements", type=int, default=2**20,
                   help="HDF5 chunk of the counts' data and indices, in values (anndata's "
                        "own writer lets h5py choose: about 41,500 at 1,000,000 cells)")
    p.add_argument("--row-reads", type=int, default=3, metavar="ROUNDS",
                   help="rounds of minibatch row reads, with and without the chunk cache, "
                        "alternating (0: none)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.cells:
            path = Path(tmp) / f"{n}.h5ad"
            t0 = time.perf_counter()
            nnz = write_synthetic_h5ad(path, n, args.genes, chunk_elements=args.chunk_elements)
            write_s = time.perf_counter() - t0
            runs = {"SCARE (scvi-tools loader)": _child(CHILD.format(
                path=str(path), threads=args.threads, batch=args.batch,
                limit=args.limit_train_batches))}
            if args.baseline_tree:
                env = {**os.environ, "PYTHONPATH": args.baseline_tree}
                runs["SCARE 0.1 (hand-written loader)"] = _child(OLD_CHILD.format(
                    path=str(path), threads=args.threads, batch=args.batch), env,
                    args.baseline_tree)
            for cache, kwargs in (("default chunk cache", {}),
                                  ("no chunk cache", {"rdcc_nbytes": 0})) * args.row_reads:
                res = _child(READS_CHILD.format(path=str(path), kwargs=kwargs,
                                                batch=args.batch))
                rows.append(record("backed_row_reads", cache, batch_size=args.batch,
                                   median_ms=res["ms"], cells=n, genes=args.genes,
                                   chunk_elements=args.chunk_elements,
                                   threads=args.threads, load_average=os.getloadavg()[0]))
                print(f"row reads, {cache:<20} {n:>9} cells: {res['ms']:.1f} ms per "
                      f"{args.batch} rows", flush=True)
            for variant, res in runs.items():
                share = args.limit_train_batches if variant.startswith("SCARE (") else 1.0
                rows.append(
                    record(
                        "backed",
                        variant,
                        batch_size=args.batch,
                        median_ms=1000 * res["epoch_s"],  # one timed (share of an) epoch
                        peak_rss_mb=res["peak_rss_mb"],
                        cells=n,
                        genes=args.genes,
                        nnz=nnz,
                        in_memory_csr_mb=nnz * 8 / 2**20,
                        chunk_elements=args.chunk_elements,
                        write_s=write_s,
                        setup_s=res["setup_s"],
                        epoch_s=res["epoch_s"] / share,
                        epoch_share=share,
                        us_per_cell=1e6 * res["epoch_s"] / (share * n),
                        threads=args.threads,
                        load_average=os.getloadavg()[0],
                    )
                )
                r = rows[-1]
                print(
                    f"{variant:<32} {n:>9} cells x {args.genes} genes: peak RSS "
                    f"{r['peak_rss_mb']:.0f} MB (CSR in memory: {r['in_memory_csr_mb']:.0f} MB), "
                    f"setup {r['setup_s']:.1f} s, epoch {r['epoch_s']:.1f} s "
                    f"({r['us_per_cell']:.1f} us/cell)",
                    flush=True,
                )
    write_json(rows, args.json)
    return rows


if __name__ == "__main__":
    main()
