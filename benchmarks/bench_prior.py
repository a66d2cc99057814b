"""Cost of an attribution prior per training step, at the scARE paper's scale.

An MLP autoencoder (n_features -> hidden -> latent -> hidden -> n_features, LayerNorm,
ReLU) trained with an MSE reconstruction loss; the prior sits on the encoder. For each
batch size it times a plain step, the step plus an EG prior (k = 1, references from
the minibatch) on the sum of the latent (``EG k=1``), on one random latent direction
per step (``EG random``) and on every latent unit (``EG per-unit``, one map per unit in
one batched pass), and the step plus an IG prior (m = 20), interleaving them so that
machine noise hits them alike, and reports median ms/step and the ratio to the plain
step measured in the same run. Peak RSS of each configuration is measured in a fresh
subprocess (``--memory``).

Run::

    python benchmarks/bench_prior.py                     # table
    python benchmarks/bench_prior.py --json bench.json   # also write the figures
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time

import torch
from _common import print_table, record, write_json
from torch import nn

import attreg
from attreg.reducers import OutputUnits, RandomDirections

REDUCERS = ("eg", "eg_random", "eg_units")
KINDS = {
    "plain": "plain",
    "eg": "EG k=1",
    "eg_random": "EG random",
    "eg_units": "EG per-unit",
    "ig": "IG m=20",
}
SLOW = ("ig", "eg_units")


def make_model(n_features: int, hidden: int, latent: int) -> nn.Module:
    enc = nn.Sequential(
        nn.Linear(n_features, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, latent)
    )
    dec = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, n_features))
    return nn.ModuleDict({"encoder": enc, "decoder": dec})


def make_step(kind: str, model: nn.ModuleDict, gt: torch.Tensor):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    prior = None
    if kind in REDUCERS:
        gen = torch.Generator().manual_seed(0)
        latent = model["encoder"][-1].out_features
        reducer = {
            "eg": "sum",
            "eg_random": RandomDirections(generator=gen),
            "eg_units": OutputUnits(latent),
        }[kind]
        prior = attreg.AttributionPrior(
            model["encoder"], gt, method="eg", n_samples=1, generator=gen, reducer=reducer
        )
    elif kind == "ig":
        prior = attreg.AttributionPrior(model["encoder"], gt, method="ig", n_steps=20)

    def step(x: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss = (model["decoder"](model["encoder"](x)) - x).pow(2).mean()
        if prior is not None:
            loss = loss + prior(x)
        loss.backward()
        opt.step()

    return step


def data(batch: int, n_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.log1p(torch.poisson(torch.rand(batch, n_features, generator=g) * 2, generator=g))
    gt = torch.zeros(n_features)
    gt[: n_features // 7] = 1
    return x, gt


def time_configs(batch: int, args) -> dict[str, float]:
    torch.manual_seed(0)
    x, gt = data(batch, args.features)
    steps = {}
    for kind in KINDS:
        steps[kind] = make_step(kind, make_model(args.features, args.hidden, args.latent), gt)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(args.warmup + args.steps):
        for kind, step in steps.items():
            if kind in SLOW and i >= args.warmup + args.ig_steps:
                continue
            t0 = time.perf_counter()
            step(x)
            if i >= args.warmup:
                times[kind].append(time.perf_counter() - t0)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def vm_hwm_mb() -> float:
    """Peak RSS of this process (VmHWM; unlike ru_maxrss it is not inherited over exec)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mb(kind: str, batch: int, args) -> float:
    code = (
        "import sys, resource, torch; sys.path.insert(0, 'benchmarks');"
        "import bench_prior as b;"
        f"torch.set_num_threads({args.threads});"
        f"x, gt = b.data({batch}, {args.features});"
        f"m = b.make_model({args.features}, {args.hidden}, {args.latent});"
        f"s = b.make_step('{kind}', m, gt);"
        "[s(x) for _ in range(5)];"
        "print(b.vm_hwm_mb())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[128, 512])
    p.add_argument("--features", type=int, default=3346)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--latent", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--ig-steps", type=int, default=10, help="timed IG steps (slow)")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for batch in args.batches:
        ms = time_configs(batch, args)
        for kind, label in KINDS.items():
            rows.append(
                record(
                    "prior_mlp",
                    label,
                    batch_size=batch,
                    median_ms=ms[kind],
                    ratio_to_plain=ms[kind] / ms["plain"],
                    peak_rss_mb=peak_rss_mb(kind, batch, args) if args.memory else None,
                )
            )
    columns = [
        ("batch_size", "batch", ">5"),
        ("variant", "variant", "<11"),
        ("median_ms", "ms/step", ">9.2f"),
        ("ratio_to_plain", "x plain", ">8.2f"),
    ]
    print_table(
        f"torch {torch.__version__}, threads={args.threads}, features={args.features}, "
        f"hidden={args.hidden}, latent={args.latent}, median of {args.steps} steps "
        f"({args.ig_steps} for IG and per-unit)",
        rows,
        columns + ([("peak_rss_mb", "peak RSS MB", ">12.0f")] if args.memory else []),
    )
    write_json(rows, args.json)
    return rows


if __name__ == "__main__":
    main()
