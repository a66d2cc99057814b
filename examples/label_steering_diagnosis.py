"""Why does a label GT not separate the label? The paper's Fig. 3 claim, diagnosed.

The reproduction (study 2) found no effect of a GT of mutual-information markers of the
cell-cycle phase on separating the phases within cell types (PBMC 68k-reduced, 700 real
cells). Three questions, answered on the same cells:

1. **Is the GT informative for the label?** Phase separation (kNN purity over chance
   within each cell type, the reproduction's metric) in the log-normalized expression of
   the GT genes alone, against random gene sets of the same size and all genes (PCA).
   The markers are chosen on these cells, so this is an upper bound.
2. **Does the GT share rise?** The GT share of the encoder's attributions: the prior's
   own (training history) and post-hoc per latent dimension.
3. **Does the latent separate the label when the share is high?** Phase purity over
   chance in the latent, for the baseline, the default fixed weight and a target share.

Run::

    python examples/label_steering_diagnosis.py [--seeds 0 1 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import scvi
from sklearn.decomposition import PCA

import attreg_sc as asc
from attreg_sc.metrics import dimension_shares, label_separation


def _log_normalized(adata) -> np.ndarray:
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    return np.log1p(x / x.sum(1, keepdims=True) * 1e4)


def _purity(rep: np.ndarray, adata) -> float:
    sep = label_separation(rep, adata.obs["phase"], adata.obs["cell_type"])
    return float(sep.purity_over_chance.mean())


def informativeness(adata, glob: np.ndarray, per, seed: int, n_random: int) -> dict:
    expr = _log_normalized(adata)
    rng = np.random.default_rng(seed)
    k = int(glob.sum())
    random_sets = [rng.choice(adata.n_vars, k, replace=False) for _ in range(n_random)]
    # per-type GT: each cell's own type's markers (the other genes set to 0)
    rows = per.table[np.where(per.codes < 0, 0, per.codes)]
    rows[per.codes < 0] = False
    return {
        "global GT genes": _purity(expr[:, glob], adata),
        "per-type GT genes": _purity(np.where(rows, expr, 0.0), adata),
        "random gene sets (mean)": float(np.mean([_purity(expr[:, r], adata)
                                                  for r in random_sets])),
        "all genes (PCA 10)": _purity(PCA(10, random_state=0).fit_transform(expr), adata),
    }


def train(adata, gt, seed: int, epochs: int, **kw):
    scvi.settings.seed = seed
    m = asc.SCARE(adata, gt=gt, seed=seed, **kw)
    m.train(max_epochs=epochs, enable_progress_bar=False)
    return m


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--n-random", type=int, default=20)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    adata = asc.datasets.pbmc68k()
    asc.SCARE.setup_anndata(adata)
    out: dict = {"informativeness": [], "models": []}
    for seed in args.seeds:
        glob = asc.gt.mutual_information_markers(adata, "phase", n_top=40, random_state=seed)
        per = asc.gt.mutual_information_markers(
            adata, "phase", groupby="cell_type", n_top=40, min_cells=30, random_state=seed
        )
        info = informativeness(adata, glob, per, seed, args.n_random)
        out["informativeness"].append({"seed": seed, **info})
        print(f"seed {seed} phase purity over chance in expression: "
              + ", ".join(f"{k} {v:+.3f}" for k, v in info.items()), flush=True)
        for name, gt, kw in (
            ("baseline", glob, dict(w_attr=0.0)),
            ("global GT, w_attr 30", glob, dict(w_attr=30.0)),
            ("global GT, target share 0.9", glob, dict(w_attr=30.0, target_share=0.9)),
            ("per-type GT, w_attr 30", per, dict(w_attr=30.0)),
            ("per-type GT, target share 0.9", per, dict(w_attr=30.0, target_share=0.9)),
        ):
            m = train(adata, gt, seed, args.epochs, **kw)
            h = m.history
            share_dim = dimension_shares(m, glob, n_samples=4, seed=seed).drop(index="sum")
            row = {
                "seed": seed,
                "model": name,
                "latent_purity_over_chance": _purity(m.get_latent_representation(), adata),
                "training_share": float(h["prior_share_gt0"].iloc[-1, 0])
                if "prior_share_gt0" in h else None,
                "global_gt_share_per_dim": float(share_dim["gt_share"].mean()),
                "reconstruction": float(h["reconstruction_loss_validation"].iloc[-1, 0]),
            }
            out["models"].append(row)
            print(" | ".join(str(round(v, 3)) if isinstance(v, float) else str(v)
                             for v in row.values()), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
