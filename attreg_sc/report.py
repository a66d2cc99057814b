"""Evaluate trained models side by side and write a report folder (PNGs + index.html).

Examples
--------
>>> import attreg_sc as asc, tempfile, os
>>> adata = asc.datasets.synthetic(n_cells=300, n_genes=60, n_gt_genes=10, seed=0)
>>> gt = adata.var["is_gt"].to_numpy()
>>> asc.SCARE.setup_anndata(adata, batch_key="batch")
>>> m = asc.SCARE(adata, gt=gt, n_latent=3)
>>> m.train(max_epochs=3, enable_progress_bar=False)
>>> ev = evaluate({"scARE": m}, gt, "cell_type", n_random=3, min_cells=50, attributions=False)
>>> out = tempfile.mkdtemp()
>>> path = write_report(ev, out, plots=False)
>>> sorted(os.listdir(out))[:2]
['fssf.csv', 'index.html']
"""

from __future__ import annotations

import html
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from attreg_sc._io import atomic_path, atomic_write_text
from attreg_sc.metrics import (
    active_dimensions,
    attribution_share,
    dimension_shares,
    fssf,
    gt_polarization,
    integration_metrics,
    label_separation,
)
from attreg_sc.metrics.evaluation import _gt_total

__all__ = ["Evaluation", "evaluate", "write_report"]

logger = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Everything :func:`write_report` shows, per model name.

    Parameters
    ----------
    models
        ``{name: trained model}``.
    gt
        Boolean GT vector over the genes.
    cell_type_key
        ``obs`` column with cell types.
    fssf, polarization, gt_share, attributions, label_separation
        Results per model name, filled by :func:`evaluate`.
    integration, dimension_shares, active_dimensions
        The same.
    label_key
        ``obs`` label whose separation was measured.
    data_name, gt_name
        How the report names the data and the GT gene set.
    """

    models: dict
    gt: np.ndarray
    cell_type_key: str
    fssf: dict = field(default_factory=dict)
    polarization: dict = field(default_factory=dict)
    gt_share: dict = field(default_factory=dict)
    attributions: dict = field(default_factory=dict)
    label_separation: dict = field(default_factory=dict)
    integration: dict = field(default_factory=dict)
    dimension_shares: dict = field(default_factory=dict)
    active_dimensions: dict = field(default_factory=dict)
    label_key: str | None = None
    data_name: str | None = None
    gt_name: str | None = None

    def summary(self) -> pd.DataFrame:
        """One row per model: mean FSSF (GT, random), polarization, GT share, ..."""
        rows = {}
        for name in self.models:
            t = self.fssf[name].table
            row = {
                "fssf_gt": t.score.mean() if len(t) else np.nan,
                "fssf_random": t.random_mean.mean() if len(t) else np.nan,
                "n_pairs": len(t),
                "gt_polarization": self.polarization[name].abs_corr_pc1.mean(),
                "reconstruction": _history(self.models[name])["reconstruction"][-1],
                "max_subclusters": self.fssf[name].summary()["n_subclusters"].max()
                if len(t)
                else 0,
                "move_median": t.move_median.median() if len(t) else np.nan,
                "active_dimensions": self.active_dimensions.get(name, np.nan),
            }
            if name in self.gt_share:
                row["gt_attribution_share"] = float(self.gt_share[name].mean())
            if name in self.dimension_shares:
                shares = self.dimension_shares[name]["gt_share"]
                row["gt_share_per_dimension"] = float(shares.drop(index="sum").mean())
            if name in self.label_separation:
                row["label_purity_over_chance"] = self.label_separation[
                    name
                ].purity_over_chance.mean()
            for k, v in self.integration.get(name, {}).items():
                row[k] = v
            rows[name] = row
        return _integers_as_integers(pd.DataFrame(rows).T)


_INTEGER_COLUMNS = ("max_subclusters", "active_dimensions")


def _history(model) -> dict:
    """A model's per-epoch history per loss term (:attr:`attreg_sc.SCARE.loss_history`)."""
    return model.loss_history


def _integers_as_integers(table: pd.DataFrame) -> pd.DataFrame:
    """Counts (``n_*`` and :data:`_INTEGER_COLUMNS`) as integers, not ``28.000``."""
    table = table.copy()
    for col in table.columns:
        if str(col).startswith("n_") or col in _INTEGER_COLUMNS:
            values = pd.to_numeric(table[col], errors="coerce")
            finite = values.dropna()
            if len(finite) and np.allclose(finite, np.round(finite)):
                table[col] = values.round().astype("Int64")
    return table


def evaluate(
    models: Mapping[str, object],
    gt: np.ndarray,
    cell_type_key: str,
    adata=None,
    label_key: str | None = None,
    n_random: int = 100,
    resolution: float = 0.5,
    min_cells: int = 50,
    attributions: bool = True,
    attribution_samples: int = 4,
    seed: int = 0,
    progress_bar: bool = False,
    data_name: str | None = None,
    gt_name: str | None = None,
) -> Evaluation:
    """FSSF (GT and random control, latent-structure diagnostics), GT polarization, GT
    attribution share per cell type and per latent dimension, active dimensions, label
    separation (``label_key``) and integration metrics (when there are batches).

    Parameters
    ----------
    models
        ``{name: trained SCARE}``.
    gt
        Boolean GT vector over the genes.
    cell_type_key
        ``obs`` column with cell types.
    adata
        Cells to evaluate (default: each model's own AnnData).
    label_key
        ``obs`` label whose separation within cell types is measured.
    n_random, resolution, min_cells, seed
        FSSF's settings (:func:`attreg_sc.metrics.fssf`).
    attributions, attribution_samples
        Compute EG attributions (``attribution_samples`` references per cell).
    progress_bar
        Show progress bars.
    data_name, gt_name
        How the report names the data and the GT gene set.
    """
    ev = Evaluation(
        dict(models),
        np.asarray(gt, dtype=bool),
        cell_type_key,
        label_key=label_key,
        data_name=data_name,
        gt_name=gt_name,
    )
    for name, model in models.items():
        a = model.adata if adata is None else adata
        cell_types = a.obs[cell_type_key].astype(str).to_numpy()
        logger.info("evaluating %s: FSSF with %d random gene sets", name, n_random)
        ev.fssf[name] = fssf(
            model,
            ev.gt,
            cell_type_key,
            a,
            resolution=resolution,
            n_random=n_random,
            min_cells=min_cells,
            seed=seed,
            progress_bar=progress_bar,
        )
        latent = model.get_latent_representation(a)
        data = model._data_for(a)
        ev.polarization[name] = gt_polarization(latent, data.matrix, ev.gt, cell_types)
        if attributions:
            logger.info("evaluating %s: attributions of %d cells", name, a.n_obs)
            attr = model.get_attributions(
                a, n_samples=attribution_samples, seed=seed, progress_bar=progress_bar
            )
            ev.attributions[name] = attr
            share = attribution_share(attr, ev.gt, cell_types)
            ev.gt_share[name] = share.groupby("group").share.mean()
            ev.dimension_shares[name] = dimension_shares(
                model, ev.gt, a, n_samples=attribution_samples, seed=seed
            )
        ev.active_dimensions[name] = active_dimensions(latent)
        if label_key is not None:
            ev.label_separation[name] = label_separation(
                latent, a.obs[label_key].to_numpy(), cell_types
            )
        if len(data.batch_categories) > 1:
            ev.integration[name] = integration_metrics(latent, data.batch_codes, cell_types)
    return ev


def _save_fig(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_report(ev: Evaluation, out: str | os.PathLike, plots: bool = True) -> Path:
    """Write tables (CSV/JSON), figures (PNG) and ``index.html`` into ``out``.

    Parameters
    ----------
    ev
        The result of :func:`evaluate`.
    out
        Folder to write into (created).
    plots
        Also draw the figures (PNG).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = ev.summary()
    fssf_all = pd.concat(
        [r.table.assign(model=name) for name, r in ev.fssf.items()], ignore_index=True
    )
    atomic_write_text(out / "fssf.csv", fssf_all.to_csv(index=False))
    atomic_write_text(out / "summary.csv", summary.to_csv())
    atomic_write_text(
        out / "summary.json", json.dumps(json.loads(summary.to_json(orient="index")), indent=2)
    )
    figures: dict[str, tuple[str, str]] = {}
    if plots:
        import matplotlib

        matplotlib.use("Agg")
        from attreg_sc import pl

        histories = {n: _history(m) for n, m in ev.models.items()}
        _save_fig(pl.loss_curves(histories), out / "loss.png")
        figures["loss"] = (
            "loss.png",
            "Loss terms per epoch: L_R, L_D, L_A and the validation objective, one line per model.",
        )
        _save_fig(pl.fssf_heatmap({n: r.summary() for n, r in ev.fssf.items()}), out / "fssf.png")
        figures["fssf"] = (
            "fssf.png",
            "Heatmap of mean FSSF per cell type (rows) for the GT genes and for random "
            "gene sets of the same size (columns), per model.",
        )
        slugs = _unique_slugs(list(ev.models))
        for name, model in ev.models.items():
            data = model._data_for(model.adata)
            fig = pl.embedding_by_cell_type(
                model.get_latent_representation(),
                model.adata.obs[ev.cell_type_key].to_numpy(),
                ev.fssf[name].subclusters.to_numpy(),
                _gt_total(data.matrix, ev.gt),
            )
            fname = f"umap_{slugs[name]}.png"
            _save_fig(fig, out / fname)
            figures[f"umap:{name}"] = (
                fname,
                f"{name}: UMAP of the latent per cell type, coloured by Leiden subcluster "
                "and by the cells' GT-gene counts.",
            )
        if ev.gt_share:
            _save_fig(pl.gt_share_bars(ev.gt_share), out / "gt_share.png")
            figures["gt_share"] = (
                "gt_share.png",
                "Bars: share of the encoder's |attribution| on the GT genes, per cell type "
                "and model.",
            )
        if ev.label_separation:
            _save_fig(pl.label_separation_bars(ev.label_separation), out / "labels.png")
            figures["labels"] = (
                "labels.png",
                f"Bars: separation of '{ev.label_key}' within each cell type (kNN purity "
                "over chance), per model.",
            )
    atomic_write_text(out / "index.html", _html_page(ev, summary, figures))
    return out


def _table(df: pd.DataFrame, index: bool = True) -> str:
    return _integers_as_integers(df).to_html(
        float_format=lambda v: f"{v:.3f}", index=index, na_rep="", border=0
    )


def _versions() -> str:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for package in ("attreg", "torch", "numpy", "anndata", "scanpy"):
        try:
            parts.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            continue
    return ", ".join(parts + [f"Python {platform.python_version()}"])


def _run_facts(ev: Evaluation) -> list[str]:
    first = next(iter(ev.models.values()))
    adata = first.adata
    batches = len(first._data_for(adata).batch_categories)
    data = html.escape(ev.data_name or "the models' AnnData")
    rows = [
        (
            "Data",
            f"{data}: {adata.n_obs:,} cells x {adata.n_vars:,} genes"
            + (f", {batches} batch(es)" if batches else "")
            + f"; cell types from <code>{html.escape(ev.cell_type_key)}</code>",
        ),
        ("Gene set (GT)", f"{html.escape(ev.gt_name or 'GT')}: {int(ev.gt.sum())} genes"),
        ("Versions", html.escape(_versions())),
    ]
    models = []
    for name, m in ev.models.items():
        h = _history(m)
        epochs = len(h.get("loss", h.get("reconstruction", [])))
        prior = m.prior_settings
        models.append(
            {
                "model": name,
                "w_attr": 0.0 if prior is None else prior.w_attr,
                "epochs": epochs,
                "reducer": "" if prior is None else prior.reducer,
                "attribution": "" if prior is None else prior.attribution,
                "n_latent": m.module.n_latent,
            }
        )
    facts = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return [
        f"<table class='facts'>{facts}</table>",
        "<h3>Models</h3>",
        _table(pd.DataFrame(models), index=False),
    ]


def _pair(title: str, figure: tuple[str, str] | None, tables: list[str], note: str = "") -> str:
    """A section with the figure beside its numbers."""
    fig = ""
    if figure is not None:
        fname, caption = figure
        fig = (
            f"<figure><img src='{fname}' alt='{html.escape(caption, quote=True)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    body = "".join(tables) + (f"<p>{note}</p>" if note else "")
    head = f"<section><h2>{html.escape(title)}</h2>"
    return f"{head}<div class='pair'>{fig}<div>{body}</div></div></section>"


def _html_page(ev: Evaluation, summary: pd.DataFrame, figures: dict) -> str:
    body = [
        "<h1>scARE report</h1>",
        *_run_facts(ev),
        "<h2>Summary</h2>",
        _table(summary),
        "<p>fssf_gt / fssf_random: mean FSSF = (n_g - n_o) / n_t over subcluster pairs for "
        "the GT genes / random same-size non-GT gene sets; gt_attribution_share: share of "
        "|EG attribution| of the latent's sum on the GT genes; gt_share_per_dimension: the "
        "same per latent dimension, averaged; max_subclusters: the most Leiden subclusters of "
        "one cell type; move_median: how far a GT-swapped cell moves toward its donor (0 "
        "stays, 1 arrives).</p>",
    ]
    losses = pd.DataFrame(
        {n: {k: v[-1] for k, v in _history(m).items() if len(v)} for n, m in ev.models.items()}
    )
    body.append(_pair("Training", figures.get("loss"), ["<p>Last epoch:</p>", _table(losses)]))
    fssf_tables = []
    for name, r in ev.fssf.items():
        fssf_tables += [f"<h3>{html.escape(name)}</h3>", _table(r.summary())]
        if r.skipped:
            fssf_tables.append(
                "<p>skipped: "
                + html.escape("; ".join(f"{k} ({v})" for k, v in r.skipped.items()))
                + "</p>"
            )
    body.append(_pair("FSSF per cell type", figures.get("fssf"), fssf_tables))
    if ev.gt_share:
        body.append(
            _pair(
                "GT share of the attributions",
                figures.get("gt_share"),
                [_table(pd.DataFrame(ev.gt_share))],
            )
        )
    if ev.label_separation:
        tables = []
        for name, t in ev.label_separation.items():
            tables += [f"<h3>{html.escape(name)}</h3>", _table(t, index=False)]
        body.append(_pair(f"Separation of '{ev.label_key}'", figures.get("labels"), tables))
    for name, table in ev.dimension_shares.items():
        body.append(_pair(f"GT share per latent dimension: {name}", None, [_table(table.T)]))
    for name in ev.models:
        key = f"umap:{name}"
        if key in figures:
            body.append(
                _pair(
                    f"Latent structure: {name}",
                    figures[key],
                    [_table(ev.fssf[name].summary()[["n_subclusters"]])]
                    if len(ev.fssf[name].table)
                    else [],
                )
            )
    style = (
        "body{font-family:sans-serif;max-width:1400px;margin:auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:.4em 0}td,th{padding:2px 8px;border:1px solid #ccc;"
        "text-align:right}.facts th,.facts td{text-align:left}"
        ".pair{display:flex;gap:1.5em;align-items:flex-start;flex-wrap:wrap}"
        ".pair figure{flex:1 1 560px;margin:0}.pair img{max-width:100%}"
        ".pair>div{flex:1 1 380px;overflow-x:auto}"
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>scARE report</title>"
        f"<style>{style}</style></head><body>" + "\n".join(body) + "</body></html>"
    )


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def _unique_slugs(names: list[str]) -> dict[str, str]:
    """A file-name part per model name, distinct for distinct names whatever they are
    (``scARE-1`` and ``scARE_1`` both slug to ``scare_1``: the second gets ``scare_1-2``).

    Examples
    --------
    >>> _unique_slugs(["scARE-1", "scARE_1", "b"])
    {'scARE-1': 'scare_1', 'scARE_1': 'scare_1-2', 'b': 'b'}
    """
    out: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        base = _slug(name) or "model"
        slug, k = base, 1
        while slug in taken:
            k += 1
            slug = f"{base}-{k}"
        taken.add(slug)
        out[name] = slug
    return out
