"""The demo's training step on an idle and on a loaded machine, per thread setting.

torch's CPU build runs its intra-op threads on GNU OpenMP (libgomp), whose idle threads
spin before they sleep. When other processes want the same cores, the spinning threads
steal the cores from the thread doing the work and a step takes many times longer. This
benchmark times the demo's step (PBMC 3k, 2,700 cells x 2,265 genes, batch 128, the
default EG prior) in a fresh process per setting, first on the idle machine, then with
one busy process per core of each kind of load -- a single-threaded Python loop
(``while True: pass``), and another PyTorch job with torch's default threads (small
products in a loop, like a second training run) -- and prints the slowdown loaded/idle.
With one busy process per core, a fair share is about 2x.

Settings (each in its own process, because libgomp reads its environment when torch
loads): torch's defaults; ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at once: what
``attreg-sc`` sets for itself when the variable is unset); ``GOMP_SPINCOUNT=10000`` (a
short spin); one thread. The settings take turns within each load condition, for
``--rounds`` rounds; the table shows the median over rounds. ``threads='auto'`` is
attreg_sc's policy (``SCARE.train(threads="auto")``, the CLI's default): as many threads
as the cores other processes leave free, measured from ``/proc/stat`` when it starts.

Run::

    python benchmarks/bench_contention.py [--steps 40] [--rounds 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SETTINGS = {
    "torch default": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
    "1 thread": {"OMP_NUM_THREADS": "1"},
    # attreg_sc's threads="auto" (the CLI's default): the cores other processes leave free
    "threads='auto'": {"BENCH_THREADS_AUTO": "1"},
}

CHILD = """
import json, os, statistics, sys, time
import numpy as np, torch
import attreg, attreg_sc as asc
sys.path.insert(0, {here!r})
from _scare import scare_step
steps, warmup = int(sys.argv[1]), int(sys.argv[2])
if os.environ.get("BENCH_THREADS_AUTO"):
    from attreg_sc.train.threads import busy_cores_elsewhere, recommended_threads
    torch.set_num_threads(recommended_threads(busy_cores_elsewhere()))
attreg.retain_freed_cpu_memory()
adata = asc.datasets.pbmc3k(genes="selected")
gt = asc.gt.from_genes(adata, asc.datasets.go_gene_sets()["GO:0043410"])
asc.SCARE.setup_anndata(adata)
step = scare_step(adata, gt=gt)
rng = np.random.default_rng(0)
times = []
for i in range(warmup + steps):
    idx = np.sort(rng.choice(adata.n_obs, 128, replace=False))
    t0 = time.perf_counter()
    step(idx)
    if i >= warmup:
        times.append(time.perf_counter() - t0)
print(json.dumps({"median_ms": 1000 * statistics.median(times),
                  "threads": torch.get_num_threads()}))
"""


def run_child(env_extra: dict, steps: int, warmup: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.pop("OMP_NUM_THREADS", None)
    env.update(env_extra)
    code = CHILD.replace("{here!r}", repr(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(
        [sys.executable, "-c", code, str(steps), str(warmup)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


LOADS = {
    # a CPU-bound single-threaded process per core (compilers, Python scripts)
    "python": "while True: pass",
    # another PyTorch job with torch's defaults: small products in a loop, each a parallel
    # region, its idle OpenMP threads spinning between them (a second training run)
    "torch": (
        "import torch\na = torch.randn(256, 256)\nwhile True:\n    a = torch.tanh(a @ a / 16)\n"
    ),
}


def start_load(kind: str, n: int) -> list[subprocess.Popen]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    return [subprocess.Popen([sys.executable, "-c", LOADS[kind]], env=env) for _ in range(n)]


def stop_load(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def main(argv: list[str] | None = None) -> list[dict]:
    from _common import print_table, record, write_json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--busy", type=int, default=os.cpu_count(), help="busy processes (loaded)")
    p.add_argument(
        "--load",
        nargs="+",
        default=["python", "torch"],
        choices=list(LOADS),
        help="kinds of background load: python loops, or PyTorch jobs with default threads",
    )
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    results: dict[tuple[str, str], list[float]] = {}
    threads: dict[tuple[str, str], int] = {}
    load_before = os.getloadavg()[0]
    conditions = ["idle", *args.load]
    for condition in conditions:
        procs = start_load(condition, args.busy) if condition != "idle" else []
        try:
            time.sleep(1.0 if procs else 0.0)
            for r in range(args.rounds):
                order = args.settings if r % 2 == 0 else args.settings[::-1]
                for name in order:
                    res = run_child(SETTINGS[name], args.steps, args.warmup)
                    results.setdefault((name, condition), []).append(res["median_ms"])
                    threads[(name, condition)] = res["threads"]
        finally:
            stop_load(procs)
    rows = []
    for name in args.settings:
        idle = statistics.median(results[(name, "idle")])
        loaded = {k: statistics.median(results[(name, k)]) for k in args.load}
        rows.append(
            record(
                "contention",
                name,
                batch_size=128,
                median_ms=idle,
                threads=threads[(name, "idle")],
                idle_ratio_to_default=None,
                **{f"{k}_loaded_ms": v for k, v in loaded.items()},
                **{f"{k}_slowdown": v / idle for k, v in loaded.items()},
                **{f"{k}_threads": threads[(name, k)] for k in args.load},
            )
        )
    if args.settings[0] == "torch default":
        for row in rows:
            row["idle_ratio_to_default"] = row["median_ms"] / rows[0]["median_ms"]
    columns = [
        ("variant", "setting", "<24"),
        ("threads", "idle threads", ">12"),
        ("median_ms", "idle ms", ">8.1f"),
        ("idle_ratio_to_default", "idle x default", ">15.2f"),
    ]
    for k in args.load:
        columns += [
            (f"{k}_threads", "threads", ">7"),
            (f"{k}_loaded_ms", f"{k}-loaded ms", f">{len(k) + 10}.1f"),
            (f"{k}_slowdown", "slowdown", ">9.2f"),
        ]
    print_table(
        f"demo step (PBMC 3k, batch 128, default EG prior): idle, and with {args.busy} busy "
        f"process(es) of each load kind ({', '.join(args.load)}) on {os.cpu_count()} cores; "
        f"load average before: {load_before:.2f}; median of {args.rounds} rounds x "
        f"{args.steps} steps",
        rows,
        columns,
    )
    write_json(rows, args.json)
    return rows


if __name__ == "__main__":
    main()
