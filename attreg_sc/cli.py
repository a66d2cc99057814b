"""``attreg-sc``: train, evaluate and report scARE models from the command line.

Commands (``attreg-sc COMMAND --help`` for each): ``train``, ``fssf``, ``report``,
``markers``, ``demo``, ``convert``. Bad input (missing file, not an h5ad, unknown keys, genes not
found) exits with status 2 and a one-line message naming the problem and the fix.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

import attreg
from attreg_sc.output_folder import OutputFolderError

__all__ = ["main", "run_demo"]

logger = logging.getLogger("attreg_sc")


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def _read_h5ad(path: str):
    import anndata as ad

    p = Path(path)
    if not p.exists():
        raise CLIError(f"file not found: {path}")
    if p.is_dir():
        raise CLIError(f"{path} is a folder; give an .h5ad file.")
    try:
        return ad.read_h5ad(p)
    except Exception as err:  # anndata raises several types for non-h5ad input
        raise CLIError(
            f"{path} is not a readable .h5ad file ({type(err).__name__}: {err})"
        ) from err


def _read_gene_list(path: str) -> list[str]:
    from attreg_sc.gt import read_gene_list

    if not Path(path).exists():
        raise CLIError(f"gene list not found: {path}")
    genes = read_gene_list(path)
    if not genes:
        raise CLIError(
            f"{path} holds no gene names (one per line, or separated by spaces/commas; "
            "# starts a comment)."
        )
    return genes


def _ground_truths(adata, args) -> dict:
    """``--genes`` / ``--gmt`` / ``--markers-by`` -> ``{name: GT}`` (several allowed)."""
    from attreg_sc import gt as G

    out: dict = {}
    for path in args.genes or []:
        out[Path(path).stem] = G.from_genes(
            adata, _read_gene_list(path), args.gene_key, name=f"gene list {path}"
        )
    for spec in args.gmt or []:
        path, _, sets = spec.partition(":")
        if not Path(path).exists():
            raise CLIError(f"GMT file not found: {path}")
        chosen = sets.split(",") if sets else None
        out.update(G.from_gmt(adata, path, chosen, args.gene_key))
    if getattr(args, "markers_by", None):
        out[f"markers_{args.markers_by}"] = G.mutual_information_markers(
            adata, args.markers_by, args.markers_groupby, args.n_markers, args.layer
        )
    return out


def scare_defaults() -> dict:
    """``SCARE``'s defaults (the prior's :class:`~attreg_sc.settings.PriorSettings` and
    the constructor's architecture): the one source of the CLI's and the demo's."""
    import inspect

    from attreg_sc.model import SCARE
    from attreg_sc.settings import PriorSettings

    params = inspect.signature(SCARE.__init__).parameters
    out = {k: v.default for k, v in params.items() if v.default is not inspect.Parameter.empty}
    return {**out, **PriorSettings().to_dict()}


def _threads_arg(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(
            f"--threads takes 'auto' or an integer >= 1, not {value!r}"
        )
    return n


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown in ``--help``; descriptions keep their line breaks."""


def _verbose_parent() -> argparse.ArgumentParser:
    """``-v`` accepted after the subcommand as well as before it."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log INFO messages (progress of each step)",
    )
    return parent


def _add_data_args(
    p: argparse.ArgumentParser, gt: bool = True, layer: bool = True, batch: bool = True
) -> None:
    p.add_argument("data", help="AnnData .h5ad with raw counts")
    if layer:
        p.add_argument(
            "--layer",
            default=None,
            help="layer with raw counts (None: X; fssf/report: the model's)",
        )
    if batch:
        p.add_argument(
            "--batch-key",
            default=None,
            help="obs column with the batch (fssf/report: must match the model's)",
        )
    if gt:
        p.add_argument(
            "--gene-key", default=None, help="var column with gene symbols (None: var_names)"
        )
        p.add_argument(
            "--genes", action="append", help="file with a gene list (one GT each; repeatable)"
        )
        p.add_argument(
            "--gmt",
            action="append",
            help="GMT file, optionally FILE:SET[,SET] (one GT per set; repeatable)",
        )


def _parser() -> argparse.ArgumentParser:
    from attreg_sc.metrics.fssf import PAIRINGS, VOTES
    from attreg_sc.priors import REDUCERS

    defaults = scare_defaults()
    common = {"formatter_class": _HelpFormatter, "parents": [_verbose_parent()]}
    parser = argparse.ArgumentParser(
        prog="attreg-sc",
        description="scARE: attribution-regularized single-cell VAEs.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log INFO messages (progress of each step)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a scARE model and write it with the latent", **common)
    _add_data_args(t)
    t.add_argument(
        "--scvi-tools",
        action="store_true",
        help=argparse.SUPPRESS,  # attreg 0.1: SCARE is the scvi-tools model now
    )
    t.add_argument(
        "--allow-non-integer",
        action="store_true",
        help="accept non-integer counts (e.g. ambient-corrected estimates)",
    )
    t.add_argument("--markers-by", default=None, help="GT = MI markers of this obs label")
    t.add_argument(
        "--markers-groupby", default=None, help="MI markers within each group of this obs column"
    )
    t.add_argument("--n-markers", type=int, default=40, help="markers per label (--markers-by)")
    t.add_argument("--w-attr", type=float, default=defaults["w_attr"], help="weight w_A of L_A")
    t.add_argument(
        "--target-share",
        type=float,
        default=defaults["target_share"],
        help="aim at this GT share (0-1): the weight becomes a multiplier starting at --w-attr",
    )
    t.add_argument(
        "--attribution",
        choices=["eg", "ig"],
        default=defaults["attribution"],
        help="Expected Gradients or Integrated Gradients",
    )
    t.add_argument(
        "--reducer",
        choices=REDUCERS,
        default=defaults["reducer"],
        help="F over the latent: random directions, every dimension, or the paper's sum",
    )
    t.add_argument(
        "--n-directions",
        type=int,
        default=defaults["n_directions"],
        help="random directions per step (--reducer random_direction)",
    )
    t.add_argument(
        "--target",
        choices=["encoder", "model"],
        default=defaults["target"],
        help="explain the latent mean (encoder) or the log reconstruction (model)",
    )
    t.add_argument(
        "--reparameterizer",
        default=defaults["reparameterizer"],
        help="attributions -> [0, 1]: share, abs_minmax, sigmoid, ...",
    )
    t.add_argument(
        "--loss",
        choices=["mse", "mae", "outside_share"],
        default=defaults["loss"],
        help="loss between reparameterized attributions and the GT",
    )
    t.add_argument(
        "--references-within",
        default=None,
        metavar="OBS_KEY",
        help="EG draws each cell's references among the cells with its label in this obs "
        "column (e.g. cell_type): the prior founds subclusters within the labels",
    )
    t.add_argument("--n-latent", type=int, default=defaults["n_latent"], help="latent dimensions")
    t.add_argument("--n-hidden", type=int, default=defaults["n_hidden"], help="units per layer")
    t.add_argument(
        "--n-layers", type=int, default=defaults["n_layers"], help="hidden layers per network"
    )
    t.add_argument(
        "--likelihood",
        choices=["nb", "zinb"],
        default=defaults["gene_likelihood"],
        help="count likelihood of the decoder",
    )
    t.add_argument("--max-epochs", type=int, default=100, help="upper bound on epochs")
    t.add_argument("--batch-size", type=int, default=128, help="cells per minibatch")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    t.add_argument(
        "--patience",
        type=int,
        default=10,
        help="early stopping: epochs without improvement of the validation loss",
    )
    t.add_argument("--seed", type=int, default=0, help="seed of weights, minibatches and draws")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--out", required=True, help="output folder (written as one unit)")
    t.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out once the run is done"
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run into --out from its checkpoint (same settings)",
    )
    t.add_argument(
        "--checkpoint-every", type=int, default=1, help="epochs between checkpoints (--resume)"
    )
    t.add_argument(
        "--threads",
        type=_threads_arg,
        default="auto",
        help="CPU threads: 'auto' (the cores other processes leave free, re-measured every "
        "epoch) or a number (pins it: bit-reproducible runs)",
    )

    f = sub.add_parser("fssf", help="FSSF of a trained model for a GT gene set", **common)
    f.add_argument("model", help="folder written by 'attreg-sc train' (or SCARE.save)")
    _add_data_args(f)  # --layer/--batch-key: checked against the model's own
    f.add_argument("--cell-type-key", required=True, help="obs column with cell types")
    f.add_argument("--n-random", type=int, default=100, help="random gene sets (the control)")
    f.add_argument("--resolution", type=float, default=0.5, help="Leiden resolution of subclusters")
    f.add_argument("--vote", choices=VOTES, default="all", help="strict 'all' or 'pair'")
    f.add_argument("--pairing", choices=PAIRINGS, default="random", help="how cells are paired")
    f.add_argument("--seed", type=int, default=0, help="seed of subclusters, pairs, random sets")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    f.add_argument("--out", required=True, help="CSV file for the FSSF table")

    r = sub.add_parser("report", help="plots and tables comparing trained models", **common)
    r.add_argument(
        "--model", action="append", required=True, metavar="NAME=DIR", help="a model (repeatable)"
    )
    _add_data_args(r)
    r.add_argument("--cell-type-key", required=True, help="obs column with cell types")
    r.add_argument("--label-key", default=None, help="obs label for the separation plot")
    r.add_argument("--n-random", type=int, default=100, help="random gene sets for FSSF")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--out", required=True, help="report folder (written as one unit)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing --out")

    m = sub.add_parser("markers", help="mutual-information marker genes of a label (GMT)", **common)
    _add_data_args(m, gt=False, batch=False)
    m.add_argument("--label", required=True, help="obs column, e.g. time point")
    m.add_argument("--groupby", default=None, help="one marker set per group (cell type)")
    m.add_argument("--n-top", type=int, default=40, help="markers per set")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    m.add_argument("--out", required=True, help="GMT file to write")

    p = sub.add_parser(
        "panel", help="select a gene panel for targeted spatial transcriptomics", **common
    )
    _add_data_args(p, gt=False)
    p.add_argument("--n", type=int, nargs="+", required=True, help="panel size(s), nested")
    p.add_argument("--cell-type-key", default=None, help="obs column with cell types")
    p.add_argument("--required", default=None, help="file with genes the panel must hold")
    p.add_argument("--excluded", default=None, help="file with genes the panel may not hold")
    p.add_argument("--max-epochs", type=int, default=100, help="upper bound on epochs")
    p.add_argument("--n-latent", type=int, default=10, help="latent dimensions")
    p.add_argument("--w-sparsity", type=float, default=0.0, help="sparsity prior's weight")
    p.add_argument("--seed", type=int, default=0, help="seed of everything")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="output folder (written as one unit)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")

    d = sub.add_parser("demo", help="baseline vs scARE on built-in data, FSSF, report", **common)
    d.add_argument("--synthetic", action="store_true", help="synthetic data fitted to PBMC 3k")
    d.add_argument("--out", default="scare_demo", help="report folder")
    d.add_argument("--max-epochs", type=int, default=100, help="upper bound on epochs")
    d.add_argument("--n-random", type=int, default=100, help="random gene sets for FSSF")
    d.add_argument("--w-attr", type=float, default=defaults["w_attr"], help="weight w_A of L_A")
    d.add_argument("--seed", type=int, default=0, help="seed of everything")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.add_argument("--threads", type=_threads_arg, default="auto", help="as for train")

    c = sub.add_parser(
        "convert",
        help="re-fit a model folder of attreg_sc's earlier hand-written SCARE as SCARE",
        **common,
    )
    c.add_argument("old", help="folder holding the old model.pt")
    c.add_argument("new", help="folder for the new model (written as one unit)")
    c.add_argument("--data", required=True, help="the AnnData the old model was trained on")
    c.add_argument("--max-epochs", type=int, default=100, help="upper bound on epochs")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.add_argument("--overwrite", action="store_true", help="replace an existing NEW folder")
    c.add_argument("--threads", type=_threads_arg, default="auto", help="as for train")
    return parser


def _load_model(path: str, adata, args=None):
    """Load a saved SCARE onto ``adata``; a --layer/--batch-key given must be the model's own."""
    from attreg_sc import SCARE
    from attreg_sc._compat import SETUP_ARGS_KEY

    if not (Path(path) / "model.pt").exists():
        raise CLIError(f"no saved model in {path} (expected {path}/model.pt).")
    own = SCARE.load_registry(path).get(SETUP_ARGS_KEY) or {}
    for flag, key in (("--batch-key", "batch_key"), ("--layer", "layer")):
        given = getattr(args, key, None)
        if given is not None and given != own.get(key):
            raise CLIError(
                f"{flag} {given} differs from the model's ({own.get(key)!r}, set when it was "
                f"trained in {path}); leave {flag} out to use the model's."
            )
    return SCARE.load(path, adata=adata.copy())


def _input_files(args) -> list[str]:
    """Every file a command reads (an output may not replace any of them)."""
    files = [args.data, *(getattr(args, "genes", None) or [])]
    files += [spec.partition(":")[0] for spec in getattr(args, "gmt", None) or []]
    return files


def _refuse_input_overwrite(out: str, args) -> None:
    """An output file may not be one of the command's inputs."""
    target = Path(out).resolve()
    for path in _input_files(args):
        if Path(path).resolve() == target:
            raise CLIError(f"--out {out} is the input {path}; choose another output file.")


def _needed_bytes(data_path: str) -> int:
    """A generous estimate of a training run's outputs: the AnnData is written again
    (with the latent), plus the model, the checkpoint and its temporary copy."""
    return int(1.2 * os.path.getsize(data_path)) + 64 * 2**20


def _cmd_train(args) -> None:
    import pandas as pd

    from attreg_sc._io import write_h5ad_safely
    from attreg_sc.output_folder import OutputFolder

    adata = _read_h5ad(args.data)
    gts = _ground_truths(adata, args)
    if not gts:
        logger.warning("no --genes/--gmt/--markers-by: training a plain VAE")
    if args.scvi_tools:
        logger.warning("--scvi-tools is no longer needed: SCARE is the scvi-tools model")
    model = _scare(args, adata, gts)
    folder = OutputFolder(
        args.out,
        overwrite=args.overwrite,
        resume=args.resume,
        inputs=_input_files(args),
        needed_bytes=_needed_bytes(args.data),
    )
    with folder as staging:
        model.train(
            max_epochs=args.max_epochs,
            batch_size=args.batch_size,
            plan_kwargs={"lr": args.lr},
            early_stopping_patience=args.patience,
            enable_progress_bar=not args.no_progress,
            checkpoint_path=folder.checkpoint,
            checkpoint_every=args.checkpoint_every,
            ckpt_path=folder.checkpoint if args.resume else None,
            threads=args.threads,
        )
        history = model.loss_history
        try:
            model.save(staging / "model")
            result = adata.copy()
            result.obsm["X_scare"] = model.get_latent_representation()
            write_h5ad_safely(result, staging / "adata.h5ad")
            (staging / "history.csv").write_text(pd.DataFrame(history).to_csv(index_label="epoch"))
            _write_run_record(staging, args, gts, epochs=len(history.get("loss", [])))
        except OSError as err:
            kept = (
                f"; the training checkpoint stays in {folder.staging} for --resume"
                if folder.checkpoint.exists()
                else ""
            )
            raise CLIError(
                f"could not write the outputs ({err.strerror or err}): nothing was written to "
                f"{folder.path}. Free space or choose another --out{kept}."
            ) from err
    epochs = len(history.get("loss", []))
    if epochs < args.max_epochs:
        print(
            f"early stopping after {epochs} of {args.max_epochs} epochs: the validation loss "
            f"did not improve for {args.patience} epochs (the best epoch's weights are kept)"
        )
    print(
        f"wrote {folder.path}/: model/model.pt, adata.h5ad (obsm['X_scare']), "
        "history.csv, run.json"
    )


def _scare(args, adata, gts: dict):
    """``train``: the model, with its data set up and its prior."""
    import scvi

    from attreg_sc import SCARE

    scvi.settings.seed = args.seed
    adata = adata.copy()  # the input AnnData stays as it was read
    SCARE.setup_anndata(
        adata,
        layer=args.layer,
        batch_key=args.batch_key,
        labels_key=args.references_within,
        allow_non_integer=args.allow_non_integer,
    )
    return SCARE(
        adata,
        gt=gts or None,
        gene_key=args.gene_key,
        n_latent=args.n_latent,
        n_hidden=args.n_hidden,
        n_layers=args.n_layers,
        gene_likelihood=args.likelihood,
        w_attr=args.w_attr,
        target_share=args.target_share,
        attribution=args.attribution,
        reducer=args.reducer,
        n_directions=args.n_directions,
        reparameterizer=args.reparameterizer,
        loss=args.loss,
        target=args.target,
        seed=args.seed,
        references="batch" if args.references_within is None else "label",
    )


def _write_run_record(folder: Path, args, gts: dict | None = None, **extra) -> None:
    """``run.json``: the command, its arguments, the version and what the GTs hold."""
    import json

    record = {
        "command": f"attreg-sc {args.command}",
        "attreg_version": attreg.__version__,
        "arguments": vars(args),
        "ground_truths": {
            k: int(v.sum()) if isinstance(v, np.ndarray) else type(v).__name__
            for k, v in (gts or {}).items()
        },
        **extra,
    }
    (folder / "run.json").write_text(json.dumps(record, indent=2, default=str) + "\n")


def _single_gt(adata, args) -> np.ndarray:
    gts = _ground_truths(adata, args)
    if len(gts) != 1:
        raise CLIError(f"give exactly one GT gene set (--genes or --gmt FILE:SET); got {len(gts)}.")
    return next(iter(gts.values()))


def _check_key(adata, key: str, what: str) -> None:
    if key not in adata.obs:
        raise CLIError(f"{what} {key!r} not in the data's obs columns {list(adata.obs)}.")


def _cmd_fssf(args) -> None:
    from attreg_sc._io import atomic_write_text
    from attreg_sc.metrics import fssf

    adata = _read_h5ad(args.data)
    _check_key(adata, args.cell_type_key, "--cell-type-key")
    _refuse_input_overwrite(args.out, args)
    model = _load_model(args.model, adata, args)
    res = fssf(
        model,
        _single_gt(adata, args),
        args.cell_type_key,
        adata,
        resolution=args.resolution,
        n_random=args.n_random,
        seed=args.seed,
        vote=args.vote,
        pairing=args.pairing,
        progress_bar=not args.no_progress,
    )
    if res.table.empty:
        reasons = "; ".join(f"{k}: {v}" for k, v in res.skipped.items()) or "no cell types"
        raise CLIError(
            f"no subcluster pair to score: every cell type was skipped ({reasons}). A cell "
            "type needs at least 50 cells and two Leiden subclusters: raise --resolution for "
            "more subclusters, or score larger cell types."
        )
    atomic_write_text(args.out, res.table.to_csv(index=False))
    print(res.summary().to_string(float_format=lambda v: f"{v:.3f}"))


def _cmd_report(args) -> None:
    from attreg_sc.output_folder import OutputFolder
    from attreg_sc.report import evaluate, write_report

    adata = _read_h5ad(args.data)
    _check_key(adata, args.cell_type_key, "--cell-type-key")
    if args.label_key:
        _check_key(adata, args.label_key, "--label-key")
    specs = {}
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep:
            raise CLIError(f"--model takes NAME=DIR, got {spec!r}.")
        specs[name] = path
    model_files = [str(Path(p) / "model.pt") for p in specs.values()]
    folder = OutputFolder(
        args.out, overwrite=args.overwrite, inputs=_input_files(args) + model_files
    )
    with folder as staging:  # checked and locked before the (long) evaluation
        models = {name: _load_model(path, adata, args) for name, path in specs.items()}
        ev = evaluate(
            models,
            _single_gt(adata, args),
            args.cell_type_key,
            adata,
            label_key=args.label_key,
            n_random=args.n_random,
            progress_bar=not args.no_progress,
        )
        write_report(ev, staging)
        _write_run_record(staging, args)
    print(ev.summary().to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"report: {folder.path}/index.html")


def _cmd_markers(args) -> None:
    from attreg_sc._io import atomic_write_text
    from attreg_sc.gt import GroupedGroundTruth, gmt_line, mutual_information_markers

    _refuse_input_overwrite(args.out, args)
    adata = _read_h5ad(args.data)
    _check_key(adata, args.label, "--label")
    if args.groupby:
        _check_key(adata, args.groupby, "--groupby")
    logger.info("mutual information of %d genes with %r", adata.n_vars, args.label)
    res = mutual_information_markers(
        adata,
        args.label,
        args.groupby,
        args.n_top,
        args.layer,
        progress_bar=not args.no_progress,
    )
    names = np.asarray(adata.var_names)
    if isinstance(res, GroupedGroundTruth):
        lines = [
            gmt_line(f"{args.label}_markers_{g}", f"MI markers of {args.label} in {g}", names[row])
            for g, row in zip(res.groups, res.table, strict=True)
        ]
    else:
        lines = [gmt_line(f"{args.label}_markers", f"MI markers of {args.label}", names[res])]
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {len(lines)} marker set(s) to {args.out}")


def _cmd_panel(args) -> None:
    import matplotlib.pyplot as plt
    import pandas as pd

    from attreg_sc import pl
    from attreg_sc.output_folder import OutputFolder
    from attreg_sc.panel import evaluate_panels, reference_panels, select_panel

    adata = _read_h5ad(args.data)
    if args.cell_type_key is not None:
        _check_key(adata, args.cell_type_key, "--cell-type-key")
    required = _read_gene_list(args.required) if args.required else None
    excluded = _read_gene_list(args.excluded) if args.excluded else None
    inputs = _input_files(args) + [f for f in (args.required, args.excluded) if f]
    folder = OutputFolder(args.out, overwrite=args.overwrite, inputs=inputs)
    with folder as staging:  # checked and locked before training
        panel = select_panel(
            adata,
            args.n,
            cell_type_key=args.cell_type_key,
            layer=args.layer,
            batch_key=args.batch_key,
            required=required,
            excluded=excluded,
            max_epochs=args.max_epochs,
            n_latent=args.n_latent,
            w_sparsity=args.w_sparsity,
            seed=args.seed,
            progress_bar=not args.no_progress,
        )
        panel.table.to_csv(staging / "panel.csv", index=False)
        for n in panel.sizes:
            (staging / f"panel_{n}.txt").write_text("\n".join(panel.genes_at(n)) + "\n")
        panel.coverage().to_csv(staging / "coverage.csv")
        candidates = {}  # the panel next to what it should beat, per size
        for n in panel.sizes:
            refs = reference_panels(adata, n, layer=args.layer, seed=args.seed)
            candidates.update({(n, "attreg_sc"): panel.genes_at(n),
                               **{(n, name): genes for name, genes in refs.items()}})
        evaluation = evaluate_panels(adata, candidates, args.cell_type_key, layer=args.layer,
                                     seed=args.seed)
        evaluation.index = pd.MultiIndex.from_tuples(evaluation.index, names=["size", "panel"])
        evaluation = evaluation.reset_index()
        evaluation.to_csv(staging / "evaluation.csv", index=False)
        plt.close(pl.panel_coverage(panel, save=str(staging / "coverage.png")))
        _write_run_record(staging, args)
    print(panel.table.head(20).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(evaluation.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"panel of {len(panel.genes)} genes (sizes {panel.sizes}): {folder.path}")


def run_demo(
    out: str = "scare_demo",
    synthetic: bool = False,
    max_epochs: int = 100,
    n_random: int = 100,
    w_attr: float | None = None,
    seed: int = 0,
    progress_bar: bool = True,
    threads: int | str | None = "auto",
):
    """Baseline (w_attr = 0) and scARE on built-in data; FSSF (GT vs random); report.

    ``threads``: CPU threads while training (``SCARE.train(threads=)``; ``"auto"`` fits
    them to the cores other processes leave free).

    Parameters
    ----------
    out
        Report folder (replaced as one unit).
    synthetic
        Synthetic data fitted to PBMC 3k instead of the real cells.
    max_epochs, n_random, w_attr, seed
        Training epochs, FSSF's random gene sets, ``w_A`` (default: scARE's), seed.
    progress_bar
        Show progress bars.
    threads
        CPU threads while training.

    Real data (default): PBMC 3k, GT = GO:0043410 (positive regulation of MAPK
    cascade), cell types from marker-named Leiden clusters, one batch. ``synthetic``:
    counts simulated from PBMC 3k statistics (4 cell types, 2 batches, the MAPK genes
    driving a sub-state), with the batch covariate and the GT state as label.
    """
    from attreg_sc.output_folder import OutputFolder
    from attreg_sc.report import write_report

    t0 = time.time()
    w_attr = scare_defaults()["w_attr"] if w_attr is None else w_attr
    folder = OutputFolder(out, overwrite=True)  # the demo's own folder, replaced as one unit
    with folder as staging:
        ev, adata, gt, name = _demo_evaluation(
            synthetic, max_epochs, n_random, w_attr, seed, progress_bar, threads
        )
        write_report(ev, staging)
    summary = ev.summary()
    print(
        f"data: {name}, {adata.n_obs} cells x {adata.n_vars} genes; GT: GO:0043410, "
        f"{int(gt.sum())} genes; {time.time() - t0:.0f} s"
    )
    print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"report: {folder.path}/index.html")
    return ev


def _demo_evaluation(synthetic, max_epochs, n_random, w_attr, seed, progress_bar, threads):
    import attreg_sc as asc
    from attreg_sc.report import evaluate

    sets = asc.datasets.go_gene_sets()
    ref = asc.datasets.pbmc3k(genes="selected")
    if synthetic:
        adata = asc.datasets.synthetic(
            n_cells=3000, reference=ref, n_cell_types=4, gt_genes=sets["GO:0043410"], seed=seed
        )
        batch_key, label_key, name = "batch", "gt_state", "synthetic (fitted to PBMC 3k)"
    else:
        adata, batch_key, label_key, name = ref, None, None, "PBMC 3k (10x Genomics)"
    gt = asc.gt.from_genes(adata, sets["GO:0043410"], name="GO:0043410")
    import scvi

    models = {}
    for label, w in (("baseline", 0.0), ("scARE", w_attr)):
        logger.info("training %s", label)
        data = adata.copy()
        asc.SCARE.setup_anndata(data, batch_key=batch_key)
        scvi.settings.seed = seed
        m = asc.SCARE(data, gt=gt, w_attr=w, seed=seed)
        m.train(max_epochs=max_epochs, enable_progress_bar=progress_bar, threads=threads)
        models[label] = m
    ev = evaluate(
        models,
        gt,
        "cell_type",
        label_key=label_key,
        n_random=n_random,
        seed=seed,
        progress_bar=progress_bar,
    )
    return ev, adata, gt, name


def _cmd_convert(args) -> None:
    """Re-fit a model of attreg_sc's earlier hand-written SCARE as the scvi-tools SCARE:
    its settings, GTs, genes, batches and seed, trained on the same data (its network has
    no counterpart in the scvi-tools model, so the weights cannot be carried over)."""
    import scvi

    from attreg_sc import SCARE
    from attreg_sc._io import read_safe_payload
    from attreg_sc.files import unpacked_ground_truth
    from attreg_sc.output_folder import OutputFolder

    old = Path(args.old) / "model.pt"
    payload = _from_safe(read_safe_payload(old, "saved scARE model", inside=args.old))
    if not isinstance(payload, dict) or "init" not in payload or "state_dict" not in payload:
        raise CLIError(f"{old} is not a model of the earlier hand-written SCARE; load it "
                       "with SCARE.load.")
    init = payload["init"]
    if not isinstance(init, dict):
        raise CLIError(f"{old}: init is not a mapping.")
    adata = _read_h5ad(args.data)
    names = [str(v) for v in adata.var_names]
    if names != list(payload.get("var_names") or []):
        raise CLIError(f"--data {args.data} does not hold the old model's genes in its order.")
    gts = {
        str(k): unpacked_ground_truth(v, adata.n_vars, old, f"ground_truths[{k!r}]")
        for k, v in (payload.get("ground_truths") or {}).items()
    }
    gts = {k: g for k, g in gts.items() if not hasattr(g, "shape") or g.shape[0] in
           (adata.n_vars, adata.n_obs)}
    settings = {k: init[k] for k in ("w_attr", "attribution", "target", "reducer",
                                     "reparameterizer", "loss", "aggregation", "n_samples",
                                     "n_steps", "n_directions", "w_exclusion", "seed")
                if k in init}
    settings["latent_blocks"] = init.get("latent_blocks") or {}
    settings["gt_weights"] = init.get("gt_weights") or {}
    folder = OutputFolder(args.new, overwrite=args.overwrite, inputs=[args.data, str(old)])
    with folder as staging:
        data = adata.copy()
        SCARE.setup_anndata(data, layer=init.get("layer"), batch_key=init.get("batch_key"),
                            allow_non_integer=bool(init.get("allow_non_integer", False)))
        scvi.settings.seed = int(init.get("seed", 0))
        model = SCARE(
            data,
            n_hidden=init.get("n_hidden", 128),
            n_latent=init.get("n_latent", 10),
            n_layers=init.get("n_layers", 1),
            dropout_rate=init.get("dropout", 0.1),
            dispersion=init.get("dispersion", "gene"),
            gene_likelihood=init.get("likelihood", "nb"),
            use_observed_lib_size=bool(init.get("use_observed_library", False)),
            normalize_input=bool(init.get("normalize_input", False)),
            w_reconstruction=float(init.get("w_reconstruction", 1.0)),
            gt=gts or None,
            gene_key=init.get("gene_key"),
            **settings,
        )
        model.train(max_epochs=args.max_epochs, enable_progress_bar=not args.no_progress,
                    threads=args.threads)
        model.save(staging, overwrite=True)
    print(f"wrote {folder.path}/model.pt: the old model's settings re-fitted as SCARE "
          f"({len(model.loss_history.get('loss', []))} epochs)")


def _from_safe(payload):
    from attreg_sc._io import from_safe

    return from_safe(payload)


# the library's messages name Python arguments; on the command line, the flags
_FLAG_OF = {
    "allow_non_integer=True": "--allow-non-integer",
    "gene_key=": "--gene-key",
    "layer=None": "no --layer",
    "layer=": "--layer",
}


def _for_cli(message: str) -> str:
    for python, flag in _FLAG_OF.items():
        message = message.replace(python, flag)
    return message


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.verbose = getattr(args, "verbose", False)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        if args.command == "demo":
            run_demo(
                args.out,
                args.synthetic,
                args.max_epochs,
                args.n_random,
                args.w_attr,
                args.seed,
                not args.no_progress,
                args.threads,
            )
        else:
            {
                "train": _cmd_train,
                "fssf": _cmd_fssf,
                "report": _cmd_report,
                "markers": _cmd_markers,
                "panel": _cmd_panel,
                "convert": _cmd_convert,
            }[args.command](args)
    except (CLIError, OutputFolderError) as err:
        print(f"attreg-sc {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (KeyError, ValueError, FileNotFoundError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"attreg-sc {args.command}: error: {_for_cli(str(msg))}", file=sys.stderr)
        return 2
    except IsADirectoryError as err:
        print(f"attreg-sc {args.command}: error: {err.filename} is a folder, where a file was "
              "expected; give the path of the file (e.g. the gene list or .h5ad inside it).",
              file=sys.stderr)
        return 2
    except PermissionError as err:
        print(f"attreg-sc {args.command}: error: no permission to read or write "
              f"{err.filename}; check its permissions or choose another path.", file=sys.stderr)
        return 2
    except OSError as err:  # full disk, file size limit, I/O errors
        print(
            f"attreg-sc {args.command}: error: a file could not be read or written ({err}); "
            "check free space, quotas and permissions.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
