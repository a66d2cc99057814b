"""attreg_sc: scARE, attribution-regularized single-cell representation learning, on
scvi-tools.

Examples
--------
>>> import attreg_sc as asc
>>> adata = asc.datasets.synthetic(n_cells=100, n_genes=40, n_gt_genes=8)
>>> gt = asc.gt.from_genes(adata, [f"gene{i}" for i in range(8)])
>>> int(gt.sum())
8
>>> callable(asc.metrics.fssf) and callable(asc.pl.loss_curves) and callable(asc.report.evaluate)
True
"""

from attreg_sc import datasets, distributions, gt, gt_diagnostics, metrics, panel, pl, report
from attreg_sc.files import ModelFileError
from attreg_sc.mixin import AttributionPriorModelMixin, with_prior
from attreg_sc.model import SCARE
from attreg_sc.module import SCAREVAE
from attreg_sc.settings import PriorSettings
from attreg_sc.train import NonFiniteLossError


def __getattr__(name: str):
    if name == "SCAREVI":  # attreg 0.1's name of the scvi-tools model
        import warnings

        warnings.warn(
            "attreg_sc.SCAREVI is deprecated: it is attreg_sc.SCARE now.",
            DeprecationWarning,
            stacklevel=2,
        )
        return SCARE
    raise AttributeError(f"module 'attreg_sc' has no attribute {name!r}")


__all__ = [
    "SCARE",
    "SCAREVAE",
    "AttributionPriorModelMixin",
    "with_prior",
    "PriorSettings",
    "NonFiniteLossError",
    "ModelFileError",
    "datasets",
    "distributions",
    "gt",
    "gt_diagnostics",
    "metrics",
    "panel",
    "pl",
    "report",
]
