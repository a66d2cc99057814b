"""A prototype two-stage panel selector: select, then refit (issue 29).

The issue names "a two-stage select-then-refit" as a way to improve on the attribution
ranking. Stage 1 is attreg_sc's default panel (:func:`attreg_sc.panel.select_panel`) of
``CANDIDATES`` times the largest size: the candidates. Stage 2 trains a fresh
:class:`attreg_sc.SCARE` on the whole pool with the candidates as its ground truth at a
target share (``target_share=TARGET``): every latent direction must take that share of its
attribution from the candidates while the model still reconstructs every gene of the
pool, so the encoder learns what the candidates alone can tell about the whole
transcriptome (as a model that may read only the panel must). Its attributions rank the
panel, the genes outside the candidates excluded, with the default turns and
correlation discount (``select_panel(model=...)``). Panels are nested, as attreg_sc's.

Not part of attreg_sc: a benchmark prototype, to find out on the development set whether
the refit beats the one-stage ranking before anything is built into
:mod:`attreg_sc.panel` (``benchmarks/bench_panels.py --methods refit``).

Settings (fixed when the prototype was written, not tuned): ``CANDIDATES = 2`` (300 of
the pool's 1,000 genes for panels of up to 150), ``TARGET = 0.9`` (the target-share
panel's value, issue 28); everything else :class:`attreg_sc.panel.PanelSettings`'
defaults, the refit trained as ``select_panel`` trains (its seed, its own seeded
train/validation split, one thread).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

CANDIDATES, TARGET = 2, 0.9


def refit_panel(counts, sizes: Sequence[int], cell_type_key: str = "cell_type",
                seed: int = 0, **options) -> tuple[list[str], list[str]]:
    """``(ranked genes, candidates)``: the refit's nested ranking of ``max(sizes)`` genes
    and the first stage's candidates.

    Parameters
    ----------
    counts
        AnnData of raw counts; ``var_names`` are the pool.
    sizes
        Panel sizes.
    cell_type_key
        ``obs`` column of cell types (the turns).
    seed
        Seed of both stages.
    **options
        Other :class:`attreg_sc.panel.PanelSettings` fields for both stages (the
        benchmark passes none: the defaults).

    Examples
    --------
    >>> import attreg_sc as asc
    >>> adata = asc.datasets.synthetic(n_cells=200, n_genes=30, n_gt_genes=5, seed=1)
    >>> ranked, candidates = refit_panel(adata, [4, 6], max_epochs=2)  # doctest: +SKIP
    """
    import attreg_sc as asc
    from attreg_sc._threads import torch_threads_unchanged

    settings = asc.panel.PanelSettings(seed=seed, **options)
    n_max = max(sizes)
    first = asc.panel.select_panel(counts, min(CANDIDATES * n_max, counts.n_vars),
                                   cell_type_key=cell_type_key, settings=settings)
    candidates = list(first.genes)
    data = counts.copy()
    with torch.random.fork_rng(), torch_threads_unchanged():  # as select_panel trains
        torch.manual_seed(seed)
        if settings.threads != "auto":  # train() picks them for "auto"
            torch.set_num_threads(int(settings.threads))
        asc.SCARE.setup_anndata(data)
        model = asc.panel.train_panel_model(data, settings, np.random.default_rng(seed),
                                            gt=candidates, target_share=TARGET)
    keep = set(candidates)
    outside = [g for g in data.var_names.astype(str) if g not in keep]
    panel = asc.panel.select_panel(data, sorted(set(sizes)), cell_type_key=cell_type_key,
                                   model=model, excluded=outside, settings=settings)
    return list(panel.genes_at(n_max)), candidates
