"""Can a gene set steer anything? Per-GT counts of the genes found, expressed and variable,
read before training, with a warning naming the numbers when a set is too small or too
flat.

A GT prior moves the encoder's attribution onto the GT genes; the subclusters it can
found are differences in those genes' expression. A set with few genes detected in the
data, or whose genes barely vary between cells, has little to found them on: training
then reaches a low GT share or subclusters that random gene sets explain as well.

The thresholds (``MIN_EXPRESSED = 30``, the line of the project's target-share goal;
``MIN_VARIABLE = 10``) were kept after the target-share evaluation panel: with the default
fixed weight no (dataset, gene set) pair under 30 expressed genes reached strict FSSF 0.6
(docs/single_cell.md, "Gene sets that cannot steer"). They are necessary, not sufficient.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["diagnose", "gene_statistics", "MIN_EXPRESSED", "MIN_VARIABLE"]

logger = logging.getLogger(__name__)

#: fewest GT genes expressed in the data below which a set is reported as too small
MIN_EXPRESSED = 30
#: fewest GT genes among the data's variable genes below which a set is reported as flat
MIN_VARIABLE = 10


def gene_statistics(matrix, chunk: int = 10_000, target_sum: float = 1e4) -> pd.DataFrame:
    """Per gene: the fraction of cells with a count (``detected``) and the variance of
    ``log1p`` of library-normalized counts (``variance``), in one pass over chunks of
    rows (a backed matrix is never loaded whole).

    Parameters
    ----------
    matrix
        Counts, cells x genes (dense, sparse, or a backed dataset).
    chunk
        Rows read at a time.
    target_sum
        Counts per cell after normalization (scanpy's ``normalize_total`` default).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[1, 0, 5], [3, 0, 5], [0, 0, 5]], dtype=np.float32)
    >>> gene_statistics(x)["detected"].round(2).tolist()
    [0.67, 0.0, 1.0]
    """
    from attreg_sc.validation import _row_blocks

    n, g = matrix.shape
    detected = np.zeros(g)
    total = np.zeros(g)
    squares = np.zeros(g)
    for block in _row_blocks(matrix, chunk):
        if sp.issparse(block):
            block = sp.csr_matrix(block, dtype=np.float64)
            lib = np.asarray(block.sum(axis=1)).ravel()
            scale = np.divide(target_sum, lib, out=np.zeros_like(lib), where=lib > 0)
            logged = sp.diags(scale) @ block
            logged.data = np.log1p(logged.data)
            detected += np.bincount(block.indices[block.data > 0], minlength=g)
            total += np.asarray(logged.sum(axis=0)).ravel()
            squares += np.asarray(logged.multiply(logged).sum(axis=0)).ravel()
        else:
            block = np.asarray(block, dtype=np.float64)
            lib = block.sum(axis=1, keepdims=True)
            scale = np.divide(target_sum, lib, out=np.zeros_like(lib), where=lib > 0)
            logged = np.log1p(block * scale)
            detected += (block > 0).sum(axis=0)
            total += logged.sum(axis=0)
            squares += (logged**2).sum(axis=0)
    mean = total / max(n, 1)
    variance = np.maximum(squares / max(n, 1) - mean**2, 0.0)
    return pd.DataFrame({"detected": detected / max(n, 1), "variance": variance})


def diagnose(
    adata,
    ground_truths: Mapping[str, np.ndarray],
    *,
    layer: str | None = None,
    min_cell_fraction: float = 0.01,
    statistics: pd.DataFrame | None = None,
    warn: bool = True,
) -> pd.DataFrame:
    """One row per GT: its genes in the data (``genes``), those detected in at least
    ``min_cell_fraction`` of the cells (``expressed``) and those of them among the data's
    variable genes (``variable``: a log-normalized variance at least the median of the
    expressed genes'), and a ``verdict``. Warns (logging, WARNING) with the numbers for a
    set below ``MIN_EXPRESSED`` expressed or ``MIN_VARIABLE`` variable genes.

    Parameters
    ----------
    adata
        The AnnData (raw counts in ``X`` or ``layer``).
    ground_truths
        ``{name: boolean vector over the genes}`` (per-cell GTs are not diagnosed here).
    layer
        Layer with the counts.
    min_cell_fraction
        Fraction of cells in which a gene must be detected to count as expressed.
    statistics
        Per-gene statistics from :func:`gene_statistics` (computed when not given).
    warn
        Log a warning for each set too small or too flat.

    Examples
    --------
    >>> import attreg_sc as asc
    >>> adata = asc.datasets.synthetic(n_cells=300, n_genes=100, n_gt_genes=40, seed=0)
    >>> table = diagnose(adata, {"planted": adata.var["is_gt"].to_numpy()}, warn=False)
    >>> int(table.loc["planted", "genes"]), table.loc["planted", "verdict"]
    (40, 'ok')
    """
    from attreg_sc.validation import get_counts_matrix

    if not 0 <= min_cell_fraction < 1:
        raise ValueError(f"min_cell_fraction must be in [0, 1), got {min_cell_fraction}.")
    if statistics is None:
        statistics = gene_statistics(get_counts_matrix(adata, layer))
    expressed = statistics["detected"].to_numpy() >= min_cell_fraction
    variance = statistics["variance"].to_numpy()
    cut = np.median(variance[expressed]) if expressed.any() else np.inf
    variable = expressed & (variance >= cut)
    rows = []
    for name, mask in ground_truths.items():
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (len(statistics),):
            raise ValueError(
                f"GT {name!r} has {mask.shape[0]} entries; the data has {len(statistics)} genes."
            )
        n_expr, n_var = int((mask & expressed).sum()), int((mask & variable).sum())
        if n_expr < MIN_EXPRESSED:
            verdict = "too small"
        elif n_var < MIN_VARIABLE:
            verdict = "too flat"
        else:
            verdict = "ok"
        rows.append(dict(gt=str(name), genes=int(mask.sum()), expressed=n_expr,
                         variable=n_var, verdict=verdict))
        if warn and verdict == "too small":
            logger.warning(
                "GT %r may be too small to found subclusters: %d of its genes are in the "
                "data and %d expressed (in >= %g%% of cells), fewer than %d. Expect a low "
                "GT share and an FSSF near random sets'; a larger gene set steers more.",
                name, int(mask.sum()), n_expr, 100 * min_cell_fraction, MIN_EXPRESSED,
            )
        elif warn and verdict == "too flat":
            logger.warning(
                "GT %r may be too flat to found subclusters: %d of its %d expressed genes "
                "are among the data's variable genes, fewer than %d. Expect a low GT share "
                "and an FSSF near random sets'; a gene set that varies between cells "
                "steers more.",
                name, n_var, n_expr, MIN_VARIABLE,
            )
    return pd.DataFrame(rows, columns=["gt", "genes", "expressed", "variable", "verdict"]
                        ).set_index("gt")
