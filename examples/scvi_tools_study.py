"""Attribution priors on scvi-tools' model zoo: two of the paper's open directions.

**Label transfer (scANVI).** The 700 labelled PBMC 68k cells of scanpy's wheel
(``asc.datasets.pbmc68k()``, counts recovered, FACS-sorted ``bulk_labels``, 10 types) are
split at random into a reference and a query half (one real batch; the query is given its
own batch label, as a new dataset would be). The GT matrix has one row per cell type: the
type's top-``n_top`` one-vs-rest mutual-information markers, computed on the reference
cells only. A reference SCVI (LayerNorm) is trained, then scANVI from it with or without
the per-label prior (``gt_per_label``, ``w_attr``); the query is mapped with
``load_query_data`` (scArches) and trained with its labels hidden. Reported on the query:
accuracy of ``predict()``, mean max-probability (confidence), mean entropy of the soft
prediction (uncertainty), the confidence of wrong and right predictions, and the GT share
of the reference cells' attributions (their own type's markers).

**RNA + protein (totalVI).** ``asc.datasets.pbmc_two_runs()``: two real 10x PBMC runs
(two batches) with 14 CITE-seq antibodies. totalVI with or without a prior on the PBMC
marker genes. Reported: the GT share of the encoder's attributions (genes), the share on
the proteins, batch mixing and label silhouette of the latent
(:func:`attreg_sc.metrics.integration_metrics`, labels = marker-score cell types), and
the final training ELBO.

One JSON line per run in ``--out``; ``--table`` prints the means over seeds.

Run (slow: about a minute per seed on 2 CPU cores)::

    python examples/scvi_tools_study.py --out docs/studies/scvi_tools_study.jsonl
    python examples/scvi_tools_study.py --out docs/studies/scvi_tools_study.jsonl --table
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import attreg_sc as asc

QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)


def one_vs_rest_markers(adata, label_key: str, n_top: int) -> dict[str, list[str]]:
    """Each label's top-``n_top`` genes by mutual information with "this label or not"."""
    out = {}
    labels = adata.obs[label_key].astype(str)
    for label in sorted(labels.unique()):
        tmp = adata.copy()
        tmp.obs["is_label"] = (labels == label).map({True: "yes", False: "no"}).to_numpy()
        mask = asc.gt.mutual_information_markers(tmp, "is_label", n_top=n_top)
        out[label] = list(adata.var_names[mask])
    return out


def label_transfer(seed: int, w_attr: float, epochs: int, n_top: int) -> dict:
    import scvi

    from attreg_sc import with_prior

    adata = asc.datasets.pbmc68k()
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(str)
    rng = np.random.default_rng(seed)
    in_ref = np.zeros(adata.n_obs, bool)
    in_ref[rng.permutation(adata.n_obs)[: adata.n_obs // 2]] = True
    ref, query = adata[in_ref].copy(), adata[~in_ref].copy()
    ref.obs["batch"], query.obs["batch"] = "reference", "query"
    truth = query.obs["cell_type"].to_numpy()
    query.obs["cell_type"] = "Unknown"
    markers = one_vs_rest_markers(ref, "cell_type", n_top)

    scvi.settings.seed = seed
    base = with_prior(scvi.model.SCVI)
    base.setup_anndata(ref, batch_key="batch", labels_key="cell_type")
    vae = base(ref, n_latent=10)
    vae.train(max_epochs=epochs, **QUIET)
    model = with_prior(scvi.model.SCANVI).from_scvi_model(vae, "Unknown", adata=ref)
    if w_attr > 0:
        model.set_prior(gt_per_label=markers, w_attr=w_attr, seed=seed)
    model.train(max_epochs=epochs // 2, **QUIET)
    a = np.abs(model.get_attributions(n_samples=4, reducer="l2"))
    own = np.stack([np.isin(ref.var_names, markers[c]) for c in ref.obs["cell_type"]])
    gt_share = float((a * own).sum() / a.sum())

    q = with_prior(scvi.model.SCANVI).load_query_data(query, model)
    q.train(max_epochs=epochs // 2, plan_kwargs={"weight_decay": 0.0}, **QUIET)
    pred = q.predict()
    soft = q.predict(soft=True).to_numpy()
    conf = soft.max(1)
    entropy = -(soft * np.log(np.clip(soft, 1e-12, None))).sum(1)
    right = pred == truth
    return {
        "study": "label_transfer",
        "seed": seed,
        "w_attr": w_attr,
        "n_top": n_top,
        "accuracy": float(right.mean()),
        "confidence": float(conf.mean()),
        "entropy": float(entropy.mean()),
        "confidence_wrong": float(conf[~right].mean()) if (~right).any() else float("nan"),
        "confidence_right": float(conf[right].mean()),
        "gt_share_reference": gt_share,
    }


def totalvi(seed: int, w_attr: float, epochs: int) -> dict:
    import scvi

    from attreg_sc import with_prior

    adata = asc.datasets.pbmc_two_runs()
    genes = sorted({g for v in asc.datasets.PBMC_MARKERS.values() for g in v})
    scvi.settings.seed = seed
    model_cls = with_prior(scvi.model.TOTALVI)
    model_cls.setup_anndata(
        adata, protein_expression_obsm_key="protein_expression", batch_key="batch"
    )
    model = model_cls(adata, gt=genes if w_attr > 0 else None, w_attr=w_attr, n_latent=10)
    model.train(max_epochs=epochs, **QUIET)
    a = np.abs(model.get_attributions(n_samples=4, genes_only=False, reducer="l2"))
    gt = np.zeros(a.shape[1], bool)
    gt[: adata.n_vars] = asc.gt.from_genes(adata, genes)
    latent = model.get_latent_representation()
    typed = adata.obs["cell_type"].astype(str).to_numpy() != "unassigned"
    metrics = asc.metrics.integration_metrics(
        latent[typed],
        adata.obs["batch"].to_numpy()[typed],
        adata.obs["cell_type"].to_numpy()[typed],
    )
    return {
        "study": "totalvi",
        "seed": seed,
        "w_attr": w_attr,
        "gt_share_genes": float(a[:, gt].sum() / a.sum()),
        "protein_share": float(a[:, adata.n_vars :].sum() / a.sum()),
        "elbo_train": float(model.history["elbo_train"].to_numpy(float).ravel()[-1]),
        **metrics,
    }


def table(path: Path) -> dict[str, pd.DataFrame]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    frame = pd.DataFrame(rows)
    out = {}
    for study, part in frame.groupby("study"):
        numeric = part.drop(columns=["study", "seed"]).dropna(axis=1, how="all")
        means = numeric.groupby("w_attr").mean()
        out[study] = means
        print(f"\n{study} (mean of {part['seed'].nunique()} seeds)")
        print(means.round(3).to_string())
    return out


def main(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--w-attr", type=float, nargs="+", default=[0.0, 30.0])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--n-top", type=int, default=20)
    p.add_argument("--studies", nargs="+", default=["label_transfer", "totalvi"])
    p.add_argument("--table", action="store_true", help="print the means of --out and stop")
    args = p.parse_args(argv)
    if args.table:
        return table(args.out)
    _quiet()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        for w in args.w_attr:
            for study in args.studies:
                if study == "label_transfer":
                    row = label_transfer(seed, w, args.epochs, args.n_top)
                else:
                    row = totalvi(seed, w, args.epochs)
                rows.append(row)
                with args.out.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(json.dumps(row))
    return rows


if __name__ == "__main__":
    main()
