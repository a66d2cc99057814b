"""Evaluate trained models side by side and write a report folder (PNGs + index.html).

Examples
--------
>>> import attreg_sc as asc, tempfile, os
>>> adata = asc.datasets.synthetic(n_cells=300, n_genes=60, n_gt_genes=10, seed=0)
>>> gt = adata.var["is_gt"].to_numpy()
>>> m = asc.SCARE(adata, batch_key="batch", gt=gt, n_latent=3)
>>> m.train(max_epochs=3, progress_bar=False)
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

__all__ = ["Evaluation", "evaluate", "write_report", "atomic_write_text"]

logger = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Everything :func:`write_report` shows, per model name."""

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
                "reconstruction": self.models[name].history["reconstruction"][-1],
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
        return pd.DataFrame(rows).T


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
) -> Evaluation:
    """FSSF (GT and random control, latent-structure diagnostics), GT polarization, GT
    attribution share per cell type and per latent dimension, active dimensions, label
    separation (``label_key``) and integration metrics (when there are batches)."""
    ev = Evaluation(dict(models), np.asarray(gt, dtype=bool), cell_type_key, label_key=label_key)
    for name, model in models.items():
        a = model.adata if adata is None else adata
        cell_types = a.obs[cell_type_key].astype(str).to_numpy()
        logger.info("evaluating %s", name)
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
            attr = model.get_attributions(a, n_samples=attribution_samples, seed=seed)
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
    """Write tables (CSV/JSON), figures (PNG) and ``index.html`` into ``out``."""
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
    figures: list[tuple[str, str]] = []
    if plots:
        import matplotlib

        matplotlib.use("Agg")
        from attreg_sc import pl

        _save_fig(pl.loss_curves({n: m.history for n, m in ev.models.items()}), out / "loss.png")
        figures.append(("loss.png", "Loss terms per epoch (L_R, L_D, L_A, validation)."))
        _save_fig(pl.fssf_heatmap({n: r.summary() for n, r in ev.fssf.items()}), out / "fssf.png")
        figures.append(("fssf.png", "Mean FSSF per cell type: GT genes vs random genes."))
        for name, model in ev.models.items():
            data = model._data_for(model.adata)
            fig = pl.embedding_by_cell_type(
                model.get_latent_representation(),
                model.adata.obs[ev.cell_type_key].to_numpy(),
                ev.fssf[name].subclusters.to_numpy(),
                _gt_total(data.matrix, ev.gt),
            )
            fname = f"umap_{_slug(name)}.png"
            _save_fig(fig, out / fname)
            figures.append((fname, f"{name}: UMAP per cell type, by subcluster and GT-total."))
        if ev.gt_share:
            _save_fig(pl.gt_share_bars(ev.gt_share), out / "gt_share.png")
            figures.append(("gt_share.png", "Share of encoder attribution on GT genes."))
        if ev.label_separation:
            _save_fig(pl.label_separation_bars(ev.label_separation), out / "labels.png")
            figures.append(("labels.png", f"Separation of '{ev.label_key}' within cell types."))
    body = [
        "<h1>scARE report</h1>",
        f"<p>GT: {int(ev.gt.sum())} genes; cell types from <code>{html.escape(ev.cell_type_key)}"
        "</code>. FSSF = (n_g - n_o) / n_t per subcluster pair; random = same-size random "
        "non-GT gene sets.</p>",
        "<h2>Summary</h2>",
        summary.to_html(float_format=lambda v: f"{v:.3f}"),
        "<p>gt_attribution_share: share of |EG attribution| of the latent's sum on the GT "
        "genes; gt_share_per_dimension: the same for each latent dimension, averaged; "
        "max_subclusters: the most Leiden subclusters of one cell type; move_median: how far "
        "a GT-swapped cell moves toward its donor (0 stays, 1 arrives).</p>",
    ]
    for name, table in ev.dimension_shares.items():
        body += [
            f"<h2>GT share per latent dimension: {html.escape(name)}</h2>",
            table.T.to_html(float_format=lambda v: f"{v:.3f}"),
        ]
    for name, r in ev.fssf.items():
        body += [
            f"<h2>FSSF per cell type: {html.escape(name)}</h2>",
            r.summary().to_html(float_format=lambda v: f"{v:.3f}"),
        ]
        if r.skipped:
            body.append(
                "<p>skipped: "
                + html.escape("; ".join(f"{k} ({v})" for k, v in r.skipped.items()))
                + "</p>"
            )
    for fname, caption in figures:
        body.append(
            f'<figure><img src="{fname}" style="max-width:100%"><figcaption>'
            f"{html.escape(caption)}</figcaption></figure>"
        )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>scARE report</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "table{border-collapse:collapse}td,th{padding:2px 8px;border:1px solid #ccc}</style>"
        "</head><body>" + "\n".join(body) + "</body></html>"
    )
    atomic_write_text(out / "index.html", page)
    return out


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()
