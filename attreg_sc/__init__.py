"""attreg_sc: scARE, attribution-regularized single-cell representation learning.

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

from attreg_sc import datasets, distributions, gt, metrics, pl, report
from attreg_sc.model import SCARE
from attreg_sc.module import SCAREModule
from attreg_sc.train import NonFiniteLossError


def __getattr__(name: str):
    if name in ("SCAREVI", "scvi_tools"):  # imports scvi-tools: only when asked for
        import importlib

        scvi_tools = importlib.import_module("attreg_sc.scvi_tools")
        return scvi_tools if name == "scvi_tools" else scvi_tools.SCAREVI
    raise AttributeError(f"module 'attreg_sc' has no attribute {name!r}")


__all__ = [
    "SCARE",
    "SCAREVI",
    "SCAREModule",
    "NonFiniteLossError",
    "datasets",
    "distributions",
    "gt",
    "metrics",
    "pl",
    "report",
    "scvi_tools",
]
