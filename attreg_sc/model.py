"""``SCARE``: the user-facing scARE model on AnnData (scvi-tools' conventions)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

import attreg
from attreg.prior import AttributionPrior, PriorSet
from attreg.reducers import Index, resolve_reducer
from attreg.transfer import to_device
from attreg_sc._io import load_versioned, save_versioned
from attreg_sc.data import CountData
from attreg_sc.gt import CellGroundTruth, GroupedGroundTruth, as_ground_truths
from attreg_sc.module.vae import SCAREModule
from attreg_sc.priors import DIRECTION_REDUCERS, REDUCERS, build_prior_set
from attreg_sc.train.trainer import TrainingPlan, minibatch, train_module

__all__ = ["SCARE", "FORMAT_VERSION", "REDUCERS"]

logger = logging.getLogger(__name__)
FORMAT_VERSION = 2  # 2: safe checksummed container (attreg_sc._io)


def _resolve_device(accelerator: str) -> torch.device:
    if accelerator == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise RuntimeError("accelerator='gpu' requested but CUDA is not available.")
    return torch.device("cuda" if accelerator in ("gpu", "cuda") else accelerator)


def _resolve_blocks(
    blocks: Mapping[str, int | list[int]] | None, ground_truths: Mapping, n_latent: int
) -> dict[str, list[int]]:
    """``{gt name: latent dims}``; integer sizes are laid out consecutively from 0."""
    if not blocks:
        return {}
    unknown = set(blocks) - set(ground_truths)
    if unknown:
        raise KeyError(
            f"latent_blocks names {sorted(unknown)} are not GT names {list(ground_truths)}."
        )
    out: dict[str, list[int]] = {}
    start = 0
    for name, spec in blocks.items():
        if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
            if spec < 1:
                raise ValueError(f"latent block {name!r} needs at least one dimension.")
            dims = list(range(start, start + int(spec)))
            start += int(spec)
        else:
            dims = [int(d) for d in spec]
        if not dims or any(not 0 <= d < n_latent for d in dims) or len(set(dims)) != len(dims):
            raise ValueError(
                f"latent block {name!r} = {dims} must be distinct dimensions in 0..{n_latent - 1}."
            )
        out[name] = dims
    taken = [d for dims in out.values() for d in dims]
    if len(set(taken)) != len(taken):
        raise ValueError(f"latent blocks overlap: {out}; give each GT its own dimensions.")
    return out


_UNSET: Any = object()
SETUP_KEY = "attreg_sc"


class SCARE:
    """scARE: a batch-conditioned NB VAE trained with attribution priors.

    Parameters
    ----------
    adata
        AnnData with raw counts in ``X`` or ``layers[layer]`` (dense, CSR or CSC; never
        densified whole). Not modified.
    layer
        Layer with raw counts (``None``: ``X``).
    batch_key
        ``obs`` column with the batch; its one-hot enters encoder and decoder.
    gt
        Ground truth(s): a gene list, a boolean vector over genes, a
        :class:`~attreg_sc.gt.GroupedGroundTruth` / :class:`~attreg_sc.gt.CellGroundTruth`
        or cells x genes matrix, or a dict ``name -> any of these`` (one prior each).
    w_attr
        ``w_A``, the weight of the attribution loss (0: plain cVAE). The default, 30, was
        chosen by measurement with the default reducer and loss (PBMC 3k and 68k-reduced,
        3 seeds: docs/single_cell.md, "Which reducer"); the paper's setting is
        ``reducer="sum", reparameterizer="abs_minmax", loss="mse", w_attr=100``.
    attribution
        ``"eg"`` (default, Expected Gradients, ``n_samples`` references from the
        minibatch) or ``"ig"`` (Integrated Gradients, ``n_steps`` from zeros).
    target
        ``"encoder"`` (``F`` over the latent mean, default) or ``"model"`` (``F`` over the
        log reconstructed mean).
    reducer
        ``F`` for the encoder target. ``"random_direction"`` (default): ``F = v . mu`` for
        ``n_directions`` fresh random unit directions ``v`` of the latent per step, so
        that every latent direction, not only the sum, concentrates on the GT genes
        (see docs/concepts.md, "the sum loophole"); ``"per_dimension"``: one prior per
        latent dimension (``n_latent`` times the attribution cost); ``"sum"``: the
        paper's ``F = sum_k mu_k`` (kept to reproduce the paper); ``"mean"``, ``"l2"``.
    n_directions
        Directions per step for ``reducer="random_direction"``.
    latent_blocks
        ``{gt_name: n_dims or [latent dims]}``: the prior of each named GT acts on its
        own block of the latent (counts are laid out consecutively from dimension 0);
        unnamed GTs act on the whole latent. With blocks, ``w_exclusion`` adds an
        :class:`attreg.ExclusionPrior` per GT that keeps every other latent dimension off
        its genes.
    w_exclusion
        Weight of each exclusion prior relative to a GT's weight (``latent_blocks`` only).
    reparameterizer, loss
        See :class:`attreg.AttributionPrior`. Default ``"share"`` and ``"outside_share"``:
        the loss is the share of each direction's attribution outside the GT genes (one
        minus the GT share); ``"abs_minmax"`` + ``"mse"`` is the paper's, which also asks
        every GT gene to be equally important.
    gt_weights
        Per-GT weights (dict), default 1 each; ``aggregation`` ``"sum"`` or
        ``"squared_sum"``.
    w_reconstruction, w_divergence
        ``w_R`` and ``w_D``.
    n_hidden, n_latent, n_layers, dropout, dispersion, likelihood,
    use_observed_library, normalize_input
        Architecture, see :class:`attreg_sc.module.SCAREModule`.
    allow_non_integer
        Accept non-integer counts.
    gene_key
        ``var`` column with gene symbols used to match gene-list GTs.
    accelerator
        ``"auto"`` (CUDA if available), ``"cpu"`` or ``"gpu"``.
    seed
        Seed of initialisation, minibatches and EG references.

    Examples
    --------
    >>> import attreg_sc as asc
    >>> adata = asc.datasets.synthetic(n_cells=200, n_genes=60, n_gt_genes=10, seed=0)
    >>> model = asc.SCARE(adata, batch_key="batch", gt=adata.var["is_gt"].to_numpy(),
    ...                   w_attr=1.0, n_latent=4)
    >>> model.train(max_epochs=2, progress_bar=False)
    >>> model.get_latent_representation().shape
    (200, 4)
    """

    def __init__(
        self,
        adata,
        layer: str | None = _UNSET,
        batch_key: str | None = _UNSET,
        gt: Any = None,
        w_attr: float = 30.0,
        attribution: str = "eg",
        target: str = "encoder",
        reducer: str = "random_direction",
        reparameterizer: str = "share",
        loss: str = "outside_share",
        gt_weights: Mapping[str, float] | None = None,
        aggregation: str = "sum",
        n_samples: int = 1,
        n_steps: int = 20,
        n_directions: int = 1,
        latent_blocks: Mapping[str, int | list[int]] | None = None,
        w_exclusion: float = 1.0,
        w_reconstruction: float = 1.0,
        w_divergence: float = 1.0,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        dropout: float = 0.1,
        dispersion: str = "gene",
        likelihood: str = "nb",
        use_observed_library: bool = False,
        normalize_input: bool = False,
        allow_non_integer: bool = False,
        gene_key: str | None = None,
        accelerator: str = "auto",
        seed: int = 0,
        _batch_categories: list | None = None,
    ) -> None:
        for name, value in (
            ("w_attr", w_attr),
            ("w_reconstruction", w_reconstruction),
            ("w_divergence", w_divergence),
        ):
            if isinstance(value, bool) or not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
        for name, value in (
            ("n_latent", n_latent),
            ("n_hidden", n_hidden),
            ("n_layers", n_layers),
            ("n_samples", n_samples),
            ("n_steps", n_steps),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
        setup = dict(adata.uns.get(SETUP_KEY, {})) if hasattr(adata, "uns") else {}
        layer = setup.get("layer") if layer is _UNSET else layer
        batch_key = setup.get("batch_key") if batch_key is _UNSET else batch_key
        self.adata = adata
        self.layer, self.batch_key, self.gene_key = layer, batch_key, gene_key
        self.allow_non_integer = allow_non_integer
        self.data = CountData.from_anndata(
            adata, layer, batch_key, _batch_categories, allow_non_integer
        )
        self.ground_truths = as_ground_truths(adata, gt, gene_key)
        if w_attr > 0 and not self.ground_truths:
            logger.info("no ground truth given: training a plain cVAE (w_attr has no effect)")
        self.w_attr, self.w_reconstruction, self.w_divergence = (
            float(w_attr),
            float(w_reconstruction),
            float(w_divergence),
        )
        self.prior_params = dict(
            attribution=attribution,
            target=target,
            reducer=reducer,
            reparameterizer=reparameterizer,
            loss=loss,
            aggregation=aggregation,
            n_samples=n_samples,
            n_steps=n_steps,
            n_directions=n_directions,
            w_exclusion=w_exclusion,
        )
        if reducer not in REDUCERS:
            raise ValueError(f"unknown reducer {reducer!r}; use one of {REDUCERS}.")
        if not (isinstance(n_directions, int) and n_directions >= 1):
            raise ValueError(f"n_directions must be a positive integer, got {n_directions!r}.")
        if not np.isfinite(w_exclusion) or w_exclusion < 0:
            raise ValueError(f"w_exclusion must be finite and >= 0, got {w_exclusion}.")
        self.latent_blocks = _resolve_blocks(latent_blocks, self.ground_truths, n_latent)
        self.gt_weights = dict(gt_weights or {})
        unknown = set(self.gt_weights) - set(self.ground_truths)
        if unknown:
            raise KeyError(f"gt_weights names {sorted(unknown)} are not GT names.")
        self.module_params = dict(
            n_hidden=n_hidden,
            n_latent=n_latent,
            n_layers=n_layers,
            dropout=dropout,
            dispersion=dispersion,
            likelihood=likelihood,
            use_observed_library=use_observed_library,
            normalize_input=normalize_input,
        )
        self.seed = seed
        self.device = _resolve_device(accelerator)
        torch.manual_seed(seed)
        means, vars_ = self.data.library_log_stats()
        self.module = SCAREModule(
            n_genes=self.data.n_genes,
            n_batches=len(self.data.batch_categories),
            library_log_means=torch.from_numpy(means),
            library_log_vars=torch.from_numpy(vars_),
            **self.module_params,
        ).to(self.device)
        self.priors = self._build_priors() if self.ground_truths else None
        self.history: dict[str, list[float]] = {}
        self.is_trained = False

    @classmethod
    def setup_anndata(cls, adata, layer: str | None = None, batch_key: str | None = None) -> None:
        """Validate ``adata`` and record ``layer``/``batch_key`` for later models.

        The one documented in-place change: writes ``adata.uns["attreg_sc"]`` (as
        scvi-tools does); ``SCARE(adata)`` then uses these settings unless given.

        Examples
        --------
        >>> import attreg_sc as asc
        >>> adata = asc.datasets.synthetic(n_cells=50, n_genes=40, n_gt_genes=5)
        >>> asc.SCARE.setup_anndata(adata, batch_key="batch")
        >>> asc.SCARE(adata, n_latent=2).batch_key
        'batch'
        """
        CountData.from_anndata(adata, layer, batch_key)
        settings = {"layer": layer, "batch_key": batch_key}
        adata.uns[SETUP_KEY] = {k: v for k, v in settings.items() if v is not None}

    # -- priors --------------------------------------------------------------------------
    @property
    def priors_by_gt(self) -> dict[str, AttributionPrior]:
        """The prior of each GT, by the GT's name (``{}`` for a plain cVAE). Exclusion
        priors (``latent_blocks``) are in ``priors.priors`` as ``gt<i>_exclusion``."""
        if self.priors is None:
            return {}
        return {name: self.priors.priors[f"gt{i}"] for i, name in enumerate(self.ground_truths)}

    def _build_priors(self) -> PriorSet:
        p = self.prior_params
        self._generator = torch.Generator().manual_seed(self.seed)
        return build_prior_set(
            self.module.attribution_target(p["target"]),
            self.ground_truths,
            n_latent=self.module.n_latent,
            generator=self._generator,
            attribution=p["attribution"],
            target_kind=p["target"],
            reducer=p["reducer"],
            reparameterizer=p["reparameterizer"],
            loss=p["loss"],
            aggregation=p["aggregation"],
            n_samples=p["n_samples"],
            n_steps=p["n_steps"],
            n_directions=p["n_directions"],
            w_exclusion=p["w_exclusion"],
            latent_blocks=self.latent_blocks,
            gt_weights=self.gt_weights,
        ).to(self.device)

    def _prior_loss(
        self,
        x_in: torch.Tensor,
        batch_index: torch.Tensor,
        idx: np.ndarray,
        h_first: torch.Tensor | None = None,
        validation: bool = False,
    ):
        """``L_A`` on a minibatch. ``validation=True``: the same draws (EG references and
        alphas, directions) on every call, from a fixed seed, and the training stream left
        untouched, so that validation values differ between epochs only by the model
        (common random numbers: the noise of one draw would trigger early stopping)."""
        if validation:
            state = self._generator.get_state()
            self._generator.manual_seed(self.seed + 1_000_003)
            try:
                return self._prior_loss(x_in, batch_index, idx, h_first)
            finally:
                self._generator.set_state(state)
        gts = {
            f"gt{i}": to_device(torch.from_numpy(g.rows(idx)), x_in.device)
            for i, g in enumerate(self.ground_truths.values())
            if not isinstance(g, np.ndarray)
        }
        reuse = h_first if self.prior_params["target"] == "encoder" else None
        return self.priors(
            x_in, gts=gts, additional_forward_args=(batch_index,), input_activations=reuse
        )

    # -- training ------------------------------------------------------------------------
    def train(
        self,
        max_epochs: int = 100,
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 1e-6,
        kl_warmup_epochs: int = 10,
        prior_warmup_epochs: int = 0,
        validation_fraction: float = 0.1,
        early_stopping: bool = True,
        patience: int = 10,
        grad_clip: float | None = None,
        progress_bar: bool = True,
        checkpoint_path: str | os.PathLike | None = None,
        checkpoint_every: int = 1,
        resume: bool = False,
        threads: int | str | None = None,
        retain_freed_memory: bool = True,
    ) -> None:
        """Train the model; per-epoch losses land in :attr:`history`.

        Parameters
        ----------
        max_epochs
            Upper bound on epochs.
        batch_size
            Cells per minibatch (EG references come from the same minibatch).
        lr, weight_decay
            Adam settings.
        kl_warmup_epochs
            Linear warm-up of the KL weight from ``1/n`` to 1 over this many epochs.
        prior_warmup_epochs
            Epochs of plain training before the prior is switched on.
        validation_fraction
            Held-out cells for the validation ELBO (early stopping).
        early_stopping, patience
            Stop after ``patience`` epochs without improvement (after KL warm-up); the
            best weights are restored.
        grad_clip
            Clip the gradient norm to this value.
        progress_bar
            Show a tqdm progress bar.
        checkpoint_path, checkpoint_every
            Write a checkpoint (weights, optimizer, RNG states, history) to this file
            every ``checkpoint_every`` epochs, atomically.
        resume
            Continue from ``checkpoint_path`` (same settings and seed): the final
            weights equal those of an uninterrupted run on CPU. A resume with other
            data (genes, counts per cell, batches), another GT, or any other model or
            training setting is refused, naming what differs; only ``max_epochs`` may
            change.
        threads
            CPU threads while training, restored afterwards. ``None`` (default): torch's
            current setting. An int: that many. ``"auto"``: the cores other processes
            leave free, measured at the start and after every epoch; on a shared machine
            this avoids the collapse of OpenMP's spinning threads (15 -> 177 ms per demo
            step next to another PyTorch job with torch's defaults, 58 ms with one
            thread; see :mod:`attreg_sc.train.threads`). Results are reproducible for a
            fixed thread count.
        retain_freed_memory
            On the CPU, call :func:`attreg.retain_freed_cpu_memory` first (glibc keeps
            freed blocks for reuse instead of unmapping them after every step: a plain
            batch-128 step 30.2 -> 26.6 ms, 12-19% per step; the ``attreg-sc`` command
            trains through here). The setting is process-wide and stays: the resident
            memory then stays near its peak. ``False`` leaves ``malloc`` alone.
        """
        plan = TrainingPlan(
            max_epochs=max_epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            kl_warmup_epochs=kl_warmup_epochs,
            w_reconstruction=self.w_reconstruction,
            w_divergence=self.w_divergence,
            w_attribution=self.w_attr,
            prior_warmup_epochs=prior_warmup_epochs,
            validation_fraction=validation_fraction,
            early_stopping=early_stopping,
            patience=patience,
            grad_clip=grad_clip,
            seed=self.seed,
            progress_bar=progress_bar,
            checkpoint_path=None if checkpoint_path is None else str(checkpoint_path),
            checkpoint_every=checkpoint_every,
        )
        if resume and checkpoint_path is None:
            raise ValueError("resume=True needs checkpoint_path= (the file to resume from).")
        if retain_freed_memory and self.device.type == "cpu":
            attreg.retain_freed_cpu_memory()
        prior = self._prior_loss if self.priors is not None else None
        gens = [self._generator] if self.priors is not None else []
        history = train_module(
            self.module,
            self.data,
            plan,
            prior,
            self.device,
            generators=gens,
            resume=resume,
            fingerprint=self._resume_fingerprint(),
            threads=threads,
        )
        if resume:
            self.history = {}
        for k, v in history.items():
            self.history.setdefault(k, []).extend(v)
        self.is_trained = True

    # -- inference -----------------------------------------------------------------------
    def _data_for(self, adata) -> CountData:
        if adata is None or adata is self.adata:
            return self.data
        names = list(map(str, adata.var_names))
        if names != self.data.var_names:
            raise ValueError(
                "the AnnData's genes differ from the training genes (names or order); "
                "subset/reorder it with adata[:, model.var_names]."
            )
        return CountData.from_anndata(
            adata,
            self.layer,
            self.batch_key,
            self.data.batch_categories,
            self.allow_non_integer,
        )

    @property
    def var_names(self) -> list[str]:
        return list(self.data.var_names)

    @torch.no_grad()
    def get_latent_representation(self, adata=None, batch_size: int = 1024) -> np.ndarray:
        """Latent means ``E[z | x, c]`` of every cell, ``(n_cells, n_latent)``."""
        data = self._data_for(adata)
        self.module.eval()
        out = []
        codes = torch.from_numpy(data.batch_codes)
        for start in range(0, data.n_cells, batch_size):
            idx = np.arange(start, min(start + batch_size, data.n_cells))
            qz_m = self.module.latent_mean(*minibatch(data, codes, idx, self.device))
            out.append(qz_m.cpu().numpy())
        return np.concatenate(out)

    def get_attributions(
        self,
        adata=None,
        method: str = "eg",
        target: str | None = None,
        n_samples: int = 8,
        n_steps: int = 20,
        batch_size: int = 256,
        seed: int = 0,
        key_added: str | None = None,
        progress_bar: bool = False,
        baselines: Any = None,
        internal_batch_size: int | None = None,
        reducer: str | int | None = None,
    ) -> np.ndarray:
        """Post-hoc per-cell gene attributions ``(n_cells, n_genes)`` (not differentiable).

        Parameters
        ----------
        adata
            Cells to explain (default: the training AnnData).
        method
            ``"eg"`` (references: ``n_samples`` other cells of the same chunk of
            ``batch_size`` cells) or ``"ig"`` (``n_steps`` from ``baselines``, zeros by
            default, captum's argument).
        target
            ``"encoder"`` or ``"model"`` (default: the prior's target).
        key_added
            Also store the matrix in ``adata.layers[key_added]`` (the documented
            in-place change), e.g. ``"scare_attributions"``.
        progress_bar
            Show a tqdm bar over chunks.
        internal_batch_size
            captum's argument: rows per forward pass (bounds memory).
        reducer
            ``F`` to explain: a latent dimension (``int``), ``"sum"``, ``"mean"``, ``"l2"``;
            default: the prior's reducer, or ``"sum"`` when the prior used random or
            per-dimension directions (see :func:`attreg_sc.metrics.dimension_shares`
            for every dimension).

        Examples
        --------
        >>> import attreg_sc as asc
        >>> adata = asc.datasets.synthetic(n_cells=100, n_genes=40, n_gt_genes=5)
        >>> m = asc.SCARE(adata, n_latent=2); m.train(max_epochs=1, progress_bar=False)
        >>> m.get_attributions(method="ig", n_steps=4, key_added="scare_attributions").shape
        (100, 40)
        >>> "scare_attributions" in adata.layers
        True
        """
        from tqdm.auto import tqdm

        data = self._data_for(adata)
        self.module.eval()
        fn = self.module.attribution_target(target or self.prior_params["target"])
        if isinstance(reducer, (int, np.integer)) and not isinstance(reducer, bool):
            reducer = Index(int(reducer))
        elif reducer is None:
            name = self.prior_params["reducer"]
            reducer = resolve_reducer("sum" if name in DIRECTION_REDUCERS else name)
        else:
            reducer = resolve_reducer(reducer)
        cls = {"eg": attreg.ExpectedGradients, "ig": attreg.IntegratedGradients}[method]
        explainer = cls(fn, reducer)
        g = torch.Generator().manual_seed(seed)
        codes = torch.from_numpy(data.batch_codes)
        rng = np.random.default_rng(seed)
        order = rng.permutation(data.n_cells)
        out = np.zeros((data.n_cells, data.n_genes), dtype=np.float32)
        starts = range(0, data.n_cells, batch_size)
        for start in tqdm(starts, desc="attributions", disable=not progress_bar):
            idx = np.sort(order[start : start + batch_size])
            counts, b = minibatch(data, codes, idx, self.device)
            x_in = self.module.encoder_input(counts)
            kw = {"additional_forward_args": (b,), "internal_batch_size": internal_batch_size}
            if method == "eg":
                a = explainer.attribute(x_in, n_samples=n_samples, generator=g, **kw)
            else:
                a = explainer.attribute(x_in, baselines, n_steps=n_steps, **kw)
            out[idx] = a.cpu().numpy()
        if key_added is not None:
            (self.adata if adata is None else adata).layers[key_added] = out
        return out

    def export_to_anndata(self, adata=None, latent_key: str = "X_scare") -> None:
        """Write the latent to ``obsm[latent_key]`` and settings + history to
        ``uns["scare"]`` (scverse naming; scanpy's ``pp.neighbors(use_rep="X_scare")``,
        ``tl.umap`` and ``tl.leiden`` then work directly). The documented in-place change.
        """
        adata = self.adata if adata is None else adata
        adata.obsm[latent_key] = self.get_latent_representation(adata)
        settings = {
            "layer": self.layer,
            "batch_key": self.batch_key,
            "w_attr": self.w_attr,
            "batch_categories": list(map(str, self.data.batch_categories)),
            "ground_truths": list(self.ground_truths),
            **self.prior_params,
            **self.module_params,
        }
        adata.uns["scare"] = {
            "settings": {k: v for k, v in settings.items() if v is not None},
            "history": {k: np.asarray(v, dtype=float) for k, v in self.history.items()},
            "latent_key": latent_key,
        }

    # -- persistence ---------------------------------------------------------------------
    def _init_settings(self) -> dict:
        """The constructor arguments that rebuild this model (saved with it)."""
        return dict(
            layer=self.layer,
            batch_key=self.batch_key,
            gene_key=self.gene_key,
            latent_blocks=self.latent_blocks or None,
            w_attr=self.w_attr,
            w_reconstruction=self.w_reconstruction,
            w_divergence=self.w_divergence,
            gt_weights=self.gt_weights,
            allow_non_integer=self.allow_non_integer,
            seed=self.seed,
            **self.prior_params,
            **self.module_params,
        )

    def _resume_fingerprint(self) -> dict:
        """What a resumed training must share with the interrupted one besides the
        training plan: every model setting, and digests of the data (genes, counts per
        cell, batches) and of each GT."""
        out = {f"model.{k}": v for k, v in self._init_settings().items()}
        out["model.latent_blocks"] = repr(out["model.latent_blocks"])
        out["model.gt_weights"] = repr(out["model.gt_weights"])
        d = self.data
        out["data.genes"] = _digest("\n".join(d.var_names).encode())
        out["data.cells"] = d.n_cells
        out["data.counts_per_cell"] = _digest(np.asarray(d.library_sizes, dtype=np.float64))
        out["data.batches"] = _digest(
            np.asarray(d.batch_codes, dtype=np.int64), "\n".join(map(str, d.batch_categories))
        )
        out["ground_truths"] = _digest(
            *(
                part
                for name, g in self.ground_truths.items()
                for part in (name, *_pack_gt(g).values())
            )
        )
        return out

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        """Write weights, hyperparameters, genes, batch categories, GTs and history to
        ``path/model.pt`` atomically (temporary file + rename)."""
        path = Path(path)
        target = path / "model.pt"
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists; pass overwrite=True to replace it.")
        path.mkdir(parents=True, exist_ok=True)
        payload = {
            "format_version": FORMAT_VERSION,
            "attreg_version": attreg.__version__,
            "init": self._init_settings(),
            "var_names": self.data.var_names,
            "batch_categories": self.data.batch_categories,
            "ground_truths": {k: _pack_gt(v) for k, v in self.ground_truths.items()},
            "state_dict": {k: v.cpu() for k, v in self.module.state_dict().items()},
            "history": self.history,
            "is_trained": self.is_trained,
        }
        save_versioned(target, payload)

    @classmethod
    def load(cls, path: str | os.PathLike, adata, accelerator: str = "auto") -> SCARE:
        """Load a model saved with :meth:`save` against ``adata`` (same genes, in order)."""
        payload = load_versioned(Path(path) / "model.pt", FORMAT_VERSION, "saved scARE model")
        names = list(map(str, adata.var_names))
        if names != payload["var_names"]:
            missing = sorted(set(payload["var_names"]) - set(names))[:5]
            raise ValueError(
                f"the AnnData's genes differ from the model's ({len(names)} vs "
                f"{len(payload['var_names'])}; missing e.g. {missing}); subset/reorder "
                "it with adata[:, genes] where genes are the model's var_names."
            )
        init = dict(payload["init"])
        gts = {k: _unpack_gt(v) for k, v in payload["ground_truths"].items()}
        gts = {
            k: v for k, v in gts.items() if isinstance(v, np.ndarray) or v.shape[0] == adata.n_obs
        }
        model = cls(
            adata,
            gt=gts or None,
            accelerator=accelerator,
            _batch_categories=payload["batch_categories"],
            **init,
        )
        state = payload["state_dict"]
        bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise ValueError(
                f"{Path(path) / 'model.pt'} has non-finite weights ({', '.join(bad[:3])}): the "
                "model diverged before it was saved or the file was altered; re-train it."
            )
        model.module.load_state_dict(state)
        model.module.eval()
        model.history = payload["history"]
        model.is_trained = payload["is_trained"]
        return model

    def __repr__(self) -> str:
        return (
            f"SCARE({self.data.n_cells} cells x {self.data.n_genes} genes, "
            f"{len(self.data.batch_categories)} batch(es), GTs={list(self.ground_truths)}, "
            f"w_attr={self.w_attr}, trained={self.is_trained})"
        )


def _digest(*parts: Any) -> str:
    """sha256 of strings, bytes and arrays (their dtype, shape and bytes), in order."""
    import hashlib

    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, str):
            part = part.encode()
        if isinstance(part, (list, tuple)):
            part = np.asarray(part)
        if isinstance(part, np.ndarray):
            if part.dtype.kind not in "biuf":
                part = "\x1f".join(map(str, part.ravel())).encode()
            else:
                a = np.ascontiguousarray(part)
                h.update(f"{a.dtype.str}{a.shape}".encode())
                part = a.tobytes()
        h.update(bytes(part) if not isinstance(part, bytes) else part)
        h.update(b"\x1e")
    return h.hexdigest()[:16]


def _pack_gt(g) -> dict:
    if isinstance(g, np.ndarray):
        return {"kind": "vector", "mask": g}
    if isinstance(g, GroupedGroundTruth):
        return {"kind": "grouped", "codes": g.codes, "table": g.table, "groups": g.groups}
    m = g.matrix
    return {"kind": "cell", "indptr": m.indptr, "indices": m.indices, "shape": m.shape}


def _unpack_gt(d: dict):
    if d["kind"] == "vector":
        return d["mask"]
    if d["kind"] == "grouped":
        return GroupedGroundTruth(d["codes"], d["table"], d["groups"])
    m = sp.csr_matrix(
        (np.ones(len(d["indices"]), dtype=bool), d["indices"], d["indptr"]), shape=d["shape"]
    )
    return CellGroundTruth(m)
