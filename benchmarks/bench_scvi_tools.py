"""scARE on scvi-tools (SCAREVI) against today's hand-written SCARE: step and epoch.

Same data (the demo's: PBMC 3k, 2,700 cells x 2,265 genes, GT = GO:0043410), same
architecture (n_hidden 128, n_latent 10, one layer, NB, gene dispersion, learned library
size, LayerNorm, batch into the encoder), same prior (EG, k = 1, one random direction,
share loss, w_attr = 30), batch 128, CPU.

* **step**: one training step on the same minibatches, the variants taking turns:
  SCARE's ``training_step`` (row gather, forward, loss, prior, backward, Adam) and
  SCAREVI's plan ``forward`` (scvi-tools' module forward and loss, the prior from the
  captured encoder inputs) plus backward and Adam, outside Lightning, on tensors built
  as scvi-tools' data loader builds them;
* **epoch**: ``train(max_epochs=n)`` end to end (no validation) for n = 1 and 4, rounds
  interleaved; per epoch = (t4 - t1) / 3, set-up = t1 - per epoch. Lightning's cost per
  step = per-epoch time / steps - the step above.

Run::

    python benchmarks/bench_scvi_tools.py [--steps 40] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
import warnings

import numpy as np
import torch
from _common import print_table, record, write_json

import attreg_sc as asc
from attreg_sc.train.trainer import TrainingPlan, make_optimizer, minibatch, training_step

ARCH = dict(n_hidden=128, n_latent=10, n_layers=1)


def scare_step(adata, gt, w_attr: float):
    model = asc.SCARE(adata, gt=gt, w_attr=w_attr, accelerator="cpu", **ARCH)
    module = model.module.train()
    plan = TrainingPlan(w_attribution=w_attr)
    opt = make_optimizer(module.parameters(), plan)
    prior = model._prior_loss if w_attr > 0 else None
    codes = torch.from_numpy(model.data.batch_codes)

    def step(idx: np.ndarray) -> None:
        training_step(
            module, opt, *minibatch(model.data, codes, idx, model.device), idx, plan, 1.0, prior
        )

    return step


def scarevi_step(adata, gt, w_attr: float):
    from scvi import REGISTRY_KEYS

    from attreg_sc.scvi_tools import SCAREVI

    model = SCAREVI(adata.copy(), gt=gt, w_attr=w_attr, **ARCH)
    plan = SCAREVI._training_plan_cls(model.module, prior=model.prior_config)
    plan.train()
    opt = plan.configure_optimizers()["optimizer"]  # as Lightning builds it
    manager = model.adata_manager
    x_all = manager.get_from_registry(REGISTRY_KEYS.X_KEY)
    batch_all = manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)
    labels_all = manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)

    def step(idx: np.ndarray) -> None:
        tensors = {  # what scvi-tools' AnnDataLoader yields for these rows
            REGISTRY_KEYS.X_KEY: torch.from_numpy(x_all[idx].toarray().astype(np.float32)),
            REGISTRY_KEYS.BATCH_KEY: torch.from_numpy(np.asarray(batch_all)[idx].astype(np.int64)),
            REGISTRY_KEYS.LABELS_KEY: torch.from_numpy(
                np.asarray(labels_all)[idx].astype(np.int64)
            ),
        }
        _, _, out = plan.forward(tensors, loss_kwargs=plan.loss_kwargs)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    return step


def time_steps(adata, gt, steps: int, warmup: int) -> dict[str, float]:
    runners = {
        "SCARE plain": scare_step(adata, gt, 0.0),
        "SCARE EG": scare_step(adata, gt, 30.0),
        "SCAREVI plain": scarevi_step(adata, gt, 0.0),
        "SCAREVI EG": scarevi_step(adata, gt, 30.0),
    }
    rng = np.random.default_rng(0)
    times: dict[str, list[float]] = {v: [] for v in runners}
    for i in range(warmup + steps):
        idx = np.sort(rng.choice(adata.n_obs, 128, replace=False))
        for name, run in runners.items():
            t0 = time.perf_counter()
            run(idx)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {v: 1000 * statistics.median(ts) for v, ts in times.items()}


def time_epochs(adata, gt, rounds: int) -> dict[str, tuple[float, float]]:
    from attreg_sc.scvi_tools import SCAREVI

    def scare(w: float, n: int) -> float:
        model = asc.SCARE(adata, gt=gt, w_attr=w, accelerator="cpu", **ARCH)
        t0 = time.perf_counter()
        model.train(max_epochs=n, validation_fraction=0.0, progress_bar=False, threads=None)
        return time.perf_counter() - t0

    def scarevi(w: float, n: int) -> float:
        model = SCAREVI(adata.copy(), gt=gt, w_attr=w, **ARCH)
        t0 = time.perf_counter()
        model.train(
            max_epochs=n,
            validation_fraction=0.0,
            progress_bar=False,
            accelerator="cpu",
            enable_model_summary=False,
        )
        return time.perf_counter() - t0

    fns = {
        "SCARE plain": lambda n: scare(0.0, n),
        "SCARE EG": lambda n: scare(30.0, n),
        "SCAREVI plain": lambda n: scarevi(0.0, n),
        "SCAREVI EG": lambda n: scarevi(30.0, n),
    }
    t: dict[str, dict[int, list[float]]] = {k: {1: [], 4: []} for k in fns}
    for _ in range(rounds):
        for n in (1, 4):
            for name, fn in fns.items():
                t[name][n].append(fn(n))
    out = {}
    for name in fns:
        t1, t4 = statistics.median(t[name][1]), statistics.median(t[name][4])
        per_epoch = (t4 - t1) / 3
        out[name] = (1000 * per_epoch, 1000 * (t1 - per_epoch))
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    adata = asc.datasets.pbmc3k(genes="selected")
    gt = asc.gt.from_genes(adata, asc.datasets.go_gene_sets()["GO:0043410"])
    load = os.getloadavg()[0]
    steps = time_steps(adata, gt, args.steps, args.warmup)
    epochs = time_epochs(adata, gt, args.rounds)
    n_steps = int(np.ceil(adata.n_obs / 128))
    rows = []
    for name in steps:
        own_plain = steps[name.split()[0] + " plain"]
        per_epoch, setup = epochs[name]
        rows.append(
            record(
                "scvi_tools",
                name,
                batch_size=128,
                median_ms=steps[name],
                ratio_to_plain=steps[name] / own_plain,
                x_scare_step=steps[name] / steps["SCARE " + name.split()[1]],
                epoch_ms=per_epoch,
                x_scare_epoch=per_epoch / epochs["SCARE " + name.split()[1]][0],
                setup_ms=setup,
                loop_ms_per_step=per_epoch / n_steps - steps[name],
            )
        )
    print_table(
        f"SCAREVI vs SCARE, PBMC 3k {adata.n_obs} x {adata.n_vars}, batch 128 ({n_steps} steps "
        f"per epoch), threads={args.threads}, load average at start {load:.2f}, torch "
        f"{torch.__version__}",
        rows,
        [
            ("variant", "variant", "<14"),
            ("median_ms", "step ms", ">8.2f"),
            ("ratio_to_plain", "x own plain", ">11.2f"),
            ("x_scare_step", "x SCARE step", ">12.2f"),
            ("epoch_ms", "epoch ms", ">9.0f"),
            ("x_scare_epoch", "x SCARE epoch", ">13.2f"),
            ("setup_ms", "set-up ms", ">9.0f"),
            ("loop_ms_per_step", "loop ms/step", ">12.2f"),
        ],
    )
    write_json(rows, args.json)
    return rows


if __name__ == "__main__":
    main()
