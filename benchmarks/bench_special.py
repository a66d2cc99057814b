"""The NB likelihood's special functions on a minibatch: torch vs attreg_sc.special (CPU).

``lgamma(x + theta) - lgamma(theta)`` is evaluated on every entry of a ``batch x genes``
minibatch in each training step, and its gradient with respect to the per-gene inverse
dispersion ``theta`` is ``digamma(x + theta) - digamma(theta)``. For each batch size:
``torch.digamma`` vs :func:`attreg_sc.special.digamma`, and the forward + backward (to
``theta``) of the two ``torch.lgamma`` calls vs :func:`attreg_sc.special.log_gamma_ratio`;
medians of ``--repeats`` calls, plus the largest error of each ``theta`` gradient against
float64, relative to the gradient's largest entry.

Run::

    python benchmarks/bench_special.py [--json out.json]
"""

from __future__ import annotations

import argparse

import torch
from _common import median_ms, print_table, record, write_json

import attreg
from attreg_sc import special


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--genes", type=int, default=3346)
    p.add_argument("--batches", type=int, nargs="+", default=[128, 512])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    attreg.retain_freed_cpu_memory()  # as in training (the CLI's setting)
    g = torch.Generator().manual_seed(0)
    rows = []
    for n in args.batches:
        # counts (25% non-zero, up to a few hundred) plus per-gene inverse dispersions
        counts = torch.poisson(torch.rand(n, args.genes, generator=g) * 4, generator=g)
        counts *= torch.rand(n, args.genes, generator=g) < 0.25
        theta = torch.exp(torch.randn(args.genes, generator=g))
        y = counts + theta
        theta_g = theta.clone().requires_grad_()

        def torch_ratio(x, t):
            return torch.lgamma(x + t) - torch.lgamma(t)

        def theta_grad(fn, x=counts, t=theta_g):
            return torch.autograd.grad(fn(x, t).sum(), t)[0]

        timed = {
            "torch.digamma": (lambda y=y: torch.digamma(y), None),
            "special.digamma": (lambda y=y: special.digamma(y), "torch.digamma"),
            "lgamma ratio + grad, torch": (lambda: theta_grad(torch_ratio), None),
            "log_gamma_ratio + grad": (
                lambda: theta_grad(special.log_gamma_ratio),
                "lgamma ratio + grad, torch",
            ),
        }
        ms = {name: median_ms(fn, args.repeats) for name, (fn, _) in timed.items()}
        exact = theta_grad(torch_ratio, counts.double(), theta.double().requires_grad_())

        def grad_error(fn, exact=exact):
            return float((theta_grad(fn).double() - exact).abs().max() / exact.abs().max())

        errors = {
            "lgamma ratio + grad, torch": grad_error(torch_ratio),
            "log_gamma_ratio + grad": grad_error(special.log_gamma_ratio),
        }
        for name, (_, baseline) in timed.items():
            rows.append(
                record(
                    "special",
                    name,
                    batch_size=n,
                    median_ms=ms[name],
                    speedup=ms[baseline] / ms[name] if baseline else None,
                    theta_grad_rel_err=errors.get(name),
                )
            )
    print_table(
        f"CPU, torch {torch.__version__}, threads={args.threads}, {args.genes} genes",
        rows,
        [
            ("batch_size", "batch", ">5"),
            ("variant", "function", "<27"),
            ("median_ms", "median ms", ">9.3f"),
            ("speedup", "speedup", ">7.2f"),
            ("theta_grad_rel_err", "grad err", ">8.1e"),
        ],
    )
    write_json(rows, args.json)
    return rows


if __name__ == "__main__":
    main()
