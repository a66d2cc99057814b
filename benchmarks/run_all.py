"""Run every benchmark (each prints its table) and collect the figures in one JSON.

Run::

    python benchmarks/run_all.py --json docs/benchmarks.json [--peers] [--quick]

``--peers`` adds ``bench_peers.py`` and ``bench_decoy_mnist.py`` (they need
``pip install -e ".[bench]"``); ``--quick``
uses small settings (a smoke run, not figures to quote).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the benchmarks import their shared _common module


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None)
    p.add_argument("--peers", action="store_true")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    q = args.quick
    runs = {
        "prior": (
            "bench_prior",
            [
                "--steps",
                "3",
                "--ig-steps",
                "2",
                "--batches",
                "32",
                "--features",
                "300",
                "--no-memory",
            ]
            if q
            else [],
        ),
        "scare_step": (
            "bench_scare_step",
            [
                "--steps",
                "3",
                "--ig-steps",
                "2",
                "--batches",
                "32",
                "--cells",
                "500",
                "--genes",
                "300",
            ]
            if q
            else [],
        ),
        "fssf": (
            "bench_fssf",
            ["--cells", "600", "--genes", "300", "--n-random", "2", "--slow-random", "1"]
            if q
            else [],
        ),
        "scaling": (
            "bench_scaling",
            ["--cells", "500", "--genes", "200", "--memory-cells", "500"] if q else [],
        ),
    }
    runs["backed"] = ("bench_backed", ["--cells", "2000", "--genes", "200", "--row-reads", "1"]
                      if q else [])
    runs["matmul"] = ("bench_matmul", ["--rows", "64", "--repeats", "2"] if q else [])
    runs["special"] = ("bench_special", ["--batches", "16", "--repeats", "2"] if q else [])
    runs["models"] = ("bench_models", ["--steps", "2", "--batch", "8"] if q else ["--profile"])
    runs["eg_profile"] = (
        "profile_eg_step",
        ["--cells", "300", "--genes", "700", "--steps", "2", "--batch", "32"] if q else [],
    )
    runs["contention"] = (
        "bench_contention",
        [
            "--steps",
            "2",
            "--warmup",
            "1",
            "--rounds",
            "1",
            "--busy",
            "1",
            "--load",
            "python",
            "--settings",
            "torch default",
            "1 thread",
        ]
        if q
        else [],
    )
    runs["scvi_tools"] = (
        "bench_scvi_tools",
        ["--steps", "2", "--warmup", "1", "--rounds", "1", "--epochs", "2"] if q else [],
    )
    if args.peers:
        runs["peers"] = ("bench_peers", [])
        runs["decoy_mnist"] = ("bench_decoy_mnist", [])
    results = {}
    for key, (module, extra) in runs.items():
        print(f"== {module} ==", flush=True)
        results[key] = _load(module).main(extra)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
