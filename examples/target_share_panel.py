"""The target-share evaluation panel (issue 28, item 3): GO sets x real datasets x seeds.

Fixed before any run of it: the 14 GO biological processes of
:func:`attreg_sc.datasets.go_panel` (a development and a held-out half, split by size
rank), the datasets below, the metrics, the goal, and the target share (0.9, the
pilot's value: ``examples/target_share_pilot.py``, on gene sets outside the panel).
Nothing is tuned on the panel: both halves run once with the same settings.

Datasets (all that this project reaches offline with cell types; see docs):

* ``pbmc3k``: PBMC 3k, 2,700 cells, one batch; genes: the 2,000 highly variable ones and
  every gene of the half's sets found among the 13,714.
* ``pbmc_two_runs``: two 10x PBMC runs (200 cells each; the run is the batch), 2,223 genes.
* ``wu2020``: 200 T cells of 14 patients (the batch), 180 of them from tumour or adjacent
  normal tissue; 2,138 genes. The label is the lineage (CD4 / CD8 / other, from the
  authors' subtypes; 16 subtypes of 1-25 cells are too small to subcluster).
* ``pbmc68k``: PBMC 68k-reduced, 700 cells, 765 genes, one batch.
* ``pancreas`` (added later, the panel's one tissue not of blood; ``--pancreas PATH``, a
  file ``scripts/make_pancreas.py`` makes from VeloViz's copy, not shipped): mouse
  pancreatic endocrinogenesis (Bastidas-Ponce et al. 2019), 739 cells, 8 cell types,
  3,086 genes, one sample; the GO sets' human symbols mapped to mouse by case
  (``MAPK1`` -> ``Mapk1``).

Per (dataset, half, seed): one baseline (``w_attr=0``, shared by the half's sets: the
genes do not depend on the set), then per set ``w_attr 30`` (the fixed default) and
``target 0.9`` (``target_share=0.9``, the multiplier starting at 30). Per (model, set):
strict FSSF (``fssf``'s defaults, ``n_random`` random sets of the same size), the mean GT
share of each latent dimension (post-hoc EG), the final multiplier and training share,
the validation reconstruction loss, bio conservation (scib-metrics' mean of its five
bio metrics when installed, else the silhouette of the labels), the Leiden subclusters
FSSF formed (summed over cell types), seconds per epoch, and the set's diagnostics
(genes found / expressed / variable).

One JSON line per (model, set) is appended to ``--out``; a rerun skips rows present.

Run (what made ``docs/studies/target_share_panel.jsonl``; two processes, about 90 min)::

    P="python examples/target_share_panel.py --out panel.jsonl"
    for d in pbmc68k pbmc_two_runs wu2020; do $P --data $d --seeds 0 1 2; done
    $P --data pbmc3k --seeds 0
    for d in pbmc3k pbmc68k pbmc_two_runs wu2020; do $P --data $d --half held-out --seeds 0; done
    $P --data pbmc3k --sets GO:0042100 --seeds 0 --frontier
    $P --data pbmc68k --sets GO:0030098 --seeds 0 --frontier
    $P --data pbmc_two_runs --sets GO:0042100 --seeds 0 --frontier
    python examples/target_share_panel.py --report panel.jsonl --plot frontier.png

The pancreas (a later stop; protocol as PBMC 3k's: both halves once, seed 0, the
defaults)::

    python scripts/make_pancreas.py veloviz/data/pancreas.rda pancreas.h5ad
    for h in development held-out; do
        $P --data pancreas --pancreas pancreas.h5ad --half $h --seeds 0; done

References within the cell type (``references="label"``; added after the runs above, into
a copy of their file, so that their baselines and ``w_attr 30`` rows are reused)::

    P="python examples/target_share_panel.py --out panel.jsonl"
    for d in pbmc3k pbmc68k pbmc_two_runs wu2020; do $P --data $d --seeds 0 --variants label; done
    for d in pbmc3k pbmc68k pbmc_two_runs wu2020; do
        $P --data $d --seeds 0 --variants label30 --half held-out; done
    M="python examples/target_share_panel.py --out mechanism.jsonl --variants mechanism --seeds 0"
    $M --data pbmc_two_runs --sets GO:0030098; $M --data pbmc68k --sets GO:0030098
    $M --data wu2020 --sets GO:0006412; $M --data pbmc3k --sets GO:0042100
    python examples/target_share_panel.py --label-report target_share_panel.jsonl panel.jsonl

The set on its own latent block (``--variants block``; the next round the panel's verdict
named, a later stop). Fixed before its first run: the set's prior acts on latent
dimensions 0-4 of the 10 (``latent_blocks``, half the latent, chosen without a run; the
exclusion prior, at its default ``w_exclusion=1``, keeps dimensions 5-9 off the set's
genes), at ``w_attr 30`` and at ``target 0.9``; a fresh baseline per (dataset, half) in
the same run; both halves of all five datasets, seed 0, run once. Every model, the
baseline included, is scored twice: on the whole latent, as above (the goal as the
panel states it), and on dimensions 0-4 (strict FSSF, share per dimension and
subclusters on the block; reconstruction and bio conservation stay whole-latent, the
latent a user integrates on). Both readings are reported::

    B="python examples/target_share_panel.py --out blocks.jsonl --variants block --seeds 0"
    for h in development held-out; do
        for d in pbmc68k pbmc_two_runs wu2020 pbmc3k; do $B --data $d --half $h; done
        $B --data pancreas --pancreas pancreas.h5ad --half $h; done
    # then, as the panel did, two more seeds on the development half of the small datasets
    for d in pbmc68k pbmc_two_runs wu2020; do $B --data $d --seeds 1 2; done
    # a later stop, fixed before it ran: the same two seeds on PBMC 3k's development half
    # (seed 0 met the goal on the block there for 5 of 13 pairs at w_attr 30), run once
    $B --data pbmc3k --seeds 1 2
    python examples/target_share_panel.py --block-report blocks.jsonl

The block with the goal's own share as its target (``--variants block08``: ``target 0.8``
on dimensions 0-4, a later stop). Fixed before its first run: read on the block,
``block target 0.9`` missed the goal mostly through bio conservation (21 pairs) and
subclusters (11), while its shares reached 0.9; 0.8 is the least the goal asks for, so it
asks the least of the cell types. Not tuned: the value is the goal's threshold, chosen
without a run. Into the block study's file, so that its baselines are reused; seed 0;
the development half of all five datasets first. The held-out half runs once, and only
if, on the development half at seed 0, ``block target 0.8`` meets the goal read on the
block on more pairs (with >= 30 expressed genes) than ``block target 0.9`` (8 of 21 at
seed 0: ``--block-report blocks.jsonl --report-seeds 0``); whatever it shows, its rows
stay::

    B="python examples/target_share_panel.py --out blocks.jsonl --variants block08 --seeds 0"
    for d in pbmc68k pbmc_two_runs wu2020 pbmc3k; do $B --data $d; done
    $B --data pancreas --pancreas pancreas.h5ad
    python examples/target_share_panel.py --block-report blocks.jsonl

Blocks of other sizes (``--block-dims``, a later stop; the block study had left them
unrun). Fixed before the first run: ``block target 0.8`` (the lower of the two targets'
bio costs at the same count) on latent dimensions 0-2 and on 0-6 of the 10, each into its
own file with its own baseline (scored on the same dimensions); seed 0, the development
half of all five datasets. A size's held-out half runs once, and only if its
development count (the goal read on the block, pairs of >= 30 expressed genes) exceeds
the five-dimension block's 8 of 21; whatever they show, the rows stay::

    for n in 3 7; do
        S="python examples/target_share_panel.py --out blocks$n.jsonl --variants block08
           --block-dims $n --seeds 0"
        for d in pbmc68k pbmc_two_runs wu2020 pbmc3k; do $S --data $d; done
        $S --data pancreas --pancreas pancreas.h5ad
        python examples/target_share_panel.py --block-report blocks$n.jsonl; done

Three dimensions met the goal on the block on 11 of 21 development pairs (seven: 8), so
their held-out half ran once (``--half held-out``): 8 of 22 (docs/single_cell.md)::

    S="python examples/target_share_panel.py --out blocks3.jsonl --variants block08
       --block-dims 3 --seeds 0 --half held-out"
    for d in pbmc68k pbmc_two_runs wu2020 pbmc3k; do $S --data $d; done
    $S --data pancreas --pancreas pancreas.h5ad

Seeds 1 and 2 of the three-dimension block (a later stop; fixed before they ran). The
recipe (docs/single_cell.md) names the three-dimension block at ``target 0.8`` on seed 0
alone. Both halves of all five datasets at seeds 1 and 2, each seed with its own
baseline, into the same file; run once, and whatever they show, the rows stay. Reported:
the goal read on the block per seed and over the three seeds, per half. The recipe keeps
it as the best measured block only if, on the development pairs where the five-dimension
``block target 0.9`` also has three seeds (PBMC 3k, PBMC 68k-reduced, the two runs and
Wu 2020), its count summed over the three seeds is above that block's; otherwise the
docs say so and the recipe names both::

    S="python examples/target_share_panel.py --out blocks3.jsonl --variants block08
       --block-dims 3 --seeds 1 2"
    for h in development held-out; do $S --data pbmc3k --half $h; done   # one process
    for h in development held-out; do                                    # the other
        for d in pbmc68k pbmc_two_runs wu2020; do $S --data $d --half $h; done
        $S --data pancreas --pancreas pancreas.h5ad --half $h; done

They met the goal on the block on 30 (seed 1) and 22 (seed 2) of the 43 pairs (seed 0:
19); on the rule's 16 development pairs the three seeds sum to 28 against 16, so the
recipe keeps the three-dimension block (docs/single_cell.md).

Seeds 1 and 2 of the seven-dimension block (a later stop; fixed before they ran). The
recipe's block size rests on seed 0 of the sizes (three dimensions 11 of 21 development
pairs, seven 8), while the three-dimension block's own count moved from 11 to 16 and 12
with the seed. ``block target 0.8`` on dimensions 0-6, seeds 1 and 2, the development half
of all five datasets, each seed with its own baseline, into the seven-dimension file; run
once, and whatever they show, the rows stay. The recipe keeps three dimensions if, on the
21 development pairs, its count summed over seeds 0-2 (11 + 16 + 12 = 39) is above the
seven-dimension block's; otherwise the docs say so and the recipe names both::

    S="python examples/target_share_panel.py --out blocks7.jsonl --variants block08
       --block-dims 7 --seeds 1 2"
    $S --data pbmc3k                                                     # one process
    for d in pbmc68k pbmc_two_runs wu2020; do $S --data $d; done         # the other
    $S --data pancreas --pancreas pancreas.h5ad

They met the goal on the block on 8 (seed 1) and 7 (seed 2) of the 21 development pairs
(seed 0: 8): 23 over the three seeds against 39, so the recipe keeps three dimensions
(docs/single_cell.md).

Seeds 1 and 2 of the panel's held-out half and of the pancreas (a later stop; fixed
before they ran). The panel asks for three seeds per pair; seed 0 alone had run on every
held-out pair, on both halves of the pancreas and on PBMC 3k. Seeds 1 and 2 of the
defaults (baseline, ``w_attr 30``, ``target 0.9``; not the ``label`` variants) on the
held-out half of PBMC 68k-reduced, the two runs and Wu 2020 and on both halves of the
pancreas, each seed with its own baseline, run once; whatever they show, the rows stay.
Reported: the goal per seed and on the means over the seeds, per half (``--report FILE
--report-seeds S``). No setting or default depends on them. PBMC 3k's seeds 1 and 2
(about three hours of one core) stay unrun (both halves were run later, below). The rows
are kept in files of their own (``docs/studies/target_share_panel_seeds12.jsonl``,
``..._pancreas_seeds12.jsonl``), so that the first run's tables still come from its
files; ``--report FILE FILE_seeds12`` reads both::

    P="python examples/target_share_panel.py --seeds 1 2 --half held-out"
    for d in pbmc68k pbmc_two_runs wu2020; do $P --data $d --out panel.jsonl; done
    for h in development held-out; do                                    # the other process
        python examples/target_share_panel.py --seeds 1 2 --half $h --data pancreas \
            --pancreas pancreas.h5ad --out pancreas.jsonl; done

Added minutes after those started, before any prior's row was read (one pancreas
baseline row had shown in a log): PBMC 3k's
development half at seeds 1 and 2 as well (a third process, the same rules: run once, the
rows stay, nothing depends on them), so that every development pair has three seeds;
PBMC 3k's held-out half stays at seed 0::

    python examples/target_share_panel.py --seeds 1 2 --data pbmc3k --out panel.jsonl

Then the last pairs with one seed, fixed before they ran and after the rows above were
read (nothing in their reading depends on these: the same rules, run once, the rows
stay): PBMC 3k's held-out half at seeds 1 and 2, one process per seed, into the same
file::

    for s in 1 2; do
        python examples/target_share_panel.py --seeds $s --data pbmc3k --half held-out \
            --out panel.jsonl & done
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scvi

import attreg_sc as asc
from attreg_sc.metrics import dimension_shares, fssf
from attreg_sc.metrics.evaluation import integration_metrics, scib_integration_metrics

TARGET = 0.9
VARIANTS = (("w_attr 30", dict(w_attr=30.0)),
            ("target 0.9", dict(w_attr=30.0, target_share=TARGET)))
DATASETS = ("pbmc3k", "pbmc_two_runs", "wu2020", "pbmc68k", "pancreas")
#: the issue's goal, checked on pairs whose set has >= 30 expressed genes
GOAL = dict(fssf=0.6, share=0.8, reconstruction=0.03, bio=0.05, subclusters=1.5, step=1.3)


def load(name: str, half: str, pancreas: Path | None = None):
    """The dataset, its batch key (or None) and its label key."""
    sets = asc.datasets.go_panel(half)
    if name == "pancreas":
        if pancreas is None:
            raise ValueError("--data pancreas needs --pancreas PATH, the file "
                             "scripts/make_pancreas.py makes.")
        adata = asc.datasets.pancreas(pancreas)
        mouse = {t: asc.datasets.mouse_symbols(genes) for t, genes in sets.items()}
        return adata, None, "cell_type", mouse
    if name == "pbmc3k":
        adata = asc.datasets.pbmc3k()
        keep = adata.var["highly_variable"].to_numpy() | np.isin(
            adata.var_names, np.concatenate([np.asarray(g) for g in sets.values()]))
        return adata[:, keep].copy(), None, "cell_type", sets
    if name == "pbmc_two_runs":
        return asc.datasets.pbmc_two_runs(), "batch", "cell_type", sets
    if name == "wu2020":
        adata = asc.datasets.wu2020_tcells()
        sub = adata.obs["cell_type"].astype(str)
        adata.obs["lineage"] = pd.Categorical(
            np.where(sub.str.startswith("4."), "CD4", np.where(sub.str.startswith("8."), "CD8",
                                                               "other")))
        return adata, "batch", "lineage", sets
    if name == "pbmc68k":
        return asc.datasets.pbmc68k(), None, "cell_type", sets
    raise ValueError(f"unknown dataset {name!r}; one of {DATASETS}")


def _bio(latent, adata, batch_key, label_key) -> tuple[float, str]:
    batches = adata.obs[batch_key].to_numpy() if batch_key else np.zeros(adata.n_obs)
    labels = adata.obs[label_key].to_numpy()
    try:
        return scib_integration_metrics(latent, batches, labels)["bio_conservation"], "scib"
    except ImportError:
        return integration_metrics(latent, batches, labels)["silhouette_label"], "silhouette"


def evaluate(model, adata, gt, batch_key, label_key, n_random: int, seed: int,
             within: bool = False, block: list[int] | None = None) -> dict:
    res = fssf(model, gt, label_key, n_random=n_random, seed=seed)
    per_dim = dimension_shares(model, gt, n_samples=4).drop(index="sum")["gt_share"]
    extra = {}
    if block is not None:  # the same scores read on the latent block (dimensions given)
        on_block = fssf(model, gt, label_key, n_random=n_random, seed=seed, latent_dims=block)
        dims = [str(d) for d in block]  # dimension_shares' index
        extra.update(
            fssf_gt_block=on_block.score(), fssf_random_block=on_block.random_score(),
            share_per_dim_block=float(per_dim.loc[dims].mean()),
            share_off_block=float(per_dim.drop(index=dims).mean()),
            subclusters_block=int(on_block.summary()["n_subclusters"].sum())
            if len(on_block.table) else 0)
    if within:  # the share of what distinguishes a cell within its label
        extra["share_per_dim_within_label"] = float(dimension_shares(
            model, gt, n_samples=4, references="label").drop(index="sum")["gt_share"].mean())
    bio, bio_kind = _bio(model.get_latent_representation(), adata, batch_key, label_key)
    h = model.history
    return dict(
        fssf_gt=res.score(), fssf_random=res.random_score(),
        share_per_dim=float(per_dim.mean()), share_min_dim=float(per_dim.min()),
        reconstruction=float(h["reconstruction_loss_validation"].iloc[-1, 0]),
        bio=float(bio), bio_kind=bio_kind,
        subclusters=int(res.summary()["n_subclusters"].sum()) if len(res.table) else 0,
        weight=float(h["prior_weight_gt0"].iloc[-1, 0]) if "prior_weight_gt0" in h else None,
        training_share=float(h["prior_share_gt0"].iloc[-1, 0])
        if "prior_share_gt0" in h else None, **extra,
    )


def _train(adata, gt, seed: int, epochs: int, **kw):
    scvi.settings.seed = seed
    model = asc.SCARE(adata, gt=gt, seed=seed, **kw)
    t0 = time.perf_counter()
    model.train(max_epochs=epochs, enable_progress_bar=False)
    epochs_run = len(model.history["reconstruction_loss_train"])
    return model, dict(epochs=epochs_run, seconds_per_epoch=(time.perf_counter() - t0) / epochs_run)


#: EG references within the cell type (``references="label"``) at the default weight and
#: at the weight that reached a share of 0.8 on the frontier pairs, with minibatch
#: references at that weight beside them; added after the panel above had run
#: (``--variants label``), on its development half
LABEL_VARIANTS = (("label w_attr 30", dict(w_attr=30.0, references="label")),
                  ("label w_attr 100", dict(w_attr=100.0, references="label")),
                  ("w_attr 100", dict(w_attr=100.0)))
#: the set's prior on its own latent block (dimensions 0-4), the other dimensions kept off
#: its genes by the exclusion prior; added after the panel above had run (``--variants
#: block``); every row also scored on the block
BLOCK = [0, 1, 2, 3, 4]
BLOCK_VARIANTS = (("block w_attr 30", dict(w_attr=30.0, latent_blocks={"gt": BLOCK})),
                  ("block target 0.9", dict(w_attr=30.0, target_share=TARGET,
                                            latent_blocks={"gt": BLOCK})))
#: the goal's own share as the block's target (``--variants block08``; a later stop)
BLOCK_TARGET_08 = (("block target 0.8", dict(w_attr=30.0, target_share=0.8,
                                             latent_blocks={"gt": BLOCK})),)


def block_variants(variants, n_dims: int):
    """``(block, variants)``: the block study's priors on latent dimensions ``0 .. n_dims
    - 1``; at a size other than five each prior is named ``block<n_dims> ...`` (its rows
    need their own file: the baseline is scored on the same dimensions).

    Examples
    --------
    >>> block_variants(BLOCK_TARGET_08, 3)[1][0][0]
    'block3 target 0.8'
    """
    dims = list(range(n_dims))
    if dims == BLOCK:
        return BLOCK, variants
    return dims, tuple((name.replace("block", f"block{n_dims}", 1),
                        {**kw, "latent_blocks": {"gt": dims}}) for name, kw in variants)


#: the scores each row also has on the block (``<name>_block``)
BLOCK_COLS = ("fssf_gt", "fssf_random", "share_per_dim", "subclusters")
FRONTIER = tuple((f"w_attr {w:g}", dict(w_attr=float(w))) for w in (3, 10, 30, 100, 300)) + \
    tuple((f"target {t:g}", dict(w_attr=30.0, target_share=t)) for t in (0.5, 0.7, 0.8, 0.95))


def run(data: str, half: str, seeds, out: Path, epochs: int, n_random: int,
        only=None, variants=VARIANTS, within: bool = False,
        pancreas: Path | None = None, block: list[int] | None = None) -> None:
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["data"], r["half"], r["set"], r["model"], r["seed"]))
    adata, batch_key, label_key, sets = load(data, half, pancreas)
    if only:
        sets = {t: g for t, g in sets.items() if t in only}
    # labels registered for references="label"; the other models do not read them
    asc.SCARE.setup_anndata(adata, batch_key=batch_key, labels_key=label_key)
    gts = {}
    for term, genes in sets.items():
        try:
            gts[term] = asc.gt.from_genes(adata, genes, name=term)
        except ValueError:  # no gene of the set in the data
            print(f"{data}: {term} has no gene in the data; skipped", flush=True)
    diag = asc.gt_diagnostics.diagnose(adata, gts, warn=False)

    def emit(row):
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(" | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()),
              flush=True)

    first = next(iter(gts.values()))  # the baseline's GT: unused at w_attr 0
    for seed in seeds:
        if any((data, half, t, "baseline", seed) not in done for t in gts):
            base, timing = _train(adata, first, seed, epochs, w_attr=0.0)
            for term, gt in gts.items():
                if (data, half, term, "baseline", seed) in done:
                    continue
                emit(dict(data=data, half=half, set=term, model="baseline", seed=seed,
                          **diag.loc[term, ["genes", "expressed", "variable"]].astype(int)
                          .to_dict(), **timing,
                          **evaluate(base, adata, gt, batch_key, label_key, n_random, seed,
                                   within, block)))
        for term, gt in gts.items():
            for name, kw in variants:
                if (data, half, term, name, seed) in done:
                    continue
                model, timing = _train(adata, gt, seed, epochs, **kw)
                emit(dict(data=data, half=half, set=term, model=name, seed=seed,
                          **diag.loc[term, ["genes", "expressed", "variable"]].astype(int)
                          .to_dict(), **timing,
                          **evaluate(model, adata, gt, batch_key, label_key, n_random, seed,
                                   within, block)))


def _rows(paths: Path | list[Path]) -> pd.DataFrame:
    """The JSON lines of one file or of several (a study's later seeds kept apart)."""
    paths = [paths] if isinstance(paths, Path) else list(paths)
    return pd.DataFrame([json.loads(x) for p in paths for x in p.read_text().splitlines()])


def report(path: Path | list[Path], seeds=None) -> pd.DataFrame:
    """Per (data, half, set, model): means over seeds (all, or those given) of the rows of
    ``path`` (one file or several); the block scores too where the rows have them
    (``--variants block``)."""
    rows = _rows(path)
    if seeds is not None:
        rows = rows[rows["seed"].isin(seeds)]
    keys = ["data", "half", "set", "model"]
    cols = ["expressed", "fssf_gt", "fssf_random", "share_per_dim", "reconstruction", "bio",
            "subclusters", "seconds_per_epoch", "weight"]
    cols += [c for c in ("share_off_block", *(f"{c}_block" for c in BLOCK_COLS)) if c in rows]
    mean = rows.groupby(keys)[cols].mean()
    mean["seeds"] = rows.groupby(keys).size()
    return mean


def _missed(r: pd.Series, b: pd.Series) -> list[str]:
    """The goal's criteria but the step that model row ``r`` misses against baseline row
    ``b``."""
    ok = dict(fssf=r["fssf_gt"] >= GOAL["fssf"], share=r["share_per_dim"] >= GOAL["share"],
              reconstruction=r["reconstruction"] / b["reconstruction"] - 1
              <= GOAL["reconstruction"],
              bio=r["bio"] - b["bio"] >= -GOAL["bio"],
              subclusters=r["subclusters"] <= GOAL["subclusters"] * max(b["subclusters"], 1))
    return [k for k, v in ok.items() if not v]


def _meets_goal(r: pd.Series, b: pd.Series) -> bool:
    """The goal but its step criterion, for model row ``r`` against baseline row ``b``."""
    return not _missed(r, b)


def _verdict(g: pd.Series) -> str:
    """A goal-table row's verdict without the step criterion (timed apart): "-" for a set
    under 30 expressed genes (outside the goal), else "yes" / "no"."""
    return "-" if g["expressed"] < 30 else "yes" if g["goal_but_step"] else "no"


def goal_table(mean: pd.DataFrame, new: str = "target 0.9") -> pd.DataFrame:
    """One row per (data, half, set): the new default against the baseline, each goal."""
    out = []
    for (data, half, term), g in mean.groupby(level=[0, 1, 2]):
        g = g.droplevel([0, 1, 2])
        if "baseline" not in g.index or new not in g.index:
            continue
        b, n = g.loc["baseline"], g.loc[new]
        w = g.loc["w_attr 30"] if "w_attr 30" in g.index else None
        row = dict(
            data=data, half=half, set=term, expressed=int(n["expressed"]),
            fssf_base=b["fssf_gt"], fssf_w30=w["fssf_gt"] if w is not None else np.nan,
            fssf_new=n["fssf_gt"], fssf_random=n["fssf_random"],
            share_base=b["share_per_dim"], share_new=n["share_per_dim"],
            recon=n["reconstruction"] / b["reconstruction"] - 1, bio=n["bio"] - b["bio"],
            subclusters=n["subclusters"] / max(b["subclusters"], 1),
            step=n["seconds_per_epoch"] / b["seconds_per_epoch"],
        )
        # the step is the EG prior's cost, the same for any weight, and timed on a shared
        # machine: the goal is also given without it
        row["missed"] = ", ".join(_missed(n, b))
        row["goal_but_step"] = not row["missed"]
        row["goal"] = row["goal_but_step"] and bool(row["step"] <= GOAL["step"])
        out.append(row)
    return pd.DataFrame(out)


def markdown(mean: pd.DataFrame) -> str:
    """The per-pair table of the docs: expressed genes; share per dimension, strict FSSF
    (random sets) and subclusters for baseline -> w_attr 30 -> target 0.9; each prior's
    reconstruction and bio-conservation change from the baseline; the target's final
    multiplier; whether each prior meets the goal but its step criterion (pairs below 30
    expressed genes are outside the goal: "-")."""
    old = goal_table(mean, "w_attr 30").set_index(["data", "half", "set"])
    new = goal_table(mean).set_index(["data", "half", "set"])
    names = ("baseline", "w_attr 30", "target 0.9")
    lines = ["| data | half | set | expressed | share/dim | FSSF (random) | subclusters | "
             "reconstruction | bio | weight | goal |", "|" + "---|" * 11]

    for key, g in new.iterrows():
        m, o = mean.loc[key], old.loc[key]
        share = " -> ".join(f"{m.loc[v, 'share_per_dim']:.2f}" for v in names)
        fssf_ = " -> ".join(f"{m.loc[v, 'fssf_gt']:+.2f}" for v in names)
        subs = " -> ".join(f"{m.loc[v, 'subclusters']:.0f}" for v in names)
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {g['expressed']} | {share} | {fssf_} "
            f"({g['fssf_random']:+.2f}) | {subs} | {o['recon']:+.1%} / {g['recon']:+.1%} | "
            f"{o['bio']:+.3f} / {g['bio']:+.3f} | {m.loc['target 0.9', 'weight']:.0f} | "
            f"{_verdict(o)} / {_verdict(g)} |")
    return "\n".join(lines)


def step_table(path: Path | list[Path], seeds=None) -> str:
    """Per dataset: the median over (set, seed) of each prior's seconds per epoch over its
    seed's baseline, and of the target's over the fixed weight's (same set and seed); over
    ``seeds`` only where given."""
    rows = _rows(path)
    if seeds is not None:
        rows = rows[rows["seed"].isin(seeds)]
    base = rows[rows["model"] == "baseline"].groupby(["data", "half", "seed"])[
        "seconds_per_epoch"].first()
    lines = ["| data | w_attr 30 / baseline | target 0.9 / baseline | target 0.9 / w_attr 30 |",
             "|---|---|---|---|"]
    for data, d in rows.groupby("data", sort=False):
        t = d.set_index(["half", "set", "seed", "model"])["seconds_per_epoch"].unstack()
        b = base.loc[data].reindex(t.index.droplevel(1)).to_numpy()
        lines.append(f"| {data} | {(t['w_attr 30'] / b).median():.2f}x | "
                     f"{(t['target 0.9'] / b).median():.2f}x | "
                     f"{(t['target 0.9'] / t['w_attr 30']).median():.2f}x |")
    return "\n".join(lines)


BINS = ((0, 30, "< 30"), (30, 100, "30-99"), (100, 300, "100-299"), (300, 10**6, ">= 300"))


def size_table(mean: pd.DataFrame) -> str:
    """The issue's table, regenerated: per dataset and bin of expressed GT genes, the mean
    share per dimension and strict FSSF for baseline -> w_attr 30 -> target 0.9, the
    random sets' FSSF, the bio-conservation change and how many pairs are in the bin."""
    names = ("baseline", "w_attr 30", "target 0.9")
    flat = mean.reset_index()
    flat = flat[flat["model"].isin(names)]
    lines = ["| data | expressed GT genes | pairs | share/dim | FSSF (random) | "
             "bio change w30 / target |", "|" + "---|" * 6]
    for data, d in flat.groupby("data", sort=False):
        for lo, hi, label in BINS:
            b = d[(d["expressed"] >= lo) & (d["expressed"] < hi)]
            if b.empty:
                continue
            m = b.groupby("model")[["share_per_dim", "fssf_gt", "fssf_random", "bio"]].mean()
            if not set(names) <= set(m.index):
                continue
            share = " -> ".join(f"{m.loc[v, 'share_per_dim']:.2f}" for v in names)
            fssf_ = " -> ".join(f"{m.loc[v, 'fssf_gt']:+.2f}" for v in names)
            bio = (f"{m.loc['w_attr 30', 'bio'] - m.loc['baseline', 'bio']:+.3f} / "
                   f"{m.loc['target 0.9', 'bio'] - m.loc['baseline', 'bio']:+.3f}")
            lines.append(f"| {data} | {label} | {b['set'].nunique()} | {share} | {fssf_} "
                         f"({m.loc['target 0.9', 'fssf_random']:+.2f}) | {bio} |")
    return "\n".join(lines)


def _batch_to_label(g: pd.DataFrame, col: str, fmt: str, w: int, rel: str | None = None) -> str:
    """``w_attr w`` -> ``label w_attr w`` for one column of a pair's rows ``g``; ``rel``:
    the difference from the baseline (``"diff"``) or the ratio to it (``"ratio"``)."""
    a, c, b = g.loc[f"w_attr {w}", col], g.loc[f"label w_attr {w}", col], g.loc["baseline", col]
    if rel == "diff":
        a, c = a - b, c - b
    elif rel == "ratio":
        a, c = a / max(b, 1), c / max(b, 1)
    return f"{a:{fmt}} -> {c:{fmt}}"


def label_markdown(panel: Path, label: Path, half: str = "development") -> str:
    """References within the cell type against minibatch references at the same weight,
    seed 0 of ``half``: per pair, FSSF, share per dimension, bio and subclusters (both
    over the baseline) for w_attr w -> label w_attr w (w: 30, and 100 where both ran),
    then the summary over the pairs."""
    rows = _rows([panel, label])
    rows = rows[(rows["half"] == half) & (rows["seed"] == 0)]
    t = rows.drop_duplicates(["data", "set", "model"], keep="last").set_index(
        ["data", "set", "model"])
    models = set(t.index.get_level_values("model"))
    weights = [w for w in (30, 100) if {f"w_attr {w}", f"label w_attr {w}"} <= models]
    top = weights[-1]
    arrows = "; ".join(f"w{w} -> label" for w in weights)
    lines = [f"| data | set | expressed | FSSF {arrows} | share/dim | bio change | "
             f"subclusters (x baseline) | goal w{top} / label w{top} |", "|" + "---|" * 7]
    summary = []
    needed = {"baseline", *(f"{p}w_attr {w}" for w in weights for p in ("", "label "))}
    for (data, term), g in t.groupby(level=[0, 1]):
        g = g.droplevel([0, 1])
        if not needed <= set(g.index):
            continue
        b = g.loc["baseline"]
        expressed = int(b["expressed"])
        verdict = "-" if expressed < 30 else " / ".join(
            "yes" if _meets_goal(g.loc[m], b) else "no"
            for m in (f"w_attr {top}", f"label w_attr {top}"))
        cells = ["; ".join(_batch_to_label(g, col, fmt, w, rel) for w in weights)
                 for col, fmt, rel in (("fssf_gt", "+.2f", None), ("share_per_dim", ".2f", None),
                                       ("bio", "+.3f", "diff"), ("subclusters", ".2f", "ratio"))]
        lines.append(f"| {data} | {term} | {expressed} | " + " | ".join(cells) + f" | {verdict} |")
        for w in weights:
            a, c = g.loc[f"w_attr {w}"], g.loc[f"label w_attr {w}"]
            summary.append(dict(
                weight=w, expressed=expressed, fssf=c["fssf_gt"] - a["fssf_gt"],
                bio=c["bio"] - a["bio"], share=c["share_per_dim"] - a["share_per_dim"],
                goal_batch=_meets_goal(a, b), goal_label=_meets_goal(c, b)))
    sm = pd.DataFrame(summary)
    lines += ["", "| weight | pairs | label - batch: FSSF, median (range); pairs higher | "
              "bio, median (range) | share/dim, median | goal, >= 30 genes: batch / label |",
              "|" + "---|" * 6]
    for w, d in sm.groupby("weight"):
        big = d[d["expressed"] >= 30]
        lines.append(
            f"| {w} | {len(d)} | {d['fssf'].median():+.2f} ({d['fssf'].min():+.2f} to "
            f"{d['fssf'].max():+.2f}); {int((d['fssf'] > 0).sum())} of {len(d)} | "
            f"{d['bio'].median():+.3f} ({d['bio'].min():+.3f} to {d['bio'].max():+.3f}) | "
            f"{d['share'].median():+.2f} | {int(big['goal_batch'].sum())} / "
            f"{int(big['goal_label'].sum())} of {len(big)} |")
    return "\n".join(lines)


def block_markdown(path: Path, seeds=None) -> str:
    """The ``--variants block`` rows, read twice: on the whole latent (the goal as the
    panel states it) and on the block (FSSF, share per dimension and subclusters of
    dimensions 0-4, or of the file's block size, the baseline's included; reconstruction
    and bio stay whole-latent);
    means over ``seeds`` (all: ``None``); ``block target 0.8`` (``--variants block08``)
    joins the summaries where its rows are there.
    Per pair: FSSF and share per dimension for baseline -> block w_attr 30 -> block
    target 0.9 in each reading, the share off the block, the block's subclusters, the
    reconstruction and bio change of each prior, the target's final multiplier, and the
    goal (all criteria but the step) met by each prior in each reading; then, per prior
    and dataset, pairs of >= 30 expressed genes read on the block (goal met; FSSF median
    and range; share median; bio change range; subclusters and seconds per epoch over the
    baseline's, medians); then the counts (per half, and per half and dataset) and the
    criteria missed."""
    whole = report(path, seeds=seeds)
    block = whole.copy()
    for c in BLOCK_COLS:
        block[c] = whole[f"{c}_block"]
    names = ("baseline", *(n for n, _ in BLOCK_VARIANTS))
    models = set(whole.index.get_level_values("model"))
    known = [n for n, _ in (*BLOCK_VARIANTS, *BLOCK_TARGET_08)]
    summarised = [n for n in known if n in models] + sorted(
        n for n in models if n.startswith("block") and n not in known)  # other block sizes
    goals = {(reading, name): goal_table(m, name).set_index(["data", "half", "set"])
             for reading, m in (("whole", whole), ("block", block))
             for name in summarised}
    w30, tgt = (n for n, _ in BLOCK_VARIANTS)
    per_pair = {w30, tgt} <= set(summarised)  # the five-dimension study's file
    lines = ["| data | half | set | expressed | FSSF whole | FSSF block (random) | "
             "share/dim whole | share/dim block | share off block | subclusters block | "
             "reconstruction | bio | weight | goal whole | goal block |",
             "|" + "---|" * 15] if per_pair else []

    def chain(m, col, fmt):
        return " -> ".join(format(m.loc[n, col], fmt) for n in names)

    for key, g in goals[("whole", tgt)].iterrows() if per_pair else ():
        m, b = whole.loc[key], block.loc[key]
        gw, gb = goals[("whole", w30)].loc[key], goals[("block", w30)].loc[key]
        tb = goals[("block", tgt)].loc[key]
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {g['expressed']} | {chain(m, 'fssf_gt', '+.2f')}"
            f" | {chain(b, 'fssf_gt', '+.2f')} ({b.loc[tgt, 'fssf_random']:+.2f}) | "
            f"{chain(m, 'share_per_dim', '.2f')} | "
            f"{chain(b, 'share_per_dim', '.2f')} | {chain(m, 'share_off_block', '.2f')} | "
            f"{chain(b, 'subclusters', '.0f')} | {gw['recon']:+.1%} / {g['recon']:+.1%} | "
            f"{gw['bio']:+.3f} / {g['bio']:+.3f} | {m.loc[tgt, 'weight']:.0f} | "
            f"{_verdict(gw)} / {_verdict(g)} | {_verdict(gb)} / {_verdict(tb)} |")
    lines += ["", "| prior | data | pairs | goal on the block | FSSF block | share/dim block | "
              "bio | subclusters block | step |", "|" + "---|" * 9]
    for name in summarised:  # per dataset, pairs of >= 30 expressed genes
        g = goals[("block", name)]
        for data, x in g[g["expressed"] >= 30].groupby(level="data"):
            lines.append(
                f"| {name} | {data} | {len(x)} | {int(x['goal_but_step'].sum())} | "
                f"{x['fssf_new'].median():+.2f} ({x['fssf_new'].min():+.2f} to "
                f"{x['fssf_new'].max():+.2f}) | {x['share_new'].median():.2f} | "
                f"{x['bio'].min():+.3f} to {x['bio'].max():+.3f} | "
                f"{x['subclusters'].median():.2f}x | {x['step'].median():.2f}x |")
    lines.append("")
    for (reading, name), g in goals.items():
        g = g[g["expressed"] >= 30]
        counts = ", ".join(f"{h} {int(x['goal_but_step'].sum())}/{len(x)}"
                           for h, x in g.groupby(level="half"))
        missed = pd.Series([c for m in g["missed"] for c in m.split(", ") if c])
        why = ", ".join(f"{c} {n}" for c, n in missed.value_counts().items()) or "none"
        per_data = "; ".join(f"{h} {d} {int(x['goal_but_step'].sum())}/{len(x)}"
                             for (h, d), x in g.groupby(level=["half", "data"]))
        lines.append(f"* {name}, read on the {'whole latent' if reading == 'whole' else 'block'}"
                     f": the goal but its step criterion on {counts} pairs with >= 30 "
                     f"expressed genes ({per_data}); criteria missed (pairs): {why}")
    return "\n".join(lines)


def plot_frontier(mean: pd.DataFrame, path: Path) -> None:
    """Strict FSSF against bio conservation for every model of each (data, set) with more
    than the three panel models: the fixed-weight and the target-share families as lines,
    the baseline as a cross, the goal's lines dotted (give ``mean`` of one seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [k for k, g in mean.groupby(level=[0, 1, 2]) if len(g) > 3]
    fig, axes = plt.subplots(1, max(len(pairs), 1), figsize=(4.5 * max(len(pairs), 1), 4),
                             squeeze=False)
    for ax, key in zip(axes[0], pairs, strict=False):  # no pair: one empty axis
        g = mean.loc[key]
        for family, marker in (("w_attr", "o"), ("target", "s")):
            sub = g[g.index.str.startswith(family)]
            order = sub.index.str.split(" ").str[-1].astype(float).argsort()
            sub = sub.iloc[order]
            ax.plot(sub["bio"], sub["fssf_gt"], marker=marker, label=family)
            for name, r in sub.iterrows():
                ax.annotate(name.split(" ")[-1], (r["bio"], r["fssf_gt"]), fontsize=7)
        b = g.loc["baseline"]
        ax.scatter([b["bio"]], [b["fssf_gt"]], marker="x", color="k", label="baseline")
        ax.axvline(b["bio"] - GOAL["bio"], color="grey", ls=":")
        ax.axhline(GOAL["fssf"], color="grey", ls=":")
        ax.set(title=f"{key[0]} {key[2]}", xlabel="bio conservation", ylabel="strict FSSF")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=DATASETS)
    p.add_argument("--half", choices=("development", "held-out"), default="development")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--n-random", type=int, default=20)
    p.add_argument("--out", type=Path, default=Path("target_share_panel.jsonl"))
    p.add_argument("--sets", nargs="+", default=None, help="only these GO terms of the half")
    p.add_argument("--frontier", action="store_true",
                   help="the FSSF / bio-conservation frontier a pair allows: fixed weights "
                        "3-300 and targets 0.5-0.95 instead of the two defaults")
    p.add_argument("--variants", choices=("defaults", "label", "label30", "mechanism", "block",
                                          "block08"),
                   default="defaults",
                   help="defaults: w_attr 30 and target 0.9; label: EG references within "
                        "the cell type at w_attr 30 and 100, and w_attr 100; label30: "
                        "references within the cell type at w_attr 30 only; mechanism: "
                        "w_attr 30 with both references, and the share within the label; "
                        "block: w_attr 30 and target 0.9 on dimensions 0-4; block08: "
                        "target 0.8 on dimensions 0-4")
    p.add_argument("--pancreas", type=Path, default=None,
                   help="with --data pancreas: the file scripts/make_pancreas.py made")
    p.add_argument("--plot", type=Path, default=None,
                   help="with --report: draw FSSF against bio conservation per pair here")
    p.add_argument("--report", type=Path, nargs="+", default=None,
                   help="the panel's tables from these rows (one file or several)")
    p.add_argument("--block-dims", type=int, default=len(BLOCK),
                   help="with --variants block / block08: the block is latent dimensions "
                        "0 .. N-1 (default 5); other sizes name their priors blockN")
    p.add_argument("--report-seeds", type=int, nargs="+", default=None,
                   help="with --report / --block-report: means over these seeds only "
                        "(default: all)")
    p.add_argument("--block-report", type=Path, default=None,
                   help="the --variants block rows' table, on the whole latent and the block")
    p.add_argument("--label-report", type=Path, nargs=2, default=None,
                   metavar=("PANEL", "LABEL"),
                   help="the references-within-label table (of --half) from the panel's "
                        "rows and the --variants label / label30 rows")
    args = p.parse_args(argv)
    if args.block_report is not None:
        print(block_markdown(args.block_report, seeds=args.report_seeds))
        return
    if args.label_report is not None:
        print(label_markdown(*args.label_report, half=args.half))
        return
    if args.report is not None:
        mean = report(args.report, seeds=args.report_seeds)
        print(markdown(mean))
        for name in ("w_attr 30", "target 0.9", *(n for n, _ in LABEL_VARIANTS)):
            if name not in mean.index.get_level_values("model"):
                continue
            g = goal_table(mean, name)
            g = g[g["expressed"] >= 30]
            counts = ", ".join(f"{h} {int(x['goal'].sum())}/{len(x)} "
                               f"({int(x['goal_but_step'].sum())} without the step criterion)"
                               for h, x in g.groupby("half"))
            print(f"\n{name} meets the goal on: {counts} pairs with >= 30 expressed genes")
            per_data = "; ".join(f"{h} {d} {int(x['goal_but_step'].sum())}/{len(x)}"
                                 for (h, d), x in g.groupby(["half", "data"]))
            missed = pd.Series([c for m in g["missed"] for c in m.split(", ") if c])
            why = ", ".join(f"{c} {n}" for c, n in missed.value_counts().items()) or "none"
            print(f"  without the step criterion, per half and dataset: {per_data}; "
                  f"criteria missed (pairs): {why}")
        print()
        print(size_table(mean))
        print()
        print(step_table(args.report, seeds=args.report_seeds))
        if args.plot is not None:
            plot_frontier(report(args.report, seeds=[0]), args.plot)  # the frontier's seed
        return
    if args.data is None:
        p.error("--data is required unless --report is given")
    variants = FRONTIER if args.frontier else {
        "defaults": VARIANTS, "label": LABEL_VARIANTS, "label30": LABEL_VARIANTS[:1],
        "mechanism": (VARIANTS[0], LABEL_VARIANTS[0]),
        "block": BLOCK_VARIANTS, "block08": BLOCK_TARGET_08}[args.variants]
    block = None
    blocked = args.variants in ("block", "block08")
    if args.block_dims != len(BLOCK) and (args.frontier or not blocked):
        p.error("--block-dims goes with --variants block or block08, without --frontier")
    if blocked:
        if not 1 <= args.block_dims < 10:  # the study's latent has 10 dimensions
            p.error(f"--block-dims must be 1-9 (of the 10 latent dimensions), got "
                    f"{args.block_dims}")
        block, variants = block_variants(variants, args.block_dims)
    run(args.data, args.half, args.seeds, args.out, args.epochs, args.n_random, args.sets,
        variants, within=args.variants == "mechanism", pancreas=args.pancreas, block=block)


if __name__ == "__main__":
    main()
