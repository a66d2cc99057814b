"""Plots in scanpy's style: each returns a matplotlib ``Figure``, draws into ``ax=`` when
given one (single-panel plots), shows it with ``show=True`` and writes it with ``save=PATH``;
nothing is shown by default. :func:`attributions` takes an AnnData.

Examples
--------
>>> import matplotlib
>>> matplotlib.use("Agg")
>>> fig = loss_curves({"reconstruction": [3.0, 2.0], "kl": [1.0, 0.5],
...                    "attribution": [0.2, 0.1], "validation_loss": [4.0, 3.0]})
>>> len(fig.axes)
4
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

__all__ = [
    "attributions",
    "loss_curves",
    "fssf_heatmap",
    "embedding_by_cell_type",
    "label_separation_bars",
    "attribution_heatmap",
    "gt_share_bars",
    "panel_coverage",
]

_TERMS = [
    ("reconstruction", "L_R (reconstruction)"),
    ("kl", "L_D (KL)"),
    ("attribution", "L_A (attribution)"),
    ("validation_loss", "validation objective"),
]


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _axes(ax, figsize: tuple[float, float]):
    """``(figure, axes)``: the given ``ax`` and its figure, or a new figure."""
    if ax is not None:
        return ax.figure, ax
    return _plt().subplots(figsize=figsize)


def _finish(fig, show: bool | None, save: str | None, own: bool = True):
    """Lay out, write (``save``) and show (``show``) the figure; return it."""
    if own:
        fig.tight_layout()
    if save is not None:
        fig.savefig(save, dpi=110)
    if show:
        _plt().show()
    return fig


def _label_bars(ax) -> None:
    """Write each bar's value above it."""
    for container in ax.containers:
        ax.bar_label(container, fmt="%.2f", fontsize=7, padding=1)


def loss_curves(
    histories: Mapping[str, Mapping[str, list]] | Mapping[str, list],
    show: bool | None = None,
    save: str | None = None,
):
    """One panel per loss term; ``histories`` is a history or ``{model name: history}``.

    Parameters
    ----------
    histories
        ``SCARE.loss_history`` or ``{model name: history}``.
    show, save
        Show the figure; write it to this path.
    """
    plt = _plt()
    if histories and not isinstance(next(iter(histories.values())), Mapping):
        histories = {"model": histories}
    fig, axes = plt.subplots(1, len(_TERMS), figsize=(4 * len(_TERMS), 3), squeeze=False)
    for ax, (key, title) in zip(axes[0], _TERMS, strict=True):
        for name, h in histories.items():
            if key in h and len(h[key]):
                ax.plot(np.arange(1, len(h[key]) + 1), h[key], label=name)
        ax.set_title(title)
        ax.set_xlabel("epoch")
    axes[0][0].legend()
    return _finish(fig, show, save)


def fssf_heatmap(
    summaries: Mapping[str, pd.DataFrame],
    ax=None,
    show: bool | None = None,
    save: str | None = None,
):
    """Heatmap of mean FSSF per cell type: columns ``model: GT`` and ``model: random``.

    Parameters
    ----------
    summaries
        ``{model name: FSSFResult.summary()}``.
    ax, show, save
        Draw into this matplotlib ``Axes``; show the figure; write it to this path.
    """
    cols = {}
    for name, s in summaries.items():
        cols[f"{name}: GT"] = s["fssf_gt"]
        cols[f"{name}: random"] = s["fssf_random"]
    table = pd.DataFrame(cols)
    own = ax is None
    fig, ax = _axes(ax, (1.6 * table.shape[1] + 2, 0.5 * table.shape[0] + 1.5))
    im = ax.imshow(table.to_numpy(dtype=float), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(table.shape[1]), table.columns, rotation=30, ha="right")
    ax.set_yticks(range(table.shape[0]), table.index)
    for i in range(table.shape[0]):
        for j in range(table.shape[1]):
            v = table.iat[i, j]
            ax.text(j, i, "" if pd.isna(v) else f"{v:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="FSSF")
    ax.set_title("FSSF per cell type (1: GT genes found the subclusters)")
    return _finish(fig, show, save, own)


def embedding_by_cell_type(
    latent: np.ndarray,
    cell_types: np.ndarray,
    subclusters: np.ndarray,
    gt_total: np.ndarray,
    max_types: int = 6,
    seed: int = 0,
    show: bool | None = None,
    save: str | None = None,
):
    """Per cell type: UMAP of its latent coloured by subcluster and by GT-total.

    Parameters
    ----------
    latent
        Cells x latent dimensions.
    cell_types, subclusters, gt_total
        Per cell: cell type, FSSF subcluster, total GT-gene counts.
    max_types
        The largest cell types shown.
    seed
        UMAP's seed.
    show, save
        Show the figure; write it to this path.
    """
    import anndata as ad
    import scanpy as sc

    from attreg_sc._threads import torch_threads_unchanged

    plt = _plt()
    cell_types = np.asarray(cell_types).astype(str)
    types = pd.Series(cell_types).value_counts().index[:max_types]
    fig, axes = plt.subplots(len(types), 2, figsize=(8, 3.2 * len(types)), squeeze=False)
    for row, ct in zip(axes, types, strict=True):
        idx = np.flatnonzero(cell_types == ct)
        tmp = ad.AnnData(np.zeros((len(idx), 0), dtype=np.float32))
        tmp.obsm["X_latent"] = latent[idx]
        with torch_threads_unchanged():  # scanpy's kNN changes torch's thread count
            sc.pp.neighbors(tmp, use_rep="X_latent", n_neighbors=min(15, len(idx) - 1))
            sc.tl.umap(tmp, random_state=seed)
        xy = tmp.obsm["X_umap"]
        subs = np.asarray(subclusters)[idx].astype(str)
        for k, s in enumerate(sorted(set(subs))):
            m = subs == s
            row[0].scatter(xy[m, 0], xy[m, 1], s=4, label=s or "(small)", color=f"C{k % 10}")
        row[0].set_title(f"{ct}: subclusters")
        row[0].legend(markerscale=3, fontsize=7)
        sca = row[1].scatter(xy[:, 0], xy[:, 1], s=4, c=np.asarray(gt_total)[idx], cmap="viridis")
        fig.colorbar(sca, ax=row[1], label="GT total")
        row[1].set_title(f"{ct}: GT-gene expression")
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    return _finish(fig, show, save)


def label_separation_bars(
    tables: Mapping[str, pd.DataFrame],
    metric: str = "purity_over_chance",
    ax=None,
    show: bool | None = None,
    save: str | None = None,
):
    """Bars of a label-separation metric per cell type, one bar group per model, each
    bar labelled with its value.

    Parameters
    ----------
    tables
        ``{model name: attreg_sc.metrics.label_separation(...)}``.
    metric
        Column to plot.
    ax, show, save
        Draw into this ``Axes``; show the figure; write it to this path.
    """
    wide = pd.DataFrame({name: t.set_index("cell_type")[metric] for name, t in tables.items()})
    own = ax is None
    fig, ax = _axes(ax, (max(5, 0.9 * len(wide)), 3.5))
    wide.plot.bar(ax=ax)
    _label_bars(ax)
    ax.set_ylabel(metric)
    ax.set_title("separation of label groups within each cell type")
    return _finish(fig, show, save, own)


def attribution_heatmap(
    attributions: np.ndarray,
    var_names,
    cell_types: np.ndarray,
    n_genes: int = 30,
    ax=None,
    show: bool | None = None,
    save: str | None = None,
):
    """Mean |attribution| per cell type for the ``n_genes`` genes with the largest mean.

    Parameters
    ----------
    attributions
        Cells x genes.
    var_names
        Gene names.
    cell_types
        Cell type of every cell.
    n_genes
        Genes shown.
    ax, show, save
        Draw into this ``Axes``; show the figure; write it to this path.
    """
    df = pd.DataFrame(np.abs(attributions), columns=list(var_names))
    df["cell_type"] = np.asarray(cell_types).astype(str)
    means = df.groupby("cell_type").mean()
    top = means.mean(0).sort_values(ascending=False).index[:n_genes]
    own = ax is None
    fig, ax = _axes(ax, (0.3 * len(top) + 3, 0.4 * len(means) + 2))
    im = ax.imshow(means[top].to_numpy(), aspect="auto", cmap="magma")
    ax.set_xticks(range(len(top)), top, rotation=90, fontsize=7)
    ax.set_yticks(range(len(means)), means.index)
    fig.colorbar(im, ax=ax, label="mean |attribution|")
    return _finish(fig, show, save, own)


def attributions(
    adata,
    layer: str = "scare_attributions",
    groupby: str = "cell_type",
    n_genes: int = 30,
    ax=None,
    show: bool | None = None,
    save: str | None = None,
):
    """:func:`attribution_heatmap` of an AnnData: ``adata.layers[layer]`` (written by
    ``SCARE.get_attributions(key_added=...)``) grouped by ``adata.obs[groupby]``.

    Parameters
    ----------
    adata
        AnnData with the attributions in a layer.
    layer
        The layer.
    groupby
        ``obs`` column with the groups (rows of the heatmap).
    n_genes
        Genes shown (largest mean ``|attribution|``).
    ax, show, save
        Draw into this ``Axes``; show the figure; write it to this path.

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> import numpy as np, anndata as ad, pandas as pd
    >>> a = ad.AnnData(np.ones((4, 3), np.float32), obs=pd.DataFrame({"t": list("aabb")},
    ...                index=list("0123")))
    >>> a.layers["scare_attributions"] = np.random.default_rng(0).normal(size=(4, 3))
    >>> len(attributions(a, groupby="t").axes)
    2
    """
    if layer not in adata.layers:
        raise KeyError(
            f"adata.layers has no {layer!r}; run model.get_attributions(adata, "
            f"key_added={layer!r}) first."
        )
    if groupby not in adata.obs:
        raise KeyError(f"groupby {groupby!r} not in adata.obs (columns: {list(adata.obs)}).")
    return attribution_heatmap(
        np.asarray(adata.layers[layer]),
        adata.var_names,
        adata.obs[groupby].to_numpy(),
        n_genes,
        ax=ax,
        show=show,
        save=save,
    )


def gt_share_bars(
    shares: Mapping[str, pd.Series],
    ax=None,
    show: bool | None = None,
    save: str | None = None,
):
    """Share of attribution mass on GT genes per cell type, one bar group per model,
    each bar labelled with its value.

    Parameters
    ----------
    shares
        ``{model name: share per cell type}``.
    ax, show, save
        Draw into this ``Axes``; show the figure; write it to this path.
    """
    wide = pd.DataFrame(dict(shares))
    own = ax is None
    fig, ax = _axes(ax, (max(5, 0.9 * len(wide)), 3.5))
    wide.plot.bar(ax=ax)
    _label_bars(ax)
    ax.set_ylabel("share of |attribution| on GT genes")
    ax.set_ylim(0, 1.08)
    return _finish(fig, show, save, own)


def panel_coverage(
    panel,
    ax=None,
    show: bool | None = None,
    save: str | None = None,
):
    """Each cell type's coverage by a gene panel: the share of the type's attribution
    importance held by the panel's first ``k`` genes, against ``k``
    (:meth:`attreg_sc.panel.Panel.coverage`), with the asked sizes marked.

    Parameters
    ----------
    panel
        A :class:`attreg_sc.panel.Panel`.
    ax, show, save
        Draw into this ``Axes``; show the figure; write it to this path.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import pandas as pd
    >>> from attreg_sc.panel import Panel, PanelSettings
    >>> imp = pd.DataFrame({"B": [0.7, 0.2, 0.1], "T": [0.1, 0.3, 0.6]}, index=["a", "b", "c"])
    >>> p = Panel(["a", "c"], pd.DataFrame(), imp, [1, 2], PanelSettings())
    >>> fig = panel_coverage(p)
    >>> len(fig.axes[0].lines) >= 2
    True
    """
    coverage = panel.coverage()
    own = ax is None
    fig, ax = _axes(ax, (6, 3.8))
    for name in coverage.columns:
        ax.plot(coverage.index, coverage[name].to_numpy(), label=str(name))
    for n in panel.sizes:
        ax.axvline(n, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("panel size (genes, in rank order)")
    ax.set_ylabel("share of the type's attribution")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize="small", frameon=False, ncol=2 if coverage.shape[1] > 6 else 1)
    return _finish(fig, show, save, own)
