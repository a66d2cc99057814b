"""The one model's step and epoch, against scvi-tools' own SCVI and attreg 0.1's
hand-written SCARE, measured in one run.

Same data (the demo's: PBMC 3k, 2,700 cells x 2,265 genes, GT = GO:0043410), same
architecture (n_hidden 128, n_latent 10, one layer, NB, gene dispersion, learned library
size, LayerNorm, the batch into the encoder), same prior (EG, k = 1, one random
direction, share loss, w_attr = 30), batch 128, CPU, the thread count fixed.

* **step**: one training step on the same minibatches, the variants taking turns:
  ``SCARE`` (scvi-tools' row gather, the training plan's ``training_step`` with the
  prior, backward, the plan's Adam; ``benchmarks/_scare.py``) and, as the anchor, plain
  ``scvi.model.SCVI`` with the same architecture (its own plan and module);
* **epoch**: ``train(max_epochs=n)`` end to end without validation for n = 1 and
  ``--epochs`` (default 6); per epoch = (t_n - t1) / (n - 1) (set-up cancels out).

With ``--loop``, instead: where the one model's epoch goes outside its steps. A callback
times every training batch (6 epochs per variant, plain and EG alternating twice; the
median epoch after the first): the time inside the batches, between them (the data
loader and Lightning's per-batch bookkeeping) and per gap; meanwhile every call of
``AnnTorchDataset.__getitem__`` (the minibatch's row gather) is timed where it runs,
between the steps, and the same calls are then replayed back to back on the same data
(median per call each: the gather's cost in training against its cost with the counts in
cache); and the same minibatches, in the same order, as bare steps of a fresh model
(``benchmarks/_scare.py``, no Lightning; median epoch of 5), so that the epoch minus its
steps alone is the loop's cost measured in one process. Then scvi-tools'
``AnnDataLoader`` alone (whole epochs) and three gathers of a
minibatch's rows of the CSR counts, densified: scipy's (what ``AnnTorchDataset`` does),
numpy's and torch's.

With ``--baseline-tree PATH`` (a checkout of attreg 0.1, commit fe6f216:
``git worktree add PATH fe6f216``) the hand-written SCARE of that tree is measured too,
in a child process per round (the two packages share a name), the rounds alternating
between this process and the child so that machine noise hits both alike.

Run::

    python benchmarks/bench_scvi_tools.py [--baseline-tree /tmp/oldtree] [--json out.json]
    python benchmarks/bench_scvi_tools.py --loop [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from _common import print_table, record, write_json

ARCH = dict(n_hidden=128, n_latent=10, n_layers=1)
BATCH = 128
LOOP_EPOCHS = 6  # --loop: epochs per training run (the first one is not counted)


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _data():
    import attreg_sc as asc

    adata = asc.datasets.pbmc3k(genes="selected")
    gt = asc.gt.from_genes(adata, asc.datasets.go_gene_sets()["GO:0043410"])
    return adata, gt


def _minibatches(n_cells: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [np.sort(rng.choice(n_cells, BATCH, replace=False)) for _ in range(n)]


def _time_steps(runners: dict, batches: list[np.ndarray], warmup: int) -> dict[str, float]:
    times: dict[str, list[float]] = {v: [] for v in runners}
    for i, idx in enumerate(batches):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run(idx)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {v: 1000 * statistics.median(ts) for v, ts in times.items()}


# -- this tree: the one model and scvi-tools' SCVI ----------------------------------------
def new_runners(adata, gt) -> tuple[dict, dict]:
    import scvi
    from _scare import scare_step

    import attreg_sc as asc

    a = adata.copy()
    asc.SCARE.setup_anndata(a)
    anchor = adata.copy()
    scvi.model.SCVI.setup_anndata(anchor)
    scvi_arch = dict(
        **ARCH, gene_likelihood="nb", use_observed_lib_size=False, encode_covariates=True,
        use_batch_norm="none", use_layer_norm="both",
    )  # fmt: skip

    def scvi_step():
        model = scvi.model.SCVI(anchor, **scvi_arch)
        plan = model._training_plan_cls(model.module, n_epochs_kl_warmup=10)
        plan.train()
        opt = plan.configure_optimizers()["optimizer"]
        dataset = model.adata_manager.create_torch_dataset()

        def step(idx):
            tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in dataset[idx].items()}
            _, _, out = plan.forward(tensors, loss_kwargs=plan.loss_kwargs)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()

        return step

    steps = {
        "SCARE plain": scare_step(a, gt=gt, w_attr=0.0, **ARCH),
        "SCARE EG": scare_step(a, gt=gt, w_attr=30.0, **ARCH),
        "SCVI plain": scvi_step(),
    }

    def epochs(n: int) -> dict[str, float]:
        out = {}
        for name, w in (("SCARE plain", 0.0), ("SCARE EG", 30.0)):
            model = asc.SCARE(a, gt=gt, w_attr=w, **ARCH)
            t0 = time.perf_counter()
            model.train(max_epochs=n, train_size=1.0, enable_progress_bar=False, threads=None,
                        accelerator="cpu")
            out[name] = time.perf_counter() - t0
        model = scvi.model.SCVI(anchor, **scvi_arch)
        t0 = time.perf_counter()
        model.train(max_epochs=n, train_size=1.0, enable_progress_bar=False, accelerator="cpu",
                    plan_kwargs={"n_epochs_kl_warmup": 10})
        out["SCVI plain"] = time.perf_counter() - t0
        return out

    return steps, epochs


# -- attreg 0.1's hand-written SCARE (run in a child with PYTHONPATH=the old tree) --------
def old_runners(adata, gt) -> tuple[dict, dict]:
    from attreg_sc.train.trainer import TrainingPlan, make_optimizer, minibatch, training_step

    import attreg_sc as asc

    def step_of(w: float):
        model = asc.SCARE(adata, gt=gt, w_attr=w, accelerator="cpu", **ARCH)
        module = model.module.train()
        plan = TrainingPlan(w_attribution=w)
        opt = make_optimizer(module.parameters(), plan)
        prior = model._prior_loss if w > 0 else None
        codes = torch.from_numpy(model.data.batch_codes)

        def step(idx):
            training_step(module, opt, *minibatch(model.data, codes, idx, model.device), idx,
                          plan, 1.0, prior)

        return step

    steps = {"SCARE 0.1 plain": step_of(0.0), "SCARE 0.1 EG": step_of(30.0)}

    def epochs(n: int) -> dict[str, float]:
        out = {}
        for name, w in (("SCARE 0.1 plain", 0.0), ("SCARE 0.1 EG", 30.0)):
            model = asc.SCARE(adata, gt=gt, w_attr=w, accelerator="cpu", **ARCH)
            t0 = time.perf_counter()
            model.train(max_epochs=n, validation_fraction=0.0, progress_bar=False, threads=None)
            out[name] = time.perf_counter() - t0
        return out

    return steps, epochs


def one_round(which: str, steps: int, warmup: int, n_epochs: int) -> dict:
    """One round's step medians and epoch times (n = 1 and ``n_epochs``) for ``which`` tree."""
    _quiet()
    adata, gt = _data()
    runners, epochs = (new_runners if which == "new" else old_runners)(adata, gt)
    step_ms = _time_steps(runners, _minibatches(adata.n_obs, warmup + steps), warmup)
    t1, tn = epochs(1), epochs(n_epochs)
    return {"step_ms": step_ms, "t1": t1, "tn": tn, "n_epochs": n_epochs}


def _old_round(tree: str, steps: int, warmup: int, threads: int, n_epochs: int) -> dict:
    env = {**os.environ, "PYTHONPATH": tree, "OMP_NUM_THREADS": str(threads)}
    code = (
        f"import sys, json, torch; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        f"torch.set_num_threads({threads}); import bench_scvi_tools as b; "
        f"print('RESULT', json.dumps(b.one_round('old', {steps}, {warmup}, {n_epochs})))"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=tree, timeout=3600)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"the baseline tree's round failed:\n{done.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


# -- --loop: the epoch outside the steps -------------------------------------------------
@contextmanager
def _timed_gathers():
    """Inside the block, every ``AnnTorchDataset.__getitem__`` call appends ``(indices,
    seconds)`` to the yielded list; the class is restored on leaving."""
    from scvi.data import AnnTorchDataset

    calls: list[tuple[np.ndarray, float]] = []
    original = AnnTorchDataset.__getitem__

    def timed(self, indexes):
        t0 = time.perf_counter()
        out = original(self, indexes)
        calls.append((np.array(indexes, copy=True), time.perf_counter() - t0))
        return out

    AnnTorchDataset.__getitem__ = timed
    try:
        yield calls
    finally:
        AnnTorchDataset.__getitem__ = original


def _replayed_gathers(manager, calls: list[tuple[np.ndarray, float]]) -> list[float]:
    """Seconds of the same gathers as ``calls``, back to back on a fresh dataset."""
    dataset = manager.create_torch_dataset()
    for indexes, _ in calls[:5]:
        dataset[indexes]
    times = []
    for indexes, _ in calls:
        t0 = time.perf_counter()
        dataset[indexes]
        times.append(time.perf_counter() - t0)
    return times


def _steps_alone(adata, gt, w: float, batches: list[np.ndarray],
                 epochs: int = LOOP_EPOCHS - 1) -> float:
    """Median ms of ``epochs`` epochs of bare steps (``benchmarks/_scare.py``: the row
    gather, ``training_step``, backward, Adam; no Lightning) of a fresh model on
    ``batches``, the minibatches a training run drew, in their order."""
    from _scare import scare_step

    step = scare_step(adata, gt=gt, w_attr=w, **ARCH)
    per_epoch = len(batches) // epochs
    for idx in batches[:5]:  # warm-up
        step(idx)
    times = []
    for e in range(epochs):
        t0 = time.perf_counter()
        for idx in batches[e * per_epoch:(e + 1) * per_epoch]:
            step(idx)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _epoch_parts(adata, gt, w: float, epochs: int = LOOP_EPOCHS, gathers: list | None = None
                 ) -> dict[str, float]:
    """Median per-epoch ms (after the first): the epoch, inside its batches, between.
    With ``gathers`` (a list), the timed row gathers of the epochs after the first are
    appended to it (see :func:`_timed_gathers`)."""
    from lightning.pytorch.callbacks import Callback

    import attreg_sc as asc

    class Clock(Callback):
        def __init__(self) -> None:
            self.events: list[tuple[str, float]] = []

        def on_train_epoch_start(self, *_):
            self.events.append(("epoch", time.perf_counter()))

        def on_train_batch_start(self, *_):
            self.events.append(("start", time.perf_counter()))

        def on_train_batch_end(self, *_):
            self.events.append(("end", time.perf_counter()))

        def on_train_epoch_end(self, *_):
            self.events.append(("done", time.perf_counter()))

    clock = Clock()
    model = asc.SCARE(adata, gt=gt, w_attr=w, **ARCH)
    with _timed_gathers() as calls:
        model.train(max_epochs=epochs, batch_size=BATCH, train_size=1.0, early_stopping=False,
                    enable_progress_bar=False, threads=None, accelerator="cpu",
                    callbacks=[clock])
    if gathers is not None:
        per_epoch_calls = len(calls) // epochs
        gathers.extend(calls[per_epoch_calls:])
    per_epoch, current = [], None
    for kind, t in clock.events:
        if kind == "epoch":
            current = {"t0": t, "starts": [], "ends": []}
        elif kind == "start":
            current["starts"].append(t)
        elif kind == "end":
            current["ends"].append(t)
        else:
            s, e = current["starts"], current["ends"]
            per_epoch.append((t - current["t0"], sum(b - a for a, b in zip(s, e, strict=True)),
                              sum(s[i + 1] - e[i] for i in range(len(s) - 1)), len(s) - 1))
    later = per_epoch[1:]
    return {
        "epoch": 1000 * statistics.median(p[0] for p in later),
        "inside": 1000 * statistics.median(p[1] for p in later),
        "between": 1000 * statistics.median(p[2] for p in later),
        "per_gap": 1000 * statistics.median(p[2] / p[3] for p in later),
    }


def _gathers(adata) -> dict[str, Callable]:
    """A minibatch's rows of the CSR counts, densified to float32, three ways."""
    import scipy.sparse as sp

    x = sp.csr_matrix(adata.X, dtype=np.float32)
    indptr, indices, data = x.indptr.astype(np.int64), x.indices.astype(np.int64), x.data
    t_ptr, t_ind, t_data = (torch.from_numpy(a) for a in (indptr, indices, data))
    width = x.shape[1]

    def scipy_rows(idx):
        return x[idx].astype(np.float32, copy=False).toarray()

    def numpy_rows(idx):
        start = indptr[idx]
        length = indptr[idx + 1] - start
        at = np.repeat(start - np.cumsum(length) + length, length) + np.arange(length.sum())
        out = np.zeros((len(idx), width), np.float32)
        out[np.repeat(np.arange(len(idx)), length), indices[at]] = data[at]
        return out

    def torch_rows(idx):
        idx = torch.from_numpy(idx)
        start = t_ptr[idx]
        length = t_ptr[idx + 1] - start
        total = int(length.sum())
        at = torch.repeat_interleave(start - torch.cumsum(length, 0) + length, length,
                                     output_size=total) + torch.arange(total)
        out = torch.zeros((len(idx), width))
        flat = torch.repeat_interleave(torch.arange(len(idx)) * width, length,
                                       output_size=total) + t_ind[at]
        out.view(-1)[flat] = t_data[at]
        return out

    return {"scipy (AnnTorchDataset's)": scipy_rows, "numpy": numpy_rows,
            "torch": torch_rows}


def loop_parts(threads: int) -> list[dict]:
    """The ``--loop`` table's rows."""
    from scvi.dataloaders import AnnDataLoader

    import attreg_sc as asc

    adata, gt = _data()
    a = adata.copy()
    asc.SCARE.setup_anndata(a)
    load = os.getloadavg()[0]
    parts: dict[str, list[dict]] = {"plain": [], "EG": []}
    calls: list[tuple[np.ndarray, float]] = []
    for _ in range(2):
        for name, w in (("plain", 0.0), ("EG", 30.0)):
            run_calls: list[tuple[np.ndarray, float]] = []
            epoch = _epoch_parts(a, gt, w, gathers=run_calls)
            epoch["steps_alone"] = _steps_alone(a, gt, w, [i for i, _ in run_calls])
            parts[name].append(epoch)
            calls.extend(run_calls)
    rows = []
    for name, runs in parts.items():
        mid = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        rows.append(record("scvi_tools_loop", f"SCARE {name} epoch", batch_size=BATCH,
                           median_ms=mid["epoch"], inside_ms=mid["inside"],
                           between_ms=mid["between"], per_gap_ms=mid["per_gap"],
                           steps_alone_ms=mid["steps_alone"],
                           threads=threads, load_average=load))
    manager = asc.SCARE(a, **ARCH).adata_manager
    replayed = _replayed_gathers(manager, calls)
    for name, ts in (("row gather in training (AnnTorchDataset)", [t for _, t in calls]),
                     ("the same gathers back to back", replayed)):
        rows.append(record("scvi_tools_loop", name, batch_size=BATCH,
                           median_ms=1000 * statistics.median(ts), threads=threads,
                           load_average=load))
    loader = AnnDataLoader(manager, indices=np.arange(a.n_obs), shuffle=True, batch_size=BATCH)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        n = sum(1 for _ in loader)
        times.append((time.perf_counter() - t0) / n)
    rows.append(record("scvi_tools_loop", "AnnDataLoader alone, per batch", batch_size=BATCH,
                       median_ms=1000 * statistics.median(times[1:]), threads=threads,
                       load_average=load))
    gathers = _gathers(a)
    batches = _minibatches(a.n_obs, 200)
    first = batches[0]
    reference = gathers["scipy (AnnTorchDataset's)"](first)
    for fn in gathers.values():  # the same rows, whichever way
        assert np.array_equal(np.asarray(fn(first)), reference)
    runs: dict[str, list[float]] = {k: [] for k in gathers}
    for _ in range(3):
        for name, fn in gathers.items():
            t0 = time.perf_counter()
            for idx in batches:
                fn(idx)
            runs[name].append((time.perf_counter() - t0) / len(batches))
    for name, ts in runs.items():
        rows.append(record("scvi_tools_loop", f"row gather: {name}", batch_size=BATCH,
                            median_ms=1000 * statistics.median(ts), threads=threads,
                            load_average=load))
    print_table(
        f"The one model's epoch outside its steps, PBMC 3k 2700 x 2265, batch {BATCH}, "
        f"threads={threads}, load average at start {load:.2f}, torch {torch.__version__}",
        rows,
        [
            ("variant", "variant", "<42"),
            ("median_ms", "ms", ">8.2f"),
            ("inside_ms", "in batches", ">10.1f"),
            ("between_ms", "between", ">8.1f"),
            ("per_gap_ms", "per gap", ">8.2f"),
            ("steps_alone_ms", "steps alone", ">11.1f"),
        ],
    )
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=6, help="epochs of the long run (>= 2)")
    p.add_argument("--baseline-tree", default=None, help="a checkout of attreg 0.1 (fe6f216)")
    p.add_argument("--json", default=None)
    p.add_argument("--loop", action="store_true",
                   help="time the epoch outside its steps instead (loader, Lightning)")
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (the per-epoch time is (t_n - t1) / (n - 1)).")
    _quiet()
    torch.set_num_threads(args.threads)
    if args.loop:
        rows = loop_parts(args.threads)
        write_json(rows, args.json)
        return rows
    load = os.getloadavg()[0]
    rounds = []
    for _ in range(args.rounds):
        rounds.append(one_round("new", args.steps, args.warmup, args.epochs))
        if args.baseline_tree:
            rounds.append(
                _old_round(args.baseline_tree, args.steps, args.warmup, args.threads, args.epochs)
            )
    names = sorted({n for r in rounds for n in r["step_ms"]})
    step = {n: statistics.median(r["step_ms"][n] for r in rounds if n in r["step_ms"])
            for n in names}
    epoch = {
        n: 1000 * statistics.median(
            (r["tn"][n] - r["t1"][n]) / (r["n_epochs"] - 1) for r in rounds if n in r["tn"]
        )
        for n in names
    }
    base = "SCARE 0.1" if args.baseline_tree else None
    n_steps = int(np.ceil(2700 / BATCH))
    rows = []
    for name in names:
        kind = name.split()[-1]
        own_plain = step[name.rsplit(" ", 1)[0] + " plain"]
        ref = f"{base} {kind}" if base else None
        rows.append(
            record(
                "scvi_tools",
                name,
                batch_size=BATCH,
                median_ms=step[name],
                ratio_to_plain=step[name] / own_plain,
                x_scare01_step=step[name] / step[ref] if ref in step else None,
                epoch_ms=epoch[name],
                x_scare01_epoch=epoch[name] / epoch[ref] if ref in epoch else None,
                x_scvi_epoch=epoch[name] / epoch["SCVI plain"],
                loop_ms_per_step=epoch[name] / n_steps - step[name],
                threads=args.threads,
                load_average=load,
                rounds=args.rounds,
                epochs=args.epochs,
            )
        )
    print_table(
        f"The one model vs SCVI and attreg 0.1's SCARE, PBMC 3k 2700 x 2265, batch {BATCH} "
        f"({n_steps} steps per epoch), threads={args.threads}, load average at start "
        f"{load:.2f}, {args.rounds} rounds, torch {torch.__version__}",
        rows,
        [
            ("variant", "variant", "<16"),
            ("median_ms", "step ms", ">8.2f"),
            ("ratio_to_plain", "x own plain", ">11.2f"),
            ("x_scare01_step", "x 0.1 step", ">10.2f"),
            ("epoch_ms", "epoch ms", ">9.0f"),
            ("x_scare01_epoch", "x 0.1 epoch", ">11.2f"),
            ("x_scvi_epoch", "x SCVI epoch", ">12.2f"),
            ("loop_ms_per_step", "loop ms/step", ">12.2f"),
        ],
    )
    write_json(rows, args.json)
    return rows


if __name__ == "__main__":
    main()
