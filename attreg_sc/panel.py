"""Gene panels for targeted spatial transcriptomics from a scARE model's attributions.

A targeted spatial panel (Xenium, MERFISH, CosMx) reads 50-500 genes chosen from a
single-cell reference. :func:`select_panel` trains :class:`attreg_sc.SCARE` on the reference
(or takes a trained one), attributes every latent dimension to the genes with Expected
Gradients, and picks the genes the encoder relies on to place each cell type:

1. per explained cell and latent dimension, each gene's share of the dimension's absolute
   attribution, weighted by the dimension's share of the latent variance;
2. per group (cell type, or all cells without ``cell_type_key``), the mean share: the
   gene's *importance* for the group (:func:`group_importance`);
3. groups take turns, rarest first, each adding its most important gene not yet chosen,
   discounted by its largest correlation with the genes already in the panel
   (``redundancy``), so that rare types get their markers and the panel does not spend
   genes on copies of one signal (:func:`greedy_panel`). Only positive correlation
   discounts: the markers of two cell types are anti-correlated, and complementary.

The ranking is nested: the first ``k`` genes of the panel are the panel of size ``k``, so
several sizes come from one run. The paper's recipe, a sparsity prior on the attributions
while training, is ``w_sparsity`` (:class:`attreg.penalties.GiniSparsity` on the prior's
random directions).

Examples
--------
>>> import attreg_sc as asc
>>> adata = asc.datasets.synthetic(n_cells=200, n_genes=40, n_gt_genes=5, seed=0)
>>> panel = asc.panel.select_panel(adata, [5, 10], cell_type_key="cell_type",
...                                max_epochs=2, n_latent=4, seed=0)
>>> len(panel.genes), len(panel.genes_at(5))
(10, 5)
>>> list(panel.table.columns)[:4]
['gene', 'rank', 'attribution_share', 'selected_for']
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

logger = logging.getLogger(__name__)

__all__ = [
    "PanelSettings",
    "Panel",
    "select_panel",
    "train_panel_model",
    "evaluate_panel",
    "evaluate_panels",
    "reference_panels",
    "group_importance",
    "greedy_panel",
]


@dataclass(frozen=True)
class PanelSettings:
    """How :func:`select_panel` trains and ranks, declared once.

    Parameters
    ----------
    n_latent, n_hidden
        The SCARE model's latent and hidden sizes.
    max_epochs
        Training epochs (with early stopping on the validation loss).
    w_sparsity
        Weight of the global sparsity prior on the encoder's attributions while training
        (0: none; the paper's recipe: a penalty that concentrates each direction's
        attribution on few genes).
    n_explained
        Cells explained (a sample stratified by group; every cell of a group smaller than
        its share); ``None``: all cells. Memory grows as explained cells x genes (two dense
        float64 matrices: 2,000 x 5,000 genes is 160 MB).
    n_samples
        EG references per explained cell.
    redundancy
        How strongly a candidate's largest correlation with the chosen genes discounts it:
        score ``* (1 - max(r, 0)) ** redundancy`` (0: no discount).
    turn_exponent
        Each group's share of the turns is proportional to ``n_cells ** turn_exponent``
        (0: every group the same number of turns, rarest first; 1: in proportion to its
        cells, so the large types, whose neighbourhoods dominate a kNN graph, get more
        genes, and a type with 1% of the cells one gene in a hundred).
    latent_turns
        Also give turns to the latent dimensions that hold at least half an equal share
        of the latent variance (after the cell types, by decreasing variance), each
        choosing the gene with the largest mean share of its attribution over all
        explained cells: genes for the variation within and across cell types that the
        cell types' own turns may miss.
    pca_turns
        Also give turns to this many principal components of the explained cells'
        log-normalized expression (after the other groups, in order of variance), each
        choosing the gene with the largest squared loading: the axes on which a kNN graph
        of the full expression is built (0: none).
    within_turns
        Also give every cell type a second turn (after the others, largest type first)
        whose importance comes from attributions with EG's references drawn within the
        cell type (``get_attributions(references="label")``): the genes that distinguish
        the cells of a type from each other, on which the neighbourhoods inside the large
        types are built, where the first turns choose the genes that set the types apart.
        Needs ``cell_type_key``; doubles the attribution passes.
    seed
        Seed of training, the explained cells and EG's draws.
    threads
        CPU threads of training and attribution (restored afterwards). An integer (default
        1) makes the panel reproducible from the seed on a machine; ``"auto"`` (the cores
        other processes leave free, as :meth:`attreg_sc.SCARE.train`) is faster on a busy
        machine, but float sums in another order can change the last genes of the ranking.
    """

    n_latent: int = 10
    n_hidden: int = 128
    max_epochs: int = 100
    w_sparsity: float = 0.0
    n_explained: int | None = 2000
    n_samples: int = 8
    redundancy: float = 1.0
    turn_exponent: float = 0.0
    latent_turns: bool = False
    pca_turns: int = 0
    within_turns: bool = False
    seed: int = 0
    threads: int | str = 1

    def __post_init__(self) -> None:
        t = self.threads
        if t != "auto" and (isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 1):
            raise ValueError(f"threads must be 'auto' or an integer >= 1, got {t!r}.")
        for name, low in (("n_latent", 1), ("n_hidden", 1), ("max_epochs", 1), ("n_samples", 1),
                          ("pca_turns", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
        for name in ("latent_turns", "within_turns"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        n = self.n_explained
        if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2):
            raise ValueError(f"n_explained must be an integer >= 2 or None, got {n!r}.")
        for name in ("w_sparsity", "redundancy", "turn_exponent"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                np.isfinite(value) and value >= 0
            ):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or (
            self.seed < 0
        ):
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}.")


@dataclass
class Panel:
    """A ranked gene panel.

    Attributes
    ----------
    genes
        The panel, in rank order (required genes first).
    table
        One row per panel gene: ``gene``, ``rank`` (1 = first), ``attribution_share`` (the
        gene's mean share of the latent's attribution over the explained cells),
        ``selected_for`` (the group whose turn chose it, ``"latent d"`` / ``"PC j"`` for a
        latent dimension's / principal component's turn, or ``"required"``),
        ``cell_types`` (the groups it serves: those that have it among their ``k`` most
        important panel genes, ``k`` = panel size // number of groups; comma-separated),
        ``mean_counts`` (mean raw count per cell).
    importance
        Genes x groups: each gene's importance for each group (each column sums to 1 over
        all candidate genes).
    sizes
        The panel sizes asked for.
    settings
        The :class:`PanelSettings` used.
    model
        The SCARE model the attributions came from.
    """

    genes: list[str]
    table: pd.DataFrame
    importance: pd.DataFrame
    sizes: list[int]
    settings: PanelSettings
    model: Any = field(default=None, repr=False)

    def genes_at(self, n: int) -> list[str]:
        """The panel of size ``n``: its first ``n`` genes."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not (
            1 <= n <= len(self.genes)
        ):
            raise ValueError(f"n must be an integer in 1..{len(self.genes)}, got {n!r}.")
        return self.genes[:n]

    def coverage(self, n: int | None = None) -> pd.DataFrame:
        """Per group, the cumulative share of its importance that the first ``k`` genes
        hold, for ``k = 1..n`` (rows ``k``, columns groups)."""
        genes = self.genes if n is None else self.genes_at(n)
        held = self.importance.loc[genes].cumsum()
        held.index = pd.RangeIndex(1, len(genes) + 1, name="panel size")
        return held


def group_importance(per_cell: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, list]:
    """Each gene's importance for each group: the mean of ``per_cell`` over the group's
    cells.

    Parameters
    ----------
    per_cell
        ``(n_cells, n_genes)``: ``sum_d w_d s_dcg``, each gene's share ``s_dcg`` of cell
        ``c``'s absolute attribution for latent dimension ``d`` (rows of ``s_d`` sum to 1, or
        0 for a cell the dimension ignores), weighted by the dimensions' shares ``w_d`` of
        the latent variance (summing to 1).
    groups
        ``(n_cells,)`` group labels.

    Returns
    -------
    ``(importance (n_genes, n_groups), group names)``; each column sums to 1 when every cell
    has some attribution.

    Examples
    --------
    >>> per_cell = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    >>> imp, names = group_importance(per_cell, np.array(["a", "b", "b"]))
    >>> imp.tolist(), names
    ([[1.0, 0.25], [0.0, 0.75]], ['a', 'b'])
    """
    names = [str(g) for g in pd.unique(groups)]
    labels = np.asarray(groups).astype(str)
    importance = np.stack([per_cell[labels == g].mean(0) for g in names], axis=1)
    return importance, names


def _standardized(x: np.ndarray) -> np.ndarray:
    """Columns centred and scaled to unit norm: ``z.T @ z`` is the correlation matrix (a
    constant column is all zeros: it correlates with nothing)."""
    z = x - x.mean(0)
    norm = np.sqrt((z * z).sum(0))
    return z / np.where(norm > 0, norm, np.inf)


def greedy_panel(
    importance: np.ndarray,
    order: Sequence[int],
    n: int,
    *,
    expression: np.ndarray | None = None,
    redundancy: float = 1.0,
    required: Sequence[int] = (),
    allowed: np.ndarray | None = None,
    turn_weights: Sequence[float] | None = None,
) -> tuple[list[int], list[int]]:
    """Groups take turns (in ``order``), each adding its best gene not yet chosen.

    A candidate's score for a group is its importance times ``(1 - c) ** redundancy``, with
    ``c`` its largest positive correlation with a chosen gene (0 if none).

    Parameters
    ----------
    importance
        ``(n_genes, n_groups)``.
    order
        Group indices in turn order.
    n
        Panel size (required genes included).
    expression
        ``(n_cells, n_genes)``, the genes' expression (e.g. ``log1p`` counts per 10,000)
        whose Pearson correlation discounts; ``None``: no discount. The correlation of
        each chosen gene with every gene is computed when it is chosen (memory: the
        matrix, not genes x genes).
    redundancy
        Exponent of the discount.
    required
        Gene indices placed first.
    allowed
        Boolean mask of candidate genes (default: all).
    turn_weights
        ``(n_groups,)`` positive shares of the turns (default: equal, plain rotation in
        ``order``). Unequal shares follow Tijdeman's chairman-assignment rule: of the
        groups not ahead of their share by more than ``1 - 1/(2K - 2)`` (``K`` groups), the
        one whose next turn is due first takes it (the first in ``order`` on a tie), so
        after every turn ``t`` each group has taken its share of ``t`` turns within
        ``1 - 1/(2K - 2)``, and the panels stay nested.

    Returns
    -------
    ``(gene indices in rank order, the group each was chosen for; -1 for required)``

    Examples
    --------
    >>> imp = np.array([[0.6, 0.0], [0.3, 0.1], [0.1, 0.9]])
    >>> greedy_panel(imp, [1, 0], 2)
    ([2, 0], [1, 0])
    >>> greedy_panel(imp, [1, 0], 3, turn_weights=[3.0, 1.0])  # group 0 takes 3 of 4
    ([0, 2, 1], [0, 1, 0])
    """
    n_genes = importance.shape[0]
    free = np.ones(n_genes, bool) if allowed is None else np.asarray(allowed, bool).copy()
    z = None if expression is None else _standardized(np.asarray(expression, np.float64))
    chosen, served = [], []
    closest = np.zeros(n_genes)
    for g in required:
        chosen.append(int(g))
        served.append(-1)
        free[g] = False
        if z is not None:
            closest = np.maximum(closest, z.T @ z[:, g])
    order = [int(k) for k in order]
    share = None  # equal shares: plain rotation (exact, no float credit)
    if turn_weights is not None:
        w = np.asarray(turn_weights, np.float64)
        if w.shape != (importance.shape[1],) or not (np.isfinite(w).all() and (w > 0).all()):
            raise ValueError(f"turn_weights must be {importance.shape[1]} positive finite "
                             f"numbers (one per group), got {turn_weights!r}.")
        if not np.all(w[order] == w[order[0]]):
            share = w[order] / w[order].sum()
    taken = np.zeros(len(order))
    slack = 1.0 - 1.0 / max(2 * len(order) - 2, 1)
    turn = 0
    while len(chosen) < n and free.any():
        turn += 1
        if share is None:
            k = order[(turn - 1) % len(order)]
        else:  # Tijdeman (1980): earliest due among the groups not too far ahead
            eligible = share * turn - taken >= 1.0 - slack - 1e-12
            due = np.where(eligible, (taken + slack) / share, np.inf)
            slot = int(np.argmin(due))  # the first of the smallest: ``order`` breaks ties
            taken[slot] += 1
            k = order[slot]
        score = importance[:, k] * (1.0 - np.minimum(closest, 1.0)) ** redundancy
        score = np.where(free, score, -np.inf)
        g = int(np.argmax(score))
        chosen.append(g)
        served.append(int(k))
        free[g] = False
        if z is not None:
            closest = np.maximum(closest, z.T @ z[:, g])
    return chosen, served


def _served(importance: np.ndarray, chosen: list[int]) -> np.ndarray:
    """``(len(chosen), n_groups)`` bool: the panel gene is among the group's ``k`` most
    important panel genes, ``k = max(1, len(chosen) // n_groups)`` (the group's fair share
    of the panel)."""
    sub = importance[chosen]
    k = max(1, len(chosen) // importance.shape[1])
    ranks = (-sub).argsort(0, kind="stable").argsort(0, kind="stable")
    return ranks < k


def _genes(adata, names, what: str) -> list[int]:
    if names is None:
        return []
    if isinstance(names, str):
        names = [names]
    names = list(dict.fromkeys(map(str, names)))
    index = pd.Index(adata.var_names.astype(str))
    missing = [g for g in names if g not in index]
    if missing:
        raise KeyError(f"{what} genes not in adata.var_names: {missing[:10]}"
                       f"{' ...' if len(missing) > 10 else ''}; check their spelling or "
                       "the gene identifiers (symbols vs Ensembl IDs) of the reference.")
    return [int(index.get_loc(g)) for g in names]


def _sizes(n) -> list[int]:
    sizes = [n] if isinstance(n, (int, np.integer)) and not isinstance(n, bool) else list(n)
    if not sizes or any(
        isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in sizes
    ):
        raise ValueError(f"n must be a positive integer or a list of them, got {n!r}.")
    return sorted({int(k) for k in sizes})


def _explained_cells(groups: np.ndarray, n: int | None, rng: np.random.Generator) -> np.ndarray:
    """A sample stratified by group: every group keeps its share of ``n`` cells, at
    least ``min(size, 50)`` (rare types are explained, not sampled away)."""
    if n is None or n >= len(groups):
        return np.arange(len(groups))
    picked = []
    for g in pd.unique(groups):
        rows = np.flatnonzero(groups == g)
        k = min(len(rows), max(50, round(n * len(rows) / len(groups))))
        picked.append(rng.choice(rows, k, replace=False))
    return np.sort(np.concatenate(picked))


#: obs column of the panel's own copy that registers the cell types (within_turns)
_TYPE_COLUMN = "_panel_cell_type"
#: cells per chunk of the within-type attributions (one chunk for the default n_explained)
_WITHIN_CHUNK = 2048


def _shares(attributions: np.ndarray) -> np.ndarray:
    """Each cell's share of its absolute attribution per gene (rows sum to 1, or 0)."""
    attr = np.abs(attributions)
    total = attr.sum(1, keepdims=True)
    return np.divide(attr, total, out=np.zeros_like(attr), where=total > 0)


def _check_model_labels(model, groups: np.ndarray, cell_type_key: str) -> None:
    """within_turns with a given model: its registered labels must be the cell types."""
    from scvi import REGISTRY_KEYS

    registry = model.adata_manager.data_registry
    fix = (f"set the model up with labels_key={cell_type_key!r} "
           "(SCARE.setup_anndata), or leave model=None.")
    state = (model.adata_manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY)
             if REGISTRY_KEYS.LABELS_KEY in registry else None)
    if state is None or state.original_key == "_scvi_labels":  # scvi-tools' stand-in
        raise ValueError(f"within_turns=True draws EG references within the cell types, "
                         f"but the model has no labels: {fix}")
    codes = np.asarray(model.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).ravel()
    labels = np.asarray(state.categorical_mapping).astype(str)[codes.astype(int)]
    if not np.array_equal(labels, np.asarray(groups).astype(str)):
        raise ValueError(f"within_turns=True: the model's labels "
                         f"({state.original_key!r}) are not obs[{cell_type_key!r}]: {fix}")


def _log_normalized(counts) -> np.ndarray:
    x = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    x = x.astype(np.float64)
    total = x.sum(1, keepdims=True)
    return np.log1p(x / np.maximum(total, 1.0) * 1e4)


def train_panel_model(data, settings: PanelSettings, rng: np.random.Generator,
                      progress_bar: bool = False, **prior: Any):
    """Train the :class:`attreg_sc.SCARE` that :func:`select_panel` ranks with.

    Parameters
    ----------
    data
        AnnData already set up with :meth:`attreg_sc.SCARE.setup_anndata`.
    settings
        The panel's settings (sizes, epochs, sparsity prior, seed, threads).
    rng
        The panel's generator: it draws the train/validation split (scvi-tools splits by
        its global seed, a new split every run without one; this split comes from the
        panel's seed, so the panel does too).
    progress_bar
        Show training's progress bar.
    **prior
        Further SCARE prior options (e.g. ``gt=``, ``target_share=``).

    Returns
    -------
    The trained model. Call it inside the seeded, thread-restoring context
    :func:`select_panel` sets up.

    Examples
    --------
    >>> import numpy as np
    >>> import attreg_sc as asc
    >>> adata = asc.datasets.synthetic(n_cells=100, n_genes=20, n_gt_genes=4, seed=0)
    >>> asc.SCARE.setup_anndata(adata)
    >>> settings = asc.panel.PanelSettings(max_epochs=1, n_latent=2)
    >>> model = asc.panel.train_panel_model(adata, settings, np.random.default_rng(0))
    """
    from attreg_sc.model import SCARE

    model = SCARE(data, n_latent=settings.n_latent, n_hidden=settings.n_hidden,
                  w_sparsity=settings.w_sparsity, seed=settings.seed, **prior)
    order = rng.permutation(data.n_obs)
    n_val = max(1, round(0.1 * data.n_obs))
    split = [np.sort(order[n_val:]), np.sort(order[:n_val]), np.array([], dtype=int)]
    model.train(max_epochs=settings.max_epochs, early_stopping=True,
                threads=settings.threads, enable_progress_bar=progress_bar,
                datasplitter_kwargs={"external_indexing": split})
    return model


def select_panel(
    adata,
    n: int | Sequence[int],
    *,
    cell_type_key: str | None = None,
    layer: str | None = None,
    batch_key: str | None = None,
    required: Sequence[str] | None = None,
    excluded: Sequence[str] | None = None,
    model=None,
    settings: PanelSettings | None = None,
    progress_bar: bool = False,
    **options: Any,
) -> Panel:
    """Select a gene panel of size ``n`` (or several sizes) from a reference AnnData.

    Parameters
    ----------
    adata
        The reference: raw counts (in ``X`` or ``layer``), the candidate genes as
        ``var_names`` (preselect, e.g. the 2,000-5,000 most variable genes plus any gene you
        require). Not modified: SCARE is set up on a copy.
    n
        Panel size, or several sizes (one run; the panels are nested).
    cell_type_key
        ``obs`` column of cell types: each type takes its turn, so rare types get their
        genes. Without it, all cells are one group.
    layer, batch_key
        As in :meth:`attreg_sc.SCARE.setup_anndata`.
    required
        Genes that must be in the panel (placed first, counted in ``n``).
    excluded
        Genes that may not be in the panel (e.g. too highly expressed for the chemistry).
    model
        A trained :class:`attreg_sc.SCARE` of ``adata`` (skips training).
    settings, **options
        :class:`PanelSettings`, or its fields by name (``max_epochs=50``, ``seed=1``, ...).
    progress_bar
        Show training's and the attributions' progress bars.

    Returns
    -------
    :class:`Panel`

    Examples
    --------
    >>> import attreg_sc as asc
    >>> adata = asc.datasets.synthetic(n_cells=200, n_genes=30, n_gt_genes=5, seed=1)
    >>> p = asc.panel.select_panel(adata, 6, cell_type_key="cell_type", required=["gene3"],
    ...                            excluded=["gene0"], max_epochs=2, n_latent=3)
    >>> p.genes[0], "gene0" in p.genes
    ('gene3', False)
    """
    import torch

    from attreg_sc._threads import torch_threads_unchanged
    from attreg_sc.model import SCARE

    settings = (settings or PanelSettings())
    if options:
        unknown = set(options) - {f.name for f in dataclasses.fields(PanelSettings)}
        if unknown:
            raise TypeError(f"select_panel got unknown options {sorted(unknown)}; "
                            f"use fields of PanelSettings.")
        settings = dataclasses.replace(settings, **options)
    sizes = _sizes(n)
    if cell_type_key is not None and cell_type_key not in adata.obs:
        raise KeyError(f"cell_type_key {cell_type_key!r} is not an obs column; use one of "
                       f"{list(adata.obs.columns)}.")
    req = _genes(adata, required, "required")
    exc = _genes(adata, excluded, "excluded")
    both = sorted(set(req) & set(exc))
    if both:
        raise ValueError(f"genes both required and excluded: "
                         f"{[adata.var_names[i] for i in both]}.")
    n_max = sizes[-1]
    if len(req) > sizes[0]:
        raise ValueError(f"{len(req)} required genes do not fit a panel of {sizes[0]}; "
                         "ask for a larger panel or require fewer genes.")
    if n_max > adata.n_vars - len(exc):
        raise ValueError(f"a panel of {n_max} genes needs at least that many candidates; "
                         f"the reference has {adata.n_vars} genes, {len(exc)} excluded.")
    groups = (
        np.full(adata.n_obs, "all cells", dtype=object)
        if cell_type_key is None
        else adata.obs[cell_type_key].astype(str).to_numpy()
    )
    if settings.within_turns and cell_type_key is None:
        raise ValueError("within_turns=True gives each cell type a turn for the genes that "
                         "vary within it: pass cell_type_key.")
    if cell_type_key is not None and pd.isna(adata.obs[cell_type_key]).any():
        raise ValueError(f"obs[{cell_type_key!r}] has missing values; label every cell or "
                         "drop the unlabelled cells.")
    rng = np.random.default_rng(settings.seed)
    with torch.random.fork_rng(), torch_threads_unchanged():
        torch.manual_seed(settings.seed)
        if settings.threads != "auto":
            torch.set_num_threads(int(settings.threads))
        if model is None:
            data = adata.copy()
            if settings.within_turns:  # the labels only group the EG references
                data.obs[_TYPE_COLUMN] = pd.Categorical(groups)
            SCARE.setup_anndata(data, layer=layer, batch_key=batch_key,
                                labels_key=_TYPE_COLUMN if settings.within_turns else None)
            model = train_panel_model(data, settings, rng, progress_bar=progress_bar)
        elif getattr(model, "adata", None) is None:
            raise ValueError("model has no AnnData; load it with its reference "
                             "(SCARE.load(path, adata)), or leave model=None.")
        elif list(model.adata.var_names) != list(adata.var_names) or list(
            model.adata.obs_names
        ) != list(adata.obs_names):
            raise ValueError("model was trained on other genes or cells than adata's; "
                             "train it on the reference itself, or leave model=None.")
        elif settings.within_turns:
            _check_model_labels(model, groups, cell_type_key)
        cells = _explained_cells(groups, settings.n_explained, rng)
        latent = model.get_latent_representation(indices=cells)
        variance = latent.var(0)
        weights = (variance / variance.sum() if variance.sum() > 0
                   else np.full(len(variance), 1.0 / len(variance)))
        per_cell = np.zeros((len(cells), adata.n_vars))  # sum_d w_d s_dcg, one pass per d
        per_dim = np.zeros((adata.n_vars, len(weights)))  # mean_c s_dcg
        within = np.zeros_like(per_cell) if settings.within_turns else None
        for d in range(len(weights)):
            share = _shares(model.get_attributions(
                indices=cells, reducer=d, n_samples=settings.n_samples,
                seed=settings.seed + d, progress_bar=progress_bar,
            ))
            per_cell += weights[d] * share
            per_dim[:, d] = share.mean(0)
            if within is not None:  # one chunk where it fits: partners for the rare types
                within += weights[d] * _shares(model.get_attributions(
                    indices=cells, reducer=d, n_samples=settings.n_samples,
                    seed=settings.seed + d, progress_bar=progress_bar, references="label",
                    batch_size=min(len(cells), _WITHIN_CHUNK),
                ))
    importance, names = group_importance(per_cell, groups[cells])
    counts = adata.layers[layer] if layer is not None else adata.X
    expression = _log_normalized(counts[cells]) if settings.redundancy > 0 else None
    sizes_of = pd.Series(groups).value_counts()
    order = sorted(range(len(names)), key=lambda k: (sizes_of[names[k]], names[k]))
    allowed = np.ones(adata.n_vars, bool)
    allowed[exc] = False
    turn_weights = np.array([float(sizes_of[g]) for g in names]) ** settings.turn_exponent
    turn_names, columns = list(names), [importance]
    extra: list[float] = []  # the added turns take the cell types' mean share each

    def add_turns(labels: list[str], importance_of: np.ndarray) -> None:
        turn_names.extend(labels)
        columns.append(importance_of)
        extra.extend([float(turn_weights.mean())] * len(labels))

    if settings.latent_turns:  # dimensions with at least half an equal share, largest first
        dims = [int(d) for d in np.argsort(-weights, kind="stable")
                if weights[d] >= 0.5 / len(weights)]
        add_turns([f"latent {d}" for d in dims], per_dim[:, dims])
    if settings.pca_turns:
        logged = expression if expression is not None else _log_normalized(counts[cells])
        centred = logged - logged.mean(0)
        n_pc = min(settings.pca_turns, *centred.shape)
        loadings = np.linalg.svd(centred, full_matrices=False)[2][:n_pc].T  # genes x PCs
        add_turns([f"PC {j + 1}" for j in range(n_pc)], loadings**2)
    if within is not None:  # the cell types again, largest first, for their inner genes
        within_importance, within_names = group_importance(within, groups[cells])
        by_size = sorted(range(len(within_names)),
                         key=lambda k: (-sizes_of[within_names[k]], within_names[k]))
        add_turns([f"within {within_names[k]}" for k in by_size],
                  within_importance[:, by_size])
    order = order + list(range(len(names), len(turn_names)))
    turn_weights = np.concatenate([turn_weights, extra])
    chosen, served = greedy_panel(np.hstack(columns), order, n_max, expression=expression,
                                  redundancy=settings.redundancy, required=req,
                                  allowed=allowed, turn_weights=turn_weights)
    genes = [str(adata.var_names[g]) for g in chosen]
    imp = pd.DataFrame(importance, index=adata.var_names.astype(str), columns=names)
    mean_counts = np.asarray(counts.mean(0)).ravel()
    overall = per_cell.mean(0)
    served_by = _served(importance, chosen)
    table = pd.DataFrame({
        "gene": genes,
        "rank": np.arange(1, len(genes) + 1),
        "attribution_share": overall[chosen],
        "selected_for": ["required" if k < 0 else turn_names[k] for k in served],
        "cell_types": [",".join(np.asarray(names)[row]) for row in served_by],
        "mean_counts": mean_counts[chosen],
    })
    logger.info("panel of %d genes from %d candidates, %d groups", len(genes), adata.n_vars,
                len(names))
    return Panel(genes, table, imp, sizes, settings, model)


def _neighbours(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Each cell's ``k`` nearest other cells in up to 50 principal components of ``x``."""
    from sklearn.decomposition import PCA

    from attreg_sc.metrics.evaluation import _knn

    x = x - x.mean(0)
    n_comps = min(50, x.shape[1] - 1, x.shape[0] - 1)
    if n_comps >= 2:
        x = PCA(n_comps, random_state=seed).fit_transform(x)
    return _knn(x, k)


def evaluate_panel(
    adata,
    genes: Sequence[str],
    cell_type_key: str | None = None,
    *,
    layer: str | None = None,
    n_neighbors: int = 15,
    seed: int = 0,
) -> dict[str, float]:
    """How much of the reference a panel keeps, without spapros: the kNN graph and the
    cell types.

    On ``log1p`` of counts per 10,000 (of the reference's genes, ``X`` or ``layer``):

    * ``knn_overlap``: the mean share of each cell's ``n_neighbors`` nearest neighbours
      (in up to 50 principal components) that the panel's genes alone find again among
      those of all genes (1: the same graph);
    * ``cell_type_accuracy`` (with ``cell_type_key``): balanced accuracy of a logistic
      regression on the panel's genes, 5-fold cross-validated by cell type (types with
      fewer than 5 cells are left out).

    The expression is made dense (cells x genes float64): evaluate a sample of a large
    reference (e.g. 20,000 cells). For spapros' own evaluation suite, see
    ``benchmarks/bench_panels.py``.

    Parameters
    ----------
    adata
        The reference (raw counts; not modified).
    genes
        The panel.
    cell_type_key
        ``obs`` column of cell types (``None``: no classification).
    layer
        Layer with the counts (default ``X``).
    n_neighbors
        Neighbours per cell.
    seed
        Seed of the PCA and the folds.

    Examples
    --------
    >>> import attreg_sc as asc
    >>> adata = asc.datasets.synthetic(n_cells=200, n_genes=30, n_gt_genes=5, seed=0)
    >>> all_genes = evaluate_panel(adata, list(adata.var_names), "cell_type")
    >>> round(all_genes["knn_overlap"], 6), all_genes["cell_type_accuracy"] > 0.9
    (1.0, True)
    """
    return evaluate_panels(adata, {"panel": genes}, cell_type_key, layer=layer,
                           n_neighbors=n_neighbors, seed=seed).iloc[0].to_dict()


def evaluate_panels(
    adata,
    panels: Mapping[str, Sequence[str]],
    cell_type_key: str | None = None,
    *,
    layer: str | None = None,
    n_neighbors: int = 15,
    seed: int = 0,
) -> pd.DataFrame:
    """:func:`evaluate_panel` for several panels at once: the normalization and the
    reference kNN graph (all genes) are computed once.

    Parameters
    ----------
    adata, cell_type_key, layer, n_neighbors, seed
        As for :func:`evaluate_panel`.
    panels
        ``{name: genes}``.

    Returns
    -------
    One row per panel (index: its name), columns ``knn_overlap`` and, with
    ``cell_type_key``, ``cell_type_accuracy``.

    Examples
    --------
    >>> import attreg_sc as asc
    >>> adata = asc.datasets.synthetic(n_cells=200, n_genes=30, n_gt_genes=5, seed=0)
    >>> table = evaluate_panels(adata, {"a": ["gene0", "gene1"], "b": ["gene2"]})
    >>> list(table.index), list(table.columns)
    (['a', 'b'], ['knn_overlap'])
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.preprocessing import StandardScaler

    indices = {name: _genes(adata, list(genes), "panel") for name, genes in panels.items()}
    if not indices or not all(indices.values()):
        raise ValueError("the panel is empty; give at least one gene.")
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, (int, np.integer)) or not (
        1 <= n_neighbors < adata.n_obs
    ):
        raise ValueError(f"n_neighbors must be an integer in 1..{adata.n_obs - 1}, "
                         f"got {n_neighbors!r}.")
    labels = kept = None
    if cell_type_key is not None:
        if cell_type_key not in adata.obs:
            raise KeyError(f"cell_type_key {cell_type_key!r} is not an obs column.")
        labels = adata.obs[cell_type_key].astype(str).to_numpy()
        kept = pd.Series(labels).map(pd.Series(labels).value_counts()).to_numpy() >= 5
        if len(set(labels[kept])) < 2:
            raise ValueError("cell_type_accuracy needs two cell types of >= 5 cells.")
    x = _log_normalized(adata.layers[layer] if layer is not None else adata.X)
    full = _neighbours(x, n_neighbors, seed)
    rows = {}
    for name, idx in indices.items():
        mine = _neighbours(x[:, idx], n_neighbors, seed)
        overlap = np.mean([len(np.intersect1d(a, b)) / n_neighbors
                           for a, b in zip(full, mine, strict=True)])
        row = {"knn_overlap": float(overlap)}
        if labels is not None:
            features = StandardScaler().fit_transform(x[kept][:, idx])
            folds = StratifiedKFold(5, shuffle=True, random_state=seed)
            predicted = cross_val_predict(LogisticRegression(max_iter=500), features,
                                          labels[kept], cv=folds)
            row["cell_type_accuracy"] = float(balanced_accuracy_score(labels[kept], predicted))
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def reference_panels(adata, n: int, *, layer: str | None = None,
                     seed: int = 0) -> dict[str, list[str]]:
    """The panels a selection should beat, of ``n`` genes each: ``"highly variable"``
    (scanpy's ``seurat`` dispersion on ``log1p`` counts per 10,000) and ``"random"``.

    Parameters
    ----------
    adata
        The reference (raw counts; not modified).
    n
        Panel size.
    layer
        Layer with the counts (default ``X``).
    seed
        Seed of the random panel.

    Examples
    --------
    >>> import attreg_sc as asc
    >>> adata = asc.datasets.synthetic(n_cells=100, n_genes=30, n_gt_genes=5, seed=0)
    >>> {k: len(v) for k, v in reference_panels(adata, 5).items()}
    {'highly variable': 5, 'random': 5}
    """
    import anndata as ad
    import scanpy as sc

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= adata.n_vars:
        raise ValueError(f"n must be an integer in 1..{adata.n_vars}, got {n!r}.")
    logged = ad.AnnData(_log_normalized(adata.layers[layer] if layer is not None else adata.X),
                        var=pd.DataFrame(index=adata.var_names.astype(str)))
    sc.pp.highly_variable_genes(logged, n_top_genes=int(n), flavor="seurat")
    order = logged.var["dispersions_norm"].fillna(-np.inf).to_numpy().argsort(kind="stable")
    hvg = [str(g) for g in logged.var_names[order[::-1][:n]]]
    rng = np.random.default_rng(seed)
    random = [str(g) for g in adata.var_names[np.sort(rng.choice(adata.n_vars, n, replace=False))]]
    return {"highly variable": hvg, "random": random}
