"""Which reducer closes the sum loophole? A sweep on real PBMC cells.

The paper's ``F = sum_k mu_k`` lets the encoder satisfy the prior on the latent's sum
while each latent dimension stays driven by other genes. This study trains the cVAE
with each reducer (``sum``, ``random_direction``, ``per_dimension``) and weight on
PBMC 3k and the 700 PBMC 68k-reduced cells, GT = GO:0043410 (MAPK; ``--gene-set
GO:1901224`` for NF-kB), seeds 0-2, and
measures for each run:

* the GT share of the attributions of the latent's sum and the mean GT share of each
  latent dimension (:func:`attreg_sc.metrics.dimension_shares`);
* FSSF for the GT and the mean of ``n_random`` random gene sets of the same size (the
  strict score: vote among all subclusters), and the latent-structure diagnostics
  (subclusters per cell type, active dimensions, median move toward the donor);
* the reconstruction term of the returned model on every cell, the best validation loss, bio
  conservation (scikit-learn subset: label silhouette, k-means NMI/ARI against the cell
  types) and seconds per epoch.

Every finished run is appended to ``--out`` as one JSON line (the study can be stopped
and resumed; finished runs are skipped), and ``--table`` prints the mean and range per
configuration.

Run (slow; about 2 minutes per run on 2 CPU cores)::

    python examples/direction_prior_study.py --out direction_study.jsonl
    python examples/direction_prior_study.py --out direction_study.jsonl --table
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scvi
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

import attreg_sc as asc
from attreg_sc.metrics import active_dimensions, dimension_shares, fssf

MINMAX = dict(reparameterizer="abs_minmax", loss="mse")  # the paper's reparameterization
SHARE = dict(reducer="random_direction", reparameterizer="share", loss="outside_share")
CONFIGS = {
    "baseline": dict(w_attr=0.0),
    "sum w100 (paper)": dict(reducer="sum", w_attr=100.0, **MINMAX),
    "sum w1e4": dict(reducer="sum", w_attr=1e4, **MINMAX),
    "random w1e3": dict(reducer="random_direction", w_attr=1e3, **MINMAX),
    "random w3e3": dict(reducer="random_direction", w_attr=3e3, **MINMAX),
    "random w1e4": dict(reducer="random_direction", w_attr=1e4, **MINMAX),
    "random w1e4 warm-up 20": dict(
        reducer="random_direction", w_attr=1e4, train=dict(prior_warmup_epochs=20), **MINMAX
    ),
    "random w1e4 latent 5": dict(reducer="random_direction", w_attr=1e4, n_latent=5, **MINMAX),
    "random w3e4": dict(reducer="random_direction", w_attr=3e4, **MINMAX),
    "per-dim w1e4": dict(reducer="per_dimension", w_attr=1e4, **MINMAX),
    **{
        f"random share w{label}": dict(w_attr=w, **SHARE)
        for label, w in [
            ("10", 10.0),
            ("20", 20.0),
            ("30", 30.0),
            ("50", 50.0),
            ("1e2", 1e2),
            ("3e2", 3e2),
            ("1e3", 1e3),
            ("3e3", 3e3),
            ("1e4", 1e4),
        ]
    },  # fmt: skip
}


def load(name: str):
    return asc.datasets.pbmc3k(genes="selected") if name == "pbmc3k" else asc.datasets.pbmc68k()


def bio_conservation(latent: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:
    """k-means NMI/ARI and the label silhouette (scikit-learn), plus scib-metrics' bio
    conservation total where it is installed (``pip install -e ".[scib]"``)."""
    k = len(set(labels))
    pred = KMeans(k, n_init=10, random_state=seed).fit_predict(latent)
    out = {
        "silhouette_label": float((silhouette_score(latent, labels) + 1) / 2),
        "nmi": float(normalized_mutual_info_score(labels, pred)),
        "ari": float(adjusted_rand_score(labels, pred)),
    }
    try:
        import scib_metrics  # noqa: F401
    except ImportError:
        return out
    from attreg_sc.metrics import scib_integration_metrics

    scib = scib_integration_metrics(latent, np.zeros(len(latent), dtype=str), labels)
    out["scib_bio"] = float(scib["bio_conservation"])
    return out


def final_reconstruction(model) -> float:
    """``L_R`` of the model training returned (best weights restored) on every cell,
    scvi-tools' ``get_reconstruction_error``: runs stop at different epochs, so the last
    epoch's training value is no fair comparison."""
    return float(model.get_reconstruction_error()["reconstruction_loss"])


def run_one(data: str, config: str, seed: int, args) -> dict:
    adata = load(data)
    gt = asc.gt.from_genes(adata, asc.datasets.go_gene_sets()[args.gene_set])
    kw = dict(CONFIGS[config])
    train_kw = kw.pop("train", {})
    t0 = time.perf_counter()
    scvi.settings.seed = seed
    asc.SCARE.setup_anndata(adata)
    model = asc.SCARE(adata, gt=gt, seed=seed, **kw)
    model.train(max_epochs=args.epochs, enable_progress_bar=False, **train_kw)
    train_s = time.perf_counter() - t0
    epochs = len(model.loss_history["loss"])
    latent = model.get_latent_representation()
    shares = dimension_shares(model, gt, n_samples=2, seed=seed)
    per_dim = shares.drop(index="sum")
    res = fssf(model, gt, "cell_type", n_random=args.n_random, seed=seed)
    summary = res.summary()
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    return {
        "data": data if args.gene_set == "GO:0043410" else f"{data} {args.gene_set}",
        "config": config,
        "seed": seed,
        "n_gt": int(gt.sum()),
        **kw,
        **train_kw,
        "epochs": epochs,
        "s_per_epoch": train_s / epochs,
        "share_sum": float(shares.loc["sum", "gt_share"]),
        "share_per_dim": float(per_dim["gt_share"].mean()),
        "fssf_gt": res.score(),
        "fssf_random": res.random_score(),
        "n_pairs": int(len(res.table)),
        "max_subclusters": int(summary["n_subclusters"].max()) if len(summary) else 0,
        "move_median": float(res.table["move_median"].median()) if len(res.table) else np.nan,
        "active_dims": active_dimensions(latent),
        "reconstruction": final_reconstruction(model),
        "validation_loss": float(np.min(model.loss_history["validation_loss"])),
        **bio_conservation(latent, labels, seed),
    }


def table(path: Path) -> pd.DataFrame:
    df = pd.DataFrame([json.loads(line) for line in path.read_text().splitlines() if line])
    cols = [
        "share_sum",
        "share_per_dim",
        "fssf_gt",
        "fssf_random",
        "max_subclusters",
        "move_median",
        "active_dims",
        "reconstruction",
        "validation_loss",
        "nmi",
        "ari",
        "silhouette_label",
        "scib_bio",
        "s_per_epoch",
        "epochs",
    ]
    cols = [c for c in cols if c in df.columns]
    agg = df.groupby(["data", "config"], sort=False)[cols].mean()
    agg["seeds"] = df.groupby(["data", "config"], sort=False)["seed"].nunique()
    return agg


MARKDOWN = [
    ("share_sum", "GT share of the sum", "{:.2f}"),
    ("share_per_dim", "GT share per dim", "{:.2f}"),
    ("fssf_gt", "FSSF GT", "{:+.2f}"),
    ("fssf_random", "FSSF random", "{:+.2f}"),
    ("max_subclusters", "max subclusters", "{:.0f}"),
    ("move_median", "move to donor", "{:.2f}"),
    ("reconstruction", "L_R", "{:.1f}"),
    ("scib_bio", "scib bio", "{:.3f}"),
    ("nmi", "NMI", "{:.2f}"),
    ("epochs", "epochs", "{:.0f}"),
]


def markdown(path: Path) -> str:
    """The study as markdown tables (one per data set): mean over seeds, and the range of
    the GT FSSF; reconstruction also as a ratio to the baseline's."""
    df = pd.DataFrame([json.loads(line) for line in path.read_text().splitlines() if line])
    out = []
    for data, d in df.groupby("data", sort=False):
        mean = d.groupby("config", sort=False).mean(numeric_only=True)
        lo = d.groupby("config", sort=False)["fssf_gt"].min()
        hi = d.groupby("config", sort=False)["fssf_gt"].max()
        seeds = d.groupby("config", sort=False)["seed"].nunique()
        base = mean.loc["baseline", "reconstruction"] if "baseline" in mean.index else np.nan
        cols = [c for c in MARKDOWN if c[0] in mean.columns]
        head = ["config", *[c[1] for c in cols], "L_R / baseline", "FSSF range", "seeds"]
        lines = [f"**{data}**", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for config, row in mean.iterrows():
            cells = [fmt.format(row[key]) if pd.notna(row[key]) else "" for key, _, fmt in cols]
            ratio = row["reconstruction"] / base
            rng = f"{lo[config]:+.2f} .. {hi[config]:+.2f}"
            lines.append(
                f"| {config} | " + " | ".join(cells) + f" | {ratio:.3f} | {rng} | {seeds[config]} |"
            )
        out += [*lines, ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="direction_study.jsonl")
    p.add_argument("--data", nargs="+", default=["pbmc3k", "pbmc68k"])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--n-random", type=int, default=100)
    p.add_argument("--gene-set", default="GO:0043410", help="GO term of the shipped GMT")
    p.add_argument("--table", action="store_true", help="print the summary table and exit")
    p.add_argument("--markdown", action="store_true", help="print markdown tables and exit")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.table:
        print(table(out).to_string(float_format=lambda v: f"{v:.3f}"))
        return
    if args.markdown:
        print(markdown(out))
        return
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["data"], r["config"], r["seed"]))
    suffix = "" if args.gene_set == "GO:0043410" else f" {args.gene_set}"
    for seed in args.seeds:
        for data in args.data:
            for config in args.configs:
                if (data + suffix, config, seed) in done:
                    continue
                row = run_one(data, config, seed, args)
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
