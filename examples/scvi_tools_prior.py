"""Add an attreg prior to scvi-tools' SCVI encoder through a custom training plan.

The "any nn.Module" claim on the field's most used model: scvi-tools' ``SCVI`` is
trained with its own Lightning loop; a ``TrainingPlan`` subclass adds
``w_A * L_A`` computed by :class:`attreg.AttributionPrior` on ``module.z_encoder`` (the
latent mean, ``F = sum``), with attributions w.r.t. the encoder input ``log1p(x)``.
scvi-tools' default BatchNorm couples cells (attreg refuses it in train mode), so the
model uses LayerNorm. Needs scvi-tools (``pip install -e ".[bench]"``).

Run::

    python examples/scvi_tools_prior.py
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import attreg
import attreg_sc as asc


def _mean(q):
    """scvi-tools encoders return a Normal (``return_dist=True``) or its mean."""
    return q.loc if hasattr(q, "loc") else q


def make_classes():
    import scvi
    from scvi import REGISTRY_KEYS

    class AttributionPriorPlan(scvi.train.TrainingPlan):
        def __init__(self, module, gt=None, w_attr: float = 100.0, **kwargs):
            super().__init__(module, **kwargs)
            encoder = module.z_encoder

            def latent_mean(x, batch_index):
                return _mean(encoder(x, batch_index)[0])

            self.prior = attreg.AttributionPrior(
                latent_mean,
                torch.as_tensor(gt, dtype=torch.float32),
                reparameterizer="abs_minmax",
                weight=w_attr,
                check_batchnorm=False,
            )
            if attreg._validation.coupling_modules(encoder):
                raise ValueError("use use_batch_norm='none' (BatchNorm couples cells).")

        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            x = torch.log1p(batch[REGISTRY_KEYS.X_KEY])
            l_a = self.prior(x, additional_forward_args=(batch[REGISTRY_KEYS.BATCH_KEY],))
            self.log("attribution_loss", l_a, on_epoch=True, on_step=False)
            return loss + l_a

    class SCVIWithPrior(scvi.model.SCVI):
        _training_plan_cls = AttributionPriorPlan

    return SCVIWithPrior


def gt_share(model, adata, gt) -> float:
    import attreg.reducers

    enc = model.module.z_encoder
    x = torch.log1p(torch.as_tensor(adata.X.toarray(), dtype=torch.float32))
    b = torch.as_tensor(adata.obs["batch"].cat.codes.to_numpy()[:, None], dtype=torch.float32)
    model.module.eval()
    eg = attreg.ExpectedGradients(lambda z, c: _mean(enc(z, c)[0]), attreg.reducers.Sum())
    a = (
        eg.attribute(
            x, additional_forward_args=(b,), n_samples=4, generator=torch.Generator().manual_seed(0)
        )
        .abs()
        .sum(0)
        .numpy()
    )
    return float(a[gt].sum() / a.sum())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-epochs", type=int, default=30)
    p.add_argument("--w-attr", type=float, default=100.0)
    args = p.parse_args(argv)
    SCVIWithPrior = make_classes()
    adata = asc.datasets.synthetic(n_cells=1000, n_genes=200, n_gt_genes=20, seed=0)
    gt = adata.var["is_gt"].to_numpy()
    shares = {}
    for name, w in (("SCVI", 0.0), ("SCVI + attreg prior", args.w_attr)):
        a = adata.copy()
        SCVIWithPrior.setup_anndata(a, batch_key="batch")
        m = SCVIWithPrior(
            a, n_hidden=128, n_latent=10, use_batch_norm="none", use_layer_norm="both"
        )
        m.train(
            max_epochs=args.max_epochs,
            accelerator="cpu",
            enable_progress_bar=False,
            plan_kwargs={"gt": gt, "w_attr": w},
        )
        shares[name] = gt_share(m, a, gt)
        print(f"{name:<20} share of encoder attribution on GT genes: {shares[name]:.3f}")
    return shares


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
