"""Tutorial 2: scARE on the built-in PBMC 3k cells with the GO gene sets, end to end.

Real 10x PBMC 3k counts (shipped), GT = GO:0043410 (positive regulation of MAPK
cascade). Trains a baseline cVAE (w_attr = 0) and scARE (its defaults), then compares the
share of encoder attribution on the GT genes (of the latent's sum per cell type, and
of each latent dimension), FSSF (GT vs random genes) and the GT polarization of each
cell type's latent; writes figures.

Run::

    python examples/tutorial_pbmc.py --out docs/figures       # ~2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
from pathlib import Path

import scvi

import attreg_sc as asc
from attreg_sc.cli import scare_defaults
from attreg_sc.metrics import attribution_share, dimension_shares, fssf, gt_polarization


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-epochs", type=int, default=100)
    p.add_argument("--n-random", type=int, default=100)
    p.add_argument("--w-attr", type=float, default=scare_defaults()["w_attr"])
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    adata = asc.datasets.pbmc3k(genes="selected")
    asc.SCARE.setup_anndata(adata)  # raw counts in X, one batch
    sets = asc.datasets.go_gene_sets()
    gt = asc.gt.from_genes(adata, sets["GO:0043410"], name="GO:0043410")
    print(f"PBMC 3k: {adata.n_obs} cells x {adata.n_vars} genes; GT: {gt.sum()} MAPK genes")

    results = {}
    for name, w in (("baseline", 0.0), ("scARE", args.w_attr)):
        scvi.settings.seed = 0
        model = asc.SCARE(adata, gt=gt, w_attr=w)
        model.train(max_epochs=args.max_epochs, enable_progress_bar=False)
        attr = model.get_attributions(n_samples=4)
        share = attribution_share(attr, gt, adata.obs["cell_type"]).groupby("group").share.mean()
        res = fssf(model, gt, "cell_type", n_random=args.n_random)
        pol = gt_polarization(
            model.get_latent_representation(), adata.X, gt, adata.obs["cell_type"]
        )
        per_dim = dimension_shares(model, gt, n_samples=2).drop(index="sum")["gt_share"]
        results[name] = (model, share, res, pol)
        print(
            f"{name:<9} epochs {len(model.loss_history['loss']):>3}  GT share: sum "
            f"{share.mean():.3f}"
            f" per dim {per_dim.mean():.3f}  FSSF GT {res.score():+.3f}  random "
            f"{res.random_score():+.3f}  polarization {pol.abs_corr_pc1.mean():.3f}"
        )

    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        from attreg_sc import pl

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        pl.gt_share_bars({n: r[1] for n, r in results.items()}).savefig(
            out / "tutorial_pbmc_share.png", dpi=110
        )
        pl.fssf_heatmap({n: r[2].summary() for n, r in results.items()}).savefig(
            out / "tutorial_pbmc_fssf.png", dpi=110
        )
    return results


if __name__ == "__main__":
    main()
