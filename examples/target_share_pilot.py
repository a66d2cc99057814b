"""A pilot of target shares on real cells (one seed; not the evaluation panel).

PBMC 3k (2,265 genes, GT GO:0043410 with 183 expressed genes) and PBMC 68k-reduced (765
genes, the same GO term with 25 genes: "too small" by the diagnostics). Per dataset: the
baseline (w_attr 0), the default fixed weight (w_attr 30) and a target share of 0.9
(the multiplier starting at 30), chosen before this run. Reports the strict FSSF of the
GT and of random sets of the same size, the mean GT share of each latent dimension
(post-hoc EG, ``dimension_shares``), the final multiplier and the training share,
the validation reconstruction loss and the epochs.

Run::

    python examples/target_share_pilot.py [--n-random 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import scvi

import attreg_sc as asc
from attreg_sc.metrics import fssf

VARIANTS = (("baseline", dict(w_attr=0.0)), ("w_attr 30", dict(w_attr=30.0)),
            ("target share 0.9", dict(w_attr=30.0, target_share=0.9)))


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-random", type=int, default=30)
    p.add_argument("--max-epochs", type=int, default=100)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    sets = asc.datasets.go_gene_sets()
    rows = []
    for data_name, adata in (("PBMC 3k", asc.datasets.pbmc3k(genes="selected")),
                             ("PBMC 68k-reduced", asc.datasets.pbmc68k())):
        asc.SCARE.setup_anndata(adata)
        gt = asc.gt.from_genes(adata, sets["GO:0043410"], name="GO:0043410")
        for name, kw in VARIANTS:
            scvi.settings.seed = 0
            model = asc.SCARE(adata, gt=gt, **kw)
            t0 = time.perf_counter()
            model.train(max_epochs=args.max_epochs, enable_progress_bar=False)
            seconds = time.perf_counter() - t0
            res = fssf(model, gt, "cell_type", n_random=args.n_random, seed=0)
            summary = model.prior_summary(n_samples=4)  # the GT's share per latent dimension
            h = model.history
            row = dict(
                data=data_name, model=name, fssf_gt=res.score(), fssf_random=res.random_score(),
                share_per_dim=float(summary["gt_share"].mean()),
                weight=float(summary["weight"].iloc[0]) if "target_share" in kw
                else kw["w_attr"],
                training_share=float(summary["training_share"].iloc[0]),
                reconstruction=float(h["reconstruction_loss_validation"].iloc[-1, 0]),
                epochs=len(h["reconstruction_loss_train"]), seconds=seconds,
            )
            rows.append(row)
            print(" | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()),
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
