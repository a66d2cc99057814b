"""attreg_sc: scARE, attribution-regularized single-cell representation learning.

Examples
--------
>>> import attreg_sc as asc
>>> adata = asc.datasets.synthetic(n_cells=100, n_genes=40, n_gt_genes=8)
>>> gt = asc.gt.from_genes(adata, [f"gene{i}" for i in range(8)])
>>> int(gt.sum())
8
>>> callable(asc.metrics.fssf) and callable(asc.pl.loss_curves)
True
"""

from attreg_sc import datasets, distributions, gt, metrics, pl
from attreg_sc.model import SCARE
from attreg_sc.module import SCAREModule
from attreg_sc.train import NonFiniteLossError

__all__ = [
    "SCARE",
    "SCAREModule",
    "NonFiniteLossError",
    "datasets",
    "distributions",
    "gt",
    "metrics",
    "pl",
]
