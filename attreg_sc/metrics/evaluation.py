"""Evaluation beyond FSSF: attribution share, GT polarization, label separation,
integration quality (a scikit-learn subset of scib's metrics).

Examples
--------
>>> import numpy as np
>>> attr = np.array([[3., 1., 0.], [1., 1., 2.]])
>>> attribution_share(attr, np.array([True, False, False]))["share"].round(2).tolist()
[0.75, 0.25]
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from sklearn.metrics import silhouette_samples
from sklearn.neighbors import NearestNeighbors

logger = logging.getLogger(__name__)

__all__ = [
    "active_dimensions",
    "attribution_share",
    "dimension_shares",
    "attribution_summary",
    "gt_polarization",
    "label_separation",
    "integration_metrics",
]


def attribution_share(
    attributions: np.ndarray, gt_genes: np.ndarray, groups: np.ndarray | None = None
) -> pd.DataFrame:
    """Share of each cell's absolute attribution mass on the GT genes.

    Returns one row per cell (``share``, and ``group`` when given); use
    ``.groupby("group").share.mean()`` for a per-cell-type summary.

    Parameters
    ----------
    attributions
        Cells x genes.
    gt_genes
        Boolean mask over the genes.
    groups
        Group of every cell (e.g. cell type); ``None``: one group.
    """
    a = np.abs(np.asarray(attributions, dtype=np.float64))
    gt_genes = np.asarray(gt_genes, dtype=bool)
    total = a.sum(1)
    share = np.divide(a[:, gt_genes].sum(1), total, out=np.zeros_like(total), where=total > 0)
    out = pd.DataFrame({"share": share})
    if groups is not None:
        out["group"] = np.asarray(groups).astype(str)
    return out


def dimension_shares(
    model,
    gt_genes: np.ndarray,
    adata=None,
    n_samples: int = 8,
    seed: int = 0,
    dims: list[int] | None = None,
    references: str = "batch",
) -> pd.DataFrame:
    """GT share of the attributions of every latent dimension and of their sum.

    A prior on ``F = sum_k mu_k`` can be satisfied while each dimension stays driven by
    other genes (their contributions cancel in the sum). This table shows it: one row
    per latent dimension ``k`` (``F = mu_k``) and one row ``"sum"``, each with the mean
    over cells of the share of absolute EG attribution on the GT genes, and the
    dimension's variance across cells (``var``; collapsed dimensions have ~0).

    Parameters
    ----------
    model
        A trained :class:`~attreg_sc.SCARE` model.
    gt_genes
        Boolean mask over the model's genes.
    adata
        Cells to explain (default: the training AnnData).
    n_samples, seed
        EG references per cell and their seed.
    dims
        Latent dimensions to explain (default: all).
    references
        EG's references (``get_attributions``): ``"batch"``, or ``"label"`` for the share
        of what distinguishes each cell within its registered label (what the prior's
        ``references="label"`` constrains).

    Examples
    --------
    >>> import attreg_sc as asc
    >>> adata = asc.datasets.synthetic(n_cells=100, n_genes=30, n_gt_genes=5, seed=0)
    >>> asc.SCARE.setup_anndata(adata)
    >>> m = asc.SCARE(adata, n_latent=2); m.train(max_epochs=1, enable_progress_bar=False)
    >>> dimension_shares(m, adata.var["is_gt"].to_numpy(), n_samples=2).index.tolist()
    ['0', '1', 'sum']
    """
    gt_genes = np.asarray(gt_genes, dtype=bool)
    latent = model.get_latent_representation(adata)
    dims = list(range(latent.shape[1])) if dims is None else list(dims)
    rows = {}
    for k in [*dims, "sum"]:
        attr = model.get_attributions(
            adata, n_samples=n_samples, seed=seed, reducer=k, references=references
        )
        rows[str(k)] = {
            "gt_share": float(attribution_share(attr, gt_genes)["share"].mean()),
            "var": float(latent[:, k].var()) if k != "sum" else float(latent.sum(1).var()),
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("dimension")


def active_dimensions(latent: np.ndarray, threshold: float = 0.01) -> int:
    """Number of active latent dimensions: variance of the latent mean across cells
    above ``threshold`` (Burda et al., 2016's "active units"; collapse shows as few).

    Parameters
    ----------
    latent
        Cells x latent dimensions.
    threshold
        A dimension is active when its variance across cells exceeds this.

    Examples
    --------
    >>> import numpy as np
    >>> z = np.c_[np.random.default_rng(0).normal(size=100), np.zeros(100)]
    >>> active_dimensions(z)
    1
    """
    return int((np.asarray(latent, dtype=np.float64).var(axis=0) > threshold).sum())


def attribution_summary(
    attributions: np.ndarray, var_names, groups: np.ndarray, absolute: bool = True
) -> pd.DataFrame:
    """Mean (absolute) attribution per gene within each group (e.g. cell type).

    Returns a ``groups x genes`` DataFrame; ``.T.nlargest(10, "B")`` lists the ten genes
    the model is most sensitive to in B cells.

    Parameters
    ----------
    attributions
        Cells x genes.
    var_names
        Gene names.
    groups
        Group of every cell.
    absolute
        Summarize ``|attribution|`` (else signed values).
    """
    a = np.abs(attributions) if absolute else np.asarray(attributions)
    df = pd.DataFrame(a, columns=list(map(str, var_names)))
    df["_group"] = np.asarray(groups).astype(str)
    return df.groupby("_group").mean().rename_axis("group")


def _gt_total(counts, gt_genes: np.ndarray) -> np.ndarray:
    lib = np.asarray(counts.sum(axis=1)).ravel().clip(min=1.0)
    gt = np.asarray(counts[:, np.flatnonzero(gt_genes)].sum(axis=1)).ravel()
    return np.log1p(gt / lib * 1e4)


def gt_polarization(
    latent: np.ndarray, counts, gt_genes: np.ndarray, cell_types: np.ndarray, min_cells: int = 20
) -> pd.DataFrame:
    """Per cell type: |Pearson r| between GT-total expression and the first principal
    axis of that type's latent (the paper's Figure 2: is the type polarized by the GT?).

    GT-total is ``log1p(sum of GT-gene counts / library * 1e4)``.

    Parameters
    ----------
    latent
        Cells x latent dimensions.
    counts
        Cells x genes counts (dense or sparse).
    gt_genes
        Boolean mask over the genes.
    cell_types
        Cell type of every cell.
    min_cells
        Cell types with fewer cells are skipped.
    """
    total = _gt_total(counts, np.asarray(gt_genes, dtype=bool))
    cell_types = np.asarray(cell_types).astype(str)
    rows = []
    for ct in pd.unique(cell_types):
        idx = np.flatnonzero(cell_types == ct)
        if len(idx) < min_cells or np.std(total[idx]) == 0:
            continue
        z = latent[idx] - latent[idx].mean(0)
        pc1 = z @ np.linalg.svd(z, full_matrices=False)[2][0]
        r = np.corrcoef(pc1, total[idx])[0, 1]
        rows.append({"cell_type": ct, "n_cells": len(idx), "abs_corr_pc1": abs(float(r))})
    return pd.DataFrame(rows, columns=["cell_type", "n_cells", "abs_corr_pc1"])


def _knn(latent: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` nearest *other* points of each point (``k`` capped at n - 1).

    scikit-learn's ``kneighbors()`` without a query excludes each point itself (even
    among duplicates), so no column has to be dropped.
    """
    k = min(k, len(latent) - 1)
    return NearestNeighbors(n_neighbors=k).fit(latent).kneighbors(return_distance=False)


def _mean_silhouette(latent: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette, NaN where it is undefined (one label, or one cell per label)."""
    if not 1 < len(set(labels)) < len(labels):
        return float("nan")
    return float(silhouette_samples(latent, labels).mean())


def label_separation(
    latent: np.ndarray,
    labels: np.ndarray,
    cell_types: np.ndarray,
    k: int = 15,
    min_cells: int = 20,
) -> pd.DataFrame:
    """Separation of label groups (e.g. time points) within each cell type.

    ``knn_purity``: mean fraction of a cell's ``k`` nearest neighbours (same type) that
    share its label; ``purity_over_chance``: that minus the purity of a random labelling
    (``sum_l p_l^2``); ``silhouette``: mean silhouette of the labels (in [-1, 1]).

    Parameters
    ----------
    latent
        Cells x latent dimensions.
    labels
        Label of every cell (e.g. time point).
    cell_types
        Cell type of every cell.
    k
        Neighbours of the kNN purity.
    min_cells
        Cell types with fewer cells are skipped.
    """
    labels = np.asarray(labels).astype(str)
    cell_types = np.asarray(cell_types).astype(str)
    rows = []
    for ct in pd.unique(cell_types):
        idx = np.flatnonzero(cell_types == ct)
        lab = labels[idx]
        if len(idx) < min_cells or len(set(lab)) < 2:
            continue
        nn = _knn(latent[idx], k)
        purity = float((lab[nn] == lab[:, None]).mean())
        p = pd.Series(lab).value_counts(normalize=True).to_numpy()
        rows.append(
            {
                "cell_type": ct,
                "n_cells": len(idx),
                "knn_purity": purity,
                "purity_over_chance": purity - float((p**2).sum()),
                "silhouette": _mean_silhouette(latent[idx], lab),
            }
        )
    return pd.DataFrame(
        rows, columns=["cell_type", "n_cells", "knn_purity", "purity_over_chance", "silhouette"]
    )


def integration_metrics(
    latent: np.ndarray, batches: np.ndarray, labels: np.ndarray, k: int = 15
) -> dict[str, float]:
    """Batch removal and bio conservation, a scikit-learn subset of scib's metrics.

    * ``silhouette_label``: ``(mean silhouette of labels + 1) / 2`` (higher: types apart);
    * ``silhouette_batch``: scib's ``1 - |silhouette of batches within each label|``
      (higher: batches mixed);
    * ``knn_batch_mixing``: mean entropy of the batches among each cell's ``k`` neighbours
      over its maximum (1: perfectly mixed);
    * ``graph_connectivity``: mean over labels of the share of the label's cells in the
      largest connected component of the kNN graph restricted to the label.

    Parameters
    ----------
    latent
        Cells x latent dimensions.
    batches
        Batch of every cell.
    labels
        Label (cell type) of every cell.
    k
        Neighbours of the kNN batch mixing.
    """
    batches = np.asarray(batches).astype(str)
    labels = np.asarray(labels).astype(str)
    out: dict[str, float] = {}
    out["silhouette_label"] = float((_mean_silhouette(latent, labels) + 1) / 2)
    per_label = []
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        if 1 < len(set(batches[idx])) < len(idx):  # silhouette's own requirement
            per_label.append(np.mean(1 - np.abs(silhouette_samples(latent[idx], batches[idx]))))
    out["silhouette_batch"] = float(np.mean(per_label)) if per_label else float("nan")
    nn = _knn(latent, k)
    cats = np.unique(batches)
    if len(cats) > 1:
        codes = pd.Categorical(batches, categories=cats).codes
        freq = np.stack([(codes[nn] == c).mean(1) for c in range(len(cats))], 1)
        ent = -(np.where(freq > 0, freq * np.log(np.where(freq > 0, freq, 1)), 0)).sum(1)
        out["knn_batch_mixing"] = float(ent.mean() / np.log(len(cats)))
    else:
        out["knn_batch_mixing"] = float("nan")
    conn = []
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        if len(idx) < 3:
            continue
        sub = _knn(latent[idx], k)
        graph = sp.csr_matrix(
            (np.ones(sub.size), (np.repeat(np.arange(len(idx)), sub.shape[1]), sub.ravel())),
            shape=(len(idx), len(idx)),
        )
        _, comp = connected_components(graph, directed=False)
        conn.append(np.bincount(comp).max() / len(idx))
    out["graph_connectivity"] = float(np.mean(conn)) if conn else float("nan")
    return out


SCIB_BIO = ("silhouette_label", "isolated_labels", "nmi_kmeans", "ari_kmeans", "clisi_knn")
SCIB_BATCH = ("silhouette_batch", "ilisi_knn", "kbet_per_label", "graph_connectivity")


def scib_integration_metrics(
    latent: np.ndarray, batches: np.ndarray, labels: np.ndarray, n_neighbors: int = 90
) -> dict[str, float]:
    """scib-metrics' batch-removal and bio-conservation scores and its aggregate.

    Needs the optional ``scib-metrics`` package (``pip install -e ".[scib]"``; 0.5.x on
    Python 3.11, it brings JAX). Bio conservation: ``silhouette_label``,
    ``isolated_labels``, ``nmi_kmeans``, ``ari_kmeans``, ``clisi_knn``; batch removal:
    ``silhouette_batch``, ``ilisi_knn``, ``kbet_per_label``, ``graph_connectivity``, on
    an exact ``n_neighbors``-nearest-neighbour graph (scib-metrics' default size, capped
    at ``n - 1``). ``bio_conservation`` and ``batch_correction`` are the means of each
    group and ``total = 0.6 bio + 0.4 batch`` (scib-metrics' ``Benchmarker`` weights,
    without its min-max scaling across methods). A metric that scib-metrics cannot
    compute on the data (e.g. kBET on labels of a few cells) is NaN and left out of the
    means; the reason is logged.

    Parameters
    ----------
    latent
        Cells x latent dimensions.
    batches
        Batch of every cell.
    labels
        Label (cell type) of every cell.
    n_neighbors
        Neighbours of scib-metrics' kNN graph.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(size=(120, 5)); z[:60] += 4
    >>> labels = np.repeat(["a", "b"], 60); batches = np.tile(["x", "y"], 60)
    >>> m = scib_integration_metrics(z, batches, labels)  # doctest: +SKIP
    >>> m["silhouette_label"] > 0.7  # doctest: +SKIP
    True
    """
    try:
        import scib_metrics
        from scib_metrics.nearest_neighbors import NeighborsResults
    except ImportError as err:
        raise ImportError(
            "scib_integration_metrics needs scib-metrics: pip install -e '.[scib]' "
            "(or use integration_metrics, the scikit-learn subset)."
        ) from err
    latent = np.asarray(latent, dtype=np.float32)
    batches = np.asarray(batches).astype(str)
    labels = np.asarray(labels).astype(str)
    k = min(n_neighbors, latent.shape[0] - 1)
    dist, idx = NearestNeighbors(n_neighbors=k).fit(latent).kneighbors(latent)
    nn = NeighborsResults(indices=idx, distances=dist)
    # each call returns {metric: value}; kmeans clustering gives NMI and ARI at once
    calls = {
        "silhouette_label": lambda: {
            "silhouette_label": scib_metrics.silhouette_label(latent, labels)
        },
        "isolated_labels": lambda: {
            "isolated_labels": scib_metrics.isolated_labels(latent, labels, batches)
        },
        "nmi/ari kmeans": lambda: {
            f"{k}_kmeans": v
            for k, v in scib_metrics.nmi_ari_cluster_labels_kmeans(latent, labels).items()
        },
        "clisi_knn": lambda: {"clisi_knn": scib_metrics.clisi_knn(nn, labels)},
        "silhouette_batch": lambda: {
            "silhouette_batch": scib_metrics.silhouette_batch(latent, labels, batches)
        },
        "ilisi_knn": lambda: {"ilisi_knn": scib_metrics.ilisi_knn(nn, batches)},
        "kbet_per_label": lambda: {
            "kbet_per_label": scib_metrics.kbet_per_label(nn, batches, labels)
        },
        "graph_connectivity": lambda: {
            "graph_connectivity": scib_metrics.graph_connectivity(nn, labels)
        },
    }
    out = dict.fromkeys((*SCIB_BIO, *SCIB_BATCH), float("nan"))
    for name, call in calls.items():
        try:
            out.update({k: float(v) for k, v in call().items() if k in out})
        except Exception as err:  # scib-metrics raises many kinds on degenerate data
            logger.warning("scib-metrics %s failed (%s); recorded as NaN.", name, err)
    out["bio_conservation"] = _finite_mean(out[m] for m in SCIB_BIO)
    out["batch_correction"] = _finite_mean(out[m] for m in SCIB_BATCH)
    out["total"] = 0.6 * out["bio_conservation"] + 0.4 * out["batch_correction"]
    return out


def _finite_mean(values) -> float:
    """Mean of the finite values; NaN when there are none."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")
