"""Where attreg's EG k = 1 training step spends its time (the step of ``bench_peers.py``).

The peers benchmark finds attreg's k = 1 step at parity with the authors' TensorFlow
explainer. This profiles the same step (scARE's encoder at paper scale, batch 128, EG
with one reference from the minibatch, the paper's abs_minmax + MSE, backward, Adam)
with ``torch.profiler`` and prints the operators by self CPU time, grouped into the
wide products (``batch x genes x hidden``) and everything else, to show what bounds it.

Run::

    python benchmarks/profile_eg_step.py [--steps 30] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from _common import print_table, record, write_json
from bench_peers import _attreg_eg_step, _setup

import attreg

PRODUCTS = ("mkldnn", "addmm", "mm", "linear", "matmul", "bmm")


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=4000)
    p.add_argument("--genes", type=int, default=3346)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    attreg.retain_freed_cpu_memory()
    _, _, module, x, b, gt = _setup(args.cells, args.genes, args.batch)
    step = _attreg_eg_step(module, x, b, gt, 1)
    for _ in range(10):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ops = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    groups: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for e in events:
        kind = "wide products" if any(k in e.key for k in PRODUCTS) else "other operators"
        groups[kind] += e.self_cpu_time_total
        calls[kind] += e.count
    rows = [
        record(
            "eg_step_profile",
            e.key,
            batch_size=args.batch,
            median_ms=e.self_cpu_time_total / args.steps / 1000,
            calls_per_step=e.count / args.steps,
            share=e.self_cpu_time_total / total,
        )
        for e in ops[: args.top]
    ]
    rows += [
        record(
            "eg_step_profile",
            f"[{kind}]",
            batch_size=args.batch,
            median_ms=t / args.steps / 1000,
            calls_per_step=calls[kind] / args.steps,
            share=t / total,
        )
        for kind, t in groups.items()
    ]
    print_table(
        f"attreg EG k=1 step, batch {args.batch} x {args.genes} genes, threads={args.threads}, "
        f"torch {torch.__version__}: self CPU time per step (profiler; {args.steps} steps, "
        f"total {total / args.steps / 1000:.2f} ms per step)",
        rows,
        [
            ("variant", "operator", "<42"),
            ("median_ms", "ms/step", ">8.3f"),
            ("calls_per_step", "calls/step", ">11.1f"),
            ("share", "share", ">6.2f"),
        ],
    )
    write_json(rows, args.json)
    return rows


if __name__ == "__main__":
    main()
