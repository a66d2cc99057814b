"""The NB likelihood's special functions on a minibatch: torch vs attreg_sc.special (CPU).

``lgamma(x + theta) - lgamma(theta)`` is evaluated on every entry of a ``batch x genes``
minibatch in each training step, and its gradient with respect to the per-gene inverse
dispersion ``theta`` is ``digamma(x + theta) - digamma(theta)``. For each batch size:
``torch.digamma`` vs :func:`attreg_sc.special.digamma`, and the forward + backward (to
``theta``) of the two ``torch.lgamma`` calls vs :func:`attreg_sc.special.log_gamma_ratio`;
medians of ``--repeats`` calls, plus the largest error of each ``theta`` gradient against
float64, relative to the gradient's largest entry.

Then the whole NB log-likelihood of the minibatch with its gradients to the means and the
per-gene ``theta`` (what a training step's reconstruction term costs): the reference
composition that autograd derives, the zero-aware form through autograd (attreg_sc up to
this version, kept here as the baseline), and the zero-aware form with its derivatives in
closed form (:func:`attreg_sc.distributions.negative_binomial_log_prob` now), at the
counts' density ``--density`` (PBMC 3k's minibatches: about 8% non-zero), taking turns.

``--step``: instead, training steps of the demo's model (PBMC 3k, 2,265 genes, GO:0043410,
batch 128) with the previous and the closed form swapped in, plain (``w_attr = 0``) and
with the default prior, the four taking turns in blocks of ``--repeats`` steps for
``--rounds`` rounds.

Run::

    python benchmarks/bench_special.py [--step] [--json out.json]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time

import numpy as np
import torch
from _common import interleaved_median_ms, median_ms, print_table, record, write_json

import attreg
import attreg_sc as asc
from attreg_sc import distributions, special


def _zero_aware_autograd(x, mu, theta, eps=1e-8):
    """attreg_sc's earlier zero-aware NB log-likelihood: the count terms on the non-zero
    counts, the derivatives by autograd (the baseline of the closed form)."""
    log_theta_mu = torch.log(theta + mu + eps)
    out = theta * (torch.log(theta + eps) - log_theta_mu)
    with torch.no_grad():
        rows, cols = x.nonzero(as_tuple=True)
    xv = x[rows, cols]
    theta_v = theta.expand_as(mu)[rows, cols]
    values = (
        xv * (torch.log(mu[rows, cols] + eps) - log_theta_mu[rows, cols])
        + special.log_gamma_ratio(xv, theta_v)
        - torch.lgamma(xv + 1)
    )
    return out.index_put((rows, cols), values, accumulate=True)


def _composition(x, mu, theta):
    with attreg.fast_paths(False):
        return distributions.negative_binomial_log_prob(x, mu, theta)


NB_VARIANTS = {
    "NB + grads, composition": _composition,
    "NB + grads, zero-aware autograd": _zero_aware_autograd,
    "NB + grads, closed form": distributions.negative_binomial_log_prob,
}
NB_BASELINE = "NB + grads, zero-aware autograd"


def nb_rows(
    n: int, genes: int, density: float, repeats: int, g: torch.Generator
) -> list[dict]:
    """The NB log-likelihood and its gradients to ``mu`` and ``theta`` (1 x genes)."""
    counts = torch.poisson(torch.rand(n, genes, generator=g) * 8, generator=g)
    counts *= torch.rand(n, genes, generator=g) < density
    mu = torch.rand(n, genes, generator=g) * 4 + 0.01
    theta = torch.exp(torch.randn(1, genes, generator=g))

    def run(fn, x=counts, m=mu, t=theta):
        m, t = m.clone().requires_grad_(), t.clone().requires_grad_()
        return torch.autograd.grad(-fn(x, m, t).sum(-1).mean(), (m, t))

    ms = interleaved_median_ms(
        {name: (lambda fn=fn: run(fn)) for name, fn in NB_VARIANTS.items()}, repeats, block=5
    )
    exact = run(
        distributions.negative_binomial_log_prob, counts.double(), mu.double(), theta.double()
    )
    rows = []
    for name, fn in NB_VARIANTS.items():
        grad_theta = run(fn)[1].double()
        rows.append(
            record(
                "special",
                f"{name} ({density:.0%} non-zero)",
                batch_size=n,
                median_ms=ms[name],
                speedup=ms[NB_BASELINE] / ms[name],
                theta_grad_rel_err=float(
                    (grad_theta - exact[1]).abs().max() / exact[1].abs().max()
                ),
            )
        )
    return rows


def step_rows(repeats: int, rounds: int) -> list[dict]:
    """The demo model's plain and prior steps with each zero-aware form, taking turns."""
    from _scare import scare_step  # builds the one model (scvi-tools)

    adata = asc.datasets.pbmc3k(genes="selected")
    log = logging.getLogger("attreg_sc.gt")
    level = log.level
    log.setLevel(logging.ERROR)  # the GO set's missing genes: known, not news here
    try:
        gt = asc.gt.from_genes(adata, asc.datasets.go_gene_sets()["GO:0043410"])
    finally:
        log.setLevel(level)
    asc.SCARE.setup_anndata(adata)
    steps = {"plain": scare_step(adata, gt=gt, w_attr=0.0),
             "prior": scare_step(adata, gt=gt, w_attr=30.0)}  # fmt: skip
    closed = distributions._negative_binomial_log_prob_sparse

    def previous(x, mu, theta, eps):
        if x.count_nonzero() > distributions._SPARSE_BELOW * x.numel():
            return closed(x, mu, theta, eps)  # dense counts: the composition either way
        return _zero_aware_autograd(x, mu, theta, eps)

    forms = {"zero-aware autograd": previous, "closed form": closed}
    rng = np.random.default_rng(0)
    batches = [np.sort(rng.choice(adata.n_obs, 128, replace=False)) for _ in range(200)]
    load = os.getloadavg()[0]
    times: dict[tuple[str, str], list[float]] = {}
    try:
        for r in range(rounds):
            for form, fn in forms.items():
                distributions._negative_binomial_log_prob_sparse = fn
                for kind, step in steps.items():
                    step(batches[r])  # untimed: the variant's steady state
                    for i in range(repeats):
                        t0 = time.perf_counter()
                        step(batches[(r * repeats + i) % len(batches)])
                        times.setdefault((kind, form), []).append(time.perf_counter() - t0)
    finally:
        distributions._negative_binomial_log_prob_sparse = closed
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    rows = [
        record(
            "special_step",
            f"{kind}, {form}",
            batch_size=128,
            median_ms=ms[kind, form],
            ratio_to_plain=ms[kind, form] / ms["plain", form],
            x_previous_form=ms[kind, form] / ms[kind, "zero-aware autograd"],
            threads=torch.get_num_threads(),
            load_average=load,
        )
        for kind in steps
        for form in forms
    ]
    print_table(
        f"The demo's training step (PBMC 3k, 2265 genes, batch 128), threads="
        f"{torch.get_num_threads()}, load average at start {load:.2f}, {rounds} rounds",
        rows,
        [
            ("variant", "variant", "<28"),
            ("median_ms", "step ms", ">8.2f"),
            ("ratio_to_plain", "x plain", ">8.3f"),
            ("x_previous_form", "x previous form", ">15.3f"),
        ],
    )
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--genes", type=int, default=3346)
    p.add_argument("--batches", type=int, nargs="+", default=[128, 512])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--density",
        type=float,
        nargs="+",
        default=[0.08, 0.25],
        help="shares of non-zero counts for the NB likelihood rows",
    )
    p.add_argument("--step", action="store_true", help="time training steps (see above)")
    p.add_argument("--rounds", type=int, default=6, help="rounds of --step")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.step:
        rows = step_rows(args.repeats, args.rounds)
        write_json(rows, args.json)
        return rows
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
        for density in args.density:
            rows.extend(nb_rows(n, args.genes, density, args.repeats, g))
    print_table(
        f"CPU, torch {torch.__version__}, threads={args.threads}, {args.genes} genes",
        rows,
        [
            ("batch_size", "batch", ">5"),
            ("variant", "function", "<49"),
            ("median_ms", "median ms", ">9.3f"),
            ("speedup", "speedup", ">7.2f"),
            ("theta_grad_rel_err", "grad err", ">8.1e"),
        ],
    )
    write_json(rows, args.json)
    return rows


if __name__ == "__main__":
    main()
