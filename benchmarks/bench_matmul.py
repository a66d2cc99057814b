"""The wide products of a scARE step: PyTorch's ``torch.mm`` (MKL) vs oneDNN (CPU).

The five products that dominate an attribution-regularized step at paper scale, with
``rows`` = batch x references: the input gradient ``(dF/dh) W`` (rows x hidden x genes),
the two products of its backward (``dG W^T`` and ``dG^T (dF/dh)``), and the first layer's
forward and weight gradient. Each is timed with ``torch.mm`` and with
``attreg.cpu_matmul`` (oneDNN, float32, same precision), median of ``--repeats`` calls,
and the largest absolute difference between the two results is printed.

Run::

    python benchmarks/bench_matmul.py [--json out.json]
"""

from __future__ import annotations

import argparse

import torch
from _common import median_ms, print_table, record, write_json

from attreg import cpu_matmul


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--genes", type=int, default=3346)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--rows", type=int, nargs="+", default=[128, 512, 1024])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    backend = cpu_matmul.set_cpu_matmul("auto")
    g = torch.Generator().manual_seed(0)
    rows = []
    for n in args.rows:
        gh = torch.randn(n, args.hidden, generator=g)  # dF/dh
        w = torch.randn(args.hidden, args.genes, generator=g)  # first-layer weight (h x G)
        dgrad = torch.randn(n, args.genes, generator=g)  # a (rows x genes) gradient
        products = {
            "input gradient (dF/dh) W": (gh, w),
            "its backward dG W^T": (dgrad, w.t()),
            "its backward dG^T (dF/dh)": (dgrad.t(), gh),
            "first layer x W^T": (dgrad, w.t()),
            "first-layer weight grad": (gh.t(), dgrad),
        }
        for name, (a, b) in products.items():
            t_mm = median_ms(lambda a=a, b=b: a @ b, args.repeats)
            t_ours = median_ms(lambda a=a, b=b: cpu_matmul.matmul(a, b), args.repeats)
            diff = float((cpu_matmul.matmul(a, b) - a @ b).abs().max())
            rows.append(
                record(
                    "matmul",
                    name,
                    batch_size=n,
                    median_ms=t_ours,  # attreg.cpu_matmul
                    torch_mm_ms=t_mm,
                    speedup=t_mm / t_ours,
                    max_abs_diff=diff,
                )
            )
    print_table(
        f"CPU, torch {torch.__version__}, threads={args.threads}, {args.genes} genes x "
        f"{args.hidden} hidden; attreg.cpu_matmul backend: {backend}",
        rows,
        [
            ("batch_size", "rows", ">5"),
            ("variant", "product", "<28"),
            ("torch_mm_ms", "torch.mm ms", ">11.2f"),
            ("median_ms", "attreg ms", ">9.2f"),
            ("speedup", "speedup", ">7.2f"),
        ],
    )
    write_json(rows, args.json)
    return rows


if __name__ == "__main__":
    main()
