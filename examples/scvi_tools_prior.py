"""An attreg prior on scvi-tools' SCVI with ``attreg_sc.with_prior``.

``with_prior(scvi.model.SCVI)`` is SCVI whose training plan adds ``w_A * L_A``: the
prior explains the encoder's latent mean (``module.z_encoder``) with respect to its
input (``log1p`` counts), from the inputs the encoder saw in SCVI's own forward pass.
BatchNorm couples the cells of a minibatch, so the class switches the encoder to
LayerNorm unless told otherwise. The same call works for SCANVI and TOTALVI
(``docs/single_cell.md``, "scvi-tools models").

Run::

    python examples/scvi_tools_prior.py
"""

from __future__ import annotations

import argparse
import logging
import warnings

import numpy as np

import attreg_sc as asc


def main(argv=None):
    import scvi

    from attreg_sc import with_prior

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-epochs", type=int, default=30)
    p.add_argument("--w-attr", type=float, default=30.0)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", module="lightning")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    adata = asc.datasets.synthetic(n_cells=1000, n_genes=200, n_gt_genes=20, seed=0)
    gt = adata.var["is_gt"].to_numpy()
    SCVIWithPrior = with_prior(scvi.model.SCVI)
    shares = {}
    for name, w in (("SCVI", 0.0), ("SCVI + attreg prior", args.w_attr)):
        a = adata.copy()
        SCVIWithPrior.setup_anndata(a, batch_key="batch")
        scvi.settings.seed = 0
        model = SCVIWithPrior(a, gt="is_gt", w_attr=w, n_hidden=128, n_latent=10)
        model.train(max_epochs=args.max_epochs, accelerator="cpu", enable_progress_bar=False)
        attributions = np.abs(model.get_attributions(n_samples=4, reducer="l2"))
        shares[name] = float(attributions[:, gt].sum() / attributions.sum())
        print(f"{name:<20} share of encoder attribution on GT genes: {shares[name]:.3f}")
    return shares


if __name__ == "__main__":
    main()
