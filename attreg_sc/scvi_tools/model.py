"""Attribution priors for scvi-tools models: :func:`with_prior` and :class:`SCAREVI`."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import rich.pretty  # noqa: F401 - scvi-tools 1.4.2's view_anndata_setup uses it unimported
import torch

from attreg_sc.gt import CellGroundTruth, GroupedGroundTruth, as_ground_truths, from_genes
from attreg_sc.priors import REDUCERS, build_prior_set
from attreg_sc.scvi_tools.files import load_model, read_model_file, save_model
from attreg_sc.scvi_tools.plan import PriorConfig, attribution_prior_plan

logger = logging.getLogger(__name__)

__all__ = ["AttributionPriorModelMixin", "with_prior", "PRIOR_OPTIONS"]

#: keyword arguments of :meth:`AttributionPriorModelMixin.set_prior` passed to the prior
PRIOR_OPTIONS = (
    "attribution",
    "reducer",
    "reparameterizer",
    "loss",
    "aggregation",
    "n_samples",
    "n_steps",
    "n_directions",
    "w_exclusion",
    "latent_blocks",
    "gt_weights",
)


@dataclass
class RegisteredCounts:
    """Counts and batches of a scvi-tools model's AnnData, under the names of
    :class:`attreg_sc.data.CountData` that the metrics and the report read."""

    matrix: Any
    batch_codes: np.ndarray
    batch_categories: list[str]


class _SavedReference:
    """What scvi-tools' ``load_query_data``/``prepare_query_anndata`` read from a
    reference model, from a safely loaded file instead of an unpickled one."""

    def __init__(self, payload: dict) -> None:
        self._attrs = dict(payload["attr_dict"])
        self._var_names = np.asarray(payload["var_names"], dtype=object)
        self.module = torch.nn.Module()
        state = payload["model_state_dict"]
        self.module.state_dict = lambda: state  # noqa: E731 - read-only view
        self.extra = payload.get("extra", {})

    def _get_user_attributes(self):
        return list(self._attrs.items())

    def get_var_names(self, **_):
        return self._var_names


#: ``obs`` column holding each cell's position, registered when a prior has per-cell GTs
CELL_INDEX_COLUMN = "_attreg_sc_cell_index"
#: numerical ``obs`` fields reach the plan as float32: exact integers up to 2**24
MAX_INDEXED_CELLS = 2**24


def _is_per_cell(g: Any) -> bool:
    return isinstance(g, (GroupedGroundTruth, CellGroundTruth))


def _config_to_safe(cfg: PriorConfig | None) -> dict:
    from attreg_sc.model import _pack_gt

    if cfg is None:
        return {}
    return {
        "ground_truths": {
            k: _pack_gt(g) if _is_per_cell(g) else g for k, g in cfg.ground_truths.items()
        },
        "label_table": cfg.label_table,
        "label_has_gt": cfg.label_has_gt,
        "w_attr": cfg.w_attr,
        "options": dict(cfg.options),
        "seed": cfg.seed,
    }


def _config_from_safe(d: Mapping | None) -> PriorConfig | None:
    from attreg_sc.model import _unpack_gt

    if not d:
        return None
    return PriorConfig(
        ground_truths={
            k: _unpack_gt(v) if isinstance(v, Mapping) else np.asarray(v, dtype=bool)
            for k, v in d["ground_truths"].items()
        },
        label_table=None if d.get("label_table") is None else np.asarray(d["label_table"], bool),
        label_has_gt=None if d.get("label_has_gt") is None else np.asarray(d["label_has_gt"], bool),
        w_attr=float(d["w_attr"]),
        options=dict(d["options"]),
        seed=int(d["seed"]),
    )


class AttributionPriorModelMixin:
    """Attribution priors on a scvi-tools model's latent encoder.

    Mixed in front of a scvi-tools model class by :func:`with_prior`. Adds the keyword
    arguments ``gt``, ``gt_per_label``, ``w_attr``, ``gene_key``, ``prior_seed`` and
    ``prior_options`` to the model's constructor (or set them later with
    :meth:`set_prior`), switches the encoder from BatchNorm to LayerNorm unless told
    otherwise (BatchNorm couples the cells of a minibatch), trains with the plan of
    :func:`attreg_sc.scvi_tools.attribution_prior_plan`, and saves/loads in a format that
    cannot run code. Everything else is the scvi-tools model.

    Parameters
    ----------
    adata, registry
        As for the scvi-tools model.
    gt, gt_per_label, w_attr, gene_key
        The prior, see :meth:`set_prior`.
    prior_seed
        Seed of the prior's draws.
    prior_options
        The prior's settings (:data:`PRIOR_OPTIONS`).
    **kwargs
        The scvi-tools model's arguments.
    """

    _prior_config: PriorConfig | None = None

    def __init__(
        self,
        adata=None,
        registry: dict | None = None,
        *,
        gt: Any = None,
        gt_per_label: Mapping[str, Any] | None = None,
        w_attr: float = 30.0,
        gene_key: str | None = None,
        prior_seed: int = 0,
        prior_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("use_batch_norm", "none")
        kwargs.setdefault("use_layer_norm", "both")
        if registry is not None:
            import inspect

            takes_registry = "registry" in inspect.signature(super().__init__).parameters
            if not takes_registry and adata is not None:
                registry = None  # the base class sets itself up from adata
            elif not takes_registry:
                raise TypeError(
                    f"{type(self).__name__} cannot be built from a registry alone; load it "
                    "with adata= (or save it with save_anndata=True)."
                )
        if registry is not None:
            kwargs["registry"] = registry
        super().__init__(adata, **kwargs)
        kwargs.pop("registry", None)
        # scvi-tools records the init parameters from the base's frame against this
        # class's signature, which drops the base's named parameters: record all of them
        self.init_params_ = {"kwargs": {"kwargs": dict(kwargs)}, "non_kwargs": {}}
        self._prior_config = None
        if gt is not None or gt_per_label is not None:
            self.set_prior(
                gt,
                gt_per_label=gt_per_label,
                w_attr=w_attr,
                gene_key=gene_key,
                seed=prior_seed,
                **dict(prior_options or {}),
            )

    # -- the prior ---------------------------------------------------------------------
    @property
    def prior_config(self) -> PriorConfig | None:
        """The prior the next :meth:`train` adds (``None``: none)."""
        return self._prior_config

    def set_prior(
        self,
        gt: Any = None,
        *,
        gt_per_label: Mapping[str, Any] | None = None,
        w_attr: float = 30.0,
        gene_key: str | None = None,
        seed: int = 0,
        **options: Any,
    ) -> None:
        """Set the attribution prior of the next :meth:`train` (``gt=None`` and
        ``gt_per_label=None``: remove it).

        Parameters
        ----------
        gt
            The GT, or a dict ``name -> GT`` (one prior each): gene names, a boolean
            ``adata.var`` column name or a boolean vector over the genes (one GT for every
            cell), or a per-group / per-cell GT of the model's cells
            (:func:`attreg_sc.gt.from_groups`, :func:`attreg_sc.gt.from_cell_matrix`,
            grouped MI markers; see :func:`attreg_sc.gt.as_ground_truths`). A per-cell GT
            makes :meth:`train` register each cell's position as ``obs``
            column ``_attreg_sc_cell_index`` (scvi-tools' ``ind_x`` field; like the
            ``_scvi_*`` columns, it is written into the AnnData). Encoder inputs after the
            genes (totalVI's proteins, continuous covariates) are outside every GT.
        gt_per_label
            ``{label: gene names}``: each cell's GT is the list of its label (the
            registered ``labels_key``); cells of other labels, e.g. scANVI's unlabelled
            cells, are left out of this prior.
        w_attr
            ``w_A``.
        gene_key
            ``var`` column with gene symbols used to match gene names.
        seed
            Seed of the prior's draws.
        **options
            The prior's settings, as in :class:`attreg_sc.SCARE`: ``attribution``
            (``"eg"``/``"ig"``), ``reducer`` (default ``"random_direction"``),
            ``reparameterizer``, ``loss``, ``aggregation``, ``n_samples``, ``n_steps``,
            ``n_directions``, ``latent_blocks``, ``w_exclusion``, ``gt_weights``.
        """
        from scvi import REGISTRY_KEYS

        from attreg_sc.model import _resolve_blocks

        if gt is None and gt_per_label is None:
            self._prior_config = None
            return
        if isinstance(w_attr, bool) or not np.isfinite(w_attr) or w_attr < 0:
            raise ValueError(f"w_attr must be a finite number >= 0, got {w_attr!r}.")
        unknown = set(options) - set(PRIOR_OPTIONS)
        if unknown:
            raise TypeError(f"unknown prior options {sorted(unknown)}; use {list(PRIOR_OPTIONS)}.")
        if options.get("reducer", "random_direction") not in REDUCERS:
            raise ValueError(f"unknown reducer {options['reducer']!r}; use one of {REDUCERS}.")
        if self.adata is None:
            raise ValueError("set_prior needs the model's AnnData to match genes.")
        adata = self.adata
        ground_truths = as_ground_truths(adata, gt, gene_key)
        if any(_is_per_cell(g) for g in ground_truths.values()) and adata.n_obs > MAX_INDEXED_CELLS:
            raise ValueError(
                f"per-cell GTs need each cell's position in the minibatch, which scvi-tools "
                f"passes as float32 (exact up to {MAX_INDEXED_CELLS:,} cells); this AnnData "
                f"has {adata.n_obs:,}. Use a GT vector or gt_per_label instead."
            )
        n_latent = int(self.module.n_latent)
        options = dict(options)
        options["latent_blocks"] = _resolve_blocks(
            options.get("latent_blocks"), ground_truths, n_latent
        )
        options["gt_weights"] = dict(options.get("gt_weights") or {})
        label_table = label_has_gt = None
        if gt_per_label is not None:
            mapping = self.adata_manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY)
            categories = [str(c) for c in mapping.categorical_mapping]
            unknown = sorted(set(map(str, gt_per_label)) - set(categories))
            if unknown:
                raise KeyError(
                    f"gt_per_label names labels {unknown} that are not registered labels "
                    f"{categories}; register labels_key= in setup_anndata."
                )
            label_table = np.zeros((len(categories), adata.n_vars), dtype=bool)
            label_has_gt = np.zeros(len(categories), dtype=bool)
            for label, genes in gt_per_label.items():
                code = categories.index(str(label))
                label_table[code] = from_genes(adata, genes, gene_key, name=f"GT of {label!r}")
                label_has_gt[code] = True
        # build once now, on a stand-in encoder: bad settings fail before training
        stand_in = torch.nn.Linear(adata.n_vars, n_latent)
        dry = dict(ground_truths)
        if label_table is not None:
            dry["per_label"] = object()
        build_prior_set(stand_in, dry, n_latent=n_latent, generator=torch.Generator(), **options)
        self._prior_config = PriorConfig(
            ground_truths=ground_truths,
            label_table=label_table,
            label_has_gt=label_has_gt,
            w_attr=float(w_attr),
            options=options,
            seed=int(seed),
        )

    def train(self, *args: Any, plan_kwargs: Mapping[str, Any] | None = None, **kwargs: Any):
        """scvi-tools' ``train``, with the prior of :meth:`set_prior` added to the loss."""
        cfg = self._prior_config
        if cfg is not None and any(_is_per_cell(g) for g in cfg.ground_truths.values()):
            self._register_cell_indices()
        plan_kwargs = dict(plan_kwargs or {})
        plan_kwargs.setdefault("prior", cfg)
        return super().train(*args, plan_kwargs=plan_kwargs, **kwargs)

    def _register_cell_indices(self) -> None:
        """Give every minibatch its cells' positions in ``self.adata`` (scvi-tools'
        ``ind_x`` field), which per-cell GT rows are looked up by."""
        from scvi import REGISTRY_KEYS
        from scvi.data.fields import NumericalObsField

        adata, manager = self.adata, self.adata_manager
        for name, g in self._prior_config.ground_truths.items():
            if _is_per_cell(g) and g.shape[0] != adata.n_obs:
                raise ValueError(
                    f"per-cell GT {name!r} has {g.shape[0]} rows; the model's AnnData has "
                    f"{adata.n_obs} cells. Build it from this AnnData and call set_prior again."
                )
        key = REGISTRY_KEYS.INDICES_KEY
        if key in manager.data_registry:
            field = manager.data_registry[key]
            column = adata.obs.get(field["attr_key"]) if field["attr_name"] == "obs" else None
            if column is None or not np.array_equal(np.asarray(column), np.arange(adata.n_obs)):
                raise ValueError(
                    f"the model registers cell indices as {field['attr_name']}"
                    f"[{field['attr_key']!r}], which do not count 0..n_cells-1; per-cell GTs "
                    "need them to."
                )
            return
        adata.obs[CELL_INDEX_COLUMN] = np.arange(adata.n_obs)
        manager.register_new_fields([NumericalObsField(key, CELL_INDEX_COLUMN)])

    def _validate_anndata(self, adata=None, copy_if_view: bool = True):
        """scvi-tools' check; an AnnData new to a model whose setup holds the cell-index
        column first gets that column (its cells' positions), as scvi-tools writes its
        ``_scvi_*`` columns into a new AnnData."""
        from scvi.data._utils import _check_if_view

        if adata is not None and self.get_anndata_manager(adata) is None:
            manager = self.adata_manager
            fields = manager.fields if manager is not None else []
            if any(getattr(f, "attr_key", None) == CELL_INDEX_COLUMN for f in fields):
                _check_if_view(adata, copy_if_view=copy_if_view)
                adata.obs[CELL_INDEX_COLUMN] = np.arange(adata.n_obs)
        return super()._validate_anndata(adata, copy_if_view=copy_if_view)

    # -- what attreg_sc's metrics, report and CLI read from a model -----------------------
    @property
    def w_attr(self) -> float:
        """``w_A`` of the prior (0 without one)."""
        return self._prior_config.w_attr if self._prior_config is not None else 0.0

    @property
    def prior_params(self) -> dict:
        """The prior's settings (``{}`` without one)."""
        return dict(self._prior_config.options) if self._prior_config is not None else {}

    @property
    def gene_key(self) -> None:
        """GT gene names are matched against ``var_names``."""
        return None

    @property
    def scare_history(self) -> dict[str, list[float]]:
        """The training history under :class:`attreg_sc.SCARE`'s names (``loss``,
        ``reconstruction``, ``kl``, ``attribution``, ``validation_loss``), for the plots
        and the report."""
        names = {
            "loss": "train_loss",
            "reconstruction": "reconstruction_loss_train",
            "kl": "kl_local_train",
            "attribution": "attribution_loss_train",
            "validation_loss": "validation_loss",
        }
        history = self.history if self.history is not None else {}
        return {
            ours: history[theirs].to_numpy(dtype=float).ravel().tolist()
            for ours, theirs in names.items()
            if theirs in history
        }

    def _data_for(self, adata=None) -> RegisteredCounts:
        """The counts and batches scvi-tools registered for ``adata``."""
        from scvi import REGISTRY_KEYS

        adata = self._validate_anndata(adata)
        manager = self.get_anndata_manager(adata, required=True)
        batch = np.asarray(manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)).ravel()
        categories = manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY).categorical_mapping
        return RegisteredCounts(
            manager.get_from_registry(REGISTRY_KEYS.X_KEY),
            batch.astype(np.int64),
            [str(c) for c in categories],
        )

    # -- explanations ------------------------------------------------------------------
    def _encoder_inputs(self, tensors: dict) -> tuple:
        """The latent encoder's inputs for a minibatch, as the model's inference builds them."""
        from attreg_sc.scvi_tools.plan import latent_encoder

        captured: list[tuple] = []
        hook = latent_encoder(self.module).register_forward_hook(
            lambda _m, args, _o: captured.append(tuple(args)) if not captured else None
        )
        try:
            with torch.no_grad():
                inputs = self.module._get_inference_input(tensors)
                self.module.inference(**inputs)
        finally:
            hook.remove()
        return captured[0]

    def get_attributions(
        self,
        adata=None,
        indices=None,
        method: str = "eg",
        reducer: str | int = "sum",
        n_samples: int = 8,
        n_steps: int = 20,
        batch_size: int = 256,
        seed: int = 0,
        genes_only: bool = True,
        progress_bar: bool = False,
    ) -> np.ndarray:
        """Post-hoc attributions of the latent encoder, ``(n_cells, n_genes)``.

        ``F`` of the latent posterior mean (``reducer``: ``"sum"``, ``"l2"``, ``"mean"`` or
        one latent dimension as an ``int``) attributed to the encoder's input (``log1p``
        counts, then any proteins or covariates the model concatenates).

        Parameters
        ----------
        adata, indices, batch_size
            Cells to explain, as in ``get_latent_representation``.
        method
            ``"eg"`` (references: ``n_samples`` other cells of the same chunk of
            ``batch_size`` cells) or ``"ig"`` (``n_steps`` from zeros).
        genes_only
            Return the gene columns only (drop proteins/covariates).
        progress_bar
            Show a tqdm bar over minibatches.
        seed
            Seed of the EG draws.
        """
        import attreg
        from attreg.reducers import Index, resolve_reducer
        from attreg_sc.scvi_tools.plan import latent_encoder, latent_mean

        encoder = latent_encoder(self.module)
        f = (
            Index(int(reducer))
            if isinstance(reducer, (int, np.integer))
            else resolve_reducer(reducer)
        )
        methods = {"eg": attreg.ExpectedGradients, "ig": attreg.IntegratedGradients}
        if method not in methods:
            raise ValueError(f"unknown method {method!r}; use 'eg' or 'ig'.")
        explain = methods[method](lambda x, *rest: latent_mean(encoder(x, *rest)), f)
        adata = self._validate_anndata(adata)
        loader = self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size)
        generator = torch.Generator().manual_seed(seed)
        self.module.eval()
        out = []
        from tqdm.auto import tqdm

        for tensors in tqdm(loader, desc="attributions", disable=not progress_bar):
            x, *rest = self._encoder_inputs(tensors)
            kwargs = (
                {"n_samples": n_samples, "generator": generator}
                if method == "eg"
                else {"n_steps": n_steps}
            )
            attr = explain.attribute(x, additional_forward_args=tuple(rest), **kwargs)
            out.append(attr.detach().cpu().numpy())
        attributions = np.concatenate(out)
        return attributions[:, : adata.n_vars] if genes_only else attributions

    # -- safe files --------------------------------------------------------------------
    def save(
        self,
        dir_path: str | os.PathLike,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        **_ignored: Any,
    ) -> None:
        """Save to ``dir_path`` (scvi-tools' layout, attreg_sc's safe file format; the
        folder is written as one unit). ``save_anndata=True`` adds ``adata.h5ad``."""
        save_model(
            self,
            dir_path,
            prefix=prefix,
            overwrite=overwrite,
            save_anndata=save_anndata,
            extra={"prior": _config_to_safe(self._prior_config)},
        )

    @classmethod
    def load(
        cls,
        dir_path: str | os.PathLike,
        adata=None,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
        **_ignored: Any,
    ):
        """Load a model saved by :meth:`save`; ``adata=None`` uses the saved AnnData if
        there is one. No code from the file is run (``torch.load(weights_only=True)``)."""
        model, extra = load_model(cls, dir_path, adata, accelerator, device, prefix)
        model._prior_config = _config_from_safe(extra.get("prior"))
        return model

    @staticmethod
    def _reference(reference_model):
        if isinstance(reference_model, (str, os.PathLike)):
            return _SavedReference(read_model_file(reference_model))
        return reference_model

    @classmethod
    def load_query_data(cls, adata=None, reference_model=None, *args: Any, **kwargs: Any):
        """scvi-tools' scArches query mapping; a reference given as a path is read with
        the safe loader. The reference's prior carries over to the query model."""
        reference = cls._reference(reference_model)
        model = super().load_query_data(adata, reference, *args, **kwargs)
        cfg = (
            _config_from_safe(reference.extra.get("prior"))
            if isinstance(reference, _SavedReference)
            else getattr(reference, "_prior_config", None)
        )
        if cfg is not None:  # the query's own copy: the reference's prior stays as it is
            cfg = _without_reference_cells(
                dataclasses.replace(
                    cfg,
                    ground_truths=dict(cfg.ground_truths),
                    options=copy.deepcopy(cfg.options),
                )
            )
        if cfg is not None and cfg.label_table is not None:
            from scvi import REGISTRY_KEYS

            n_codes = len(
                model.adata_manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY).categorical_mapping
            )
            extra_rows = n_codes - cfg.label_table.shape[0]
            if extra_rows > 0:  # labels new in the query have no GT
                cfg.label_table = np.vstack(
                    [cfg.label_table, np.zeros((extra_rows, cfg.label_table.shape[1]), bool)]
                )
                cfg.label_has_gt = np.concatenate([cfg.label_has_gt, np.zeros(extra_rows, bool)])
        model._prior_config = cfg
        return model

    @classmethod
    def prepare_query_anndata(cls, adata, reference_model, *args: Any, **kwargs: Any):
        """scvi-tools' ``prepare_query_anndata``; a path is read with the safe loader."""
        return super().prepare_query_anndata(
            adata, cls._reference(reference_model), *args, **kwargs
        )


def _without_reference_cells(cfg: PriorConfig) -> PriorConfig | None:
    """The reference's prior for a query model: per-cell GTs name the reference's cells,
    so they are dropped (with a warning); ``None`` when nothing is left."""
    dropped = [k for k, g in cfg.ground_truths.items() if _is_per_cell(g)]
    if not dropped:
        return cfg
    logger.warning(
        "the reference's per-cell GTs %s describe the reference's cells, not the query's: "
        "the query model trains without them (set_prior with a GT of the query's cells).",
        dropped,
    )
    cfg.ground_truths = {k: g for k, g in cfg.ground_truths.items() if k not in dropped}
    for key in ("latent_blocks", "gt_weights"):
        cfg.options[key] = {k: v for k, v in cfg.options.get(key, {}).items() if k not in dropped}
    return cfg if cfg.active else None


@cache
def with_prior(model_cls: type) -> type:
    """A scvi-tools model class with attribution priors on its latent encoder.

    The returned class is ``model_cls`` with :class:`AttributionPriorModelMixin` in
    front and its training plan wrapped by
    :func:`~attreg_sc.scvi_tools.attribution_prior_plan`; its name is the original's
    with ``WithPrior`` appended. Works for SCVI, SCANVI and TOTALVI (tested) and any
    scvi-tools model whose training plan calls the module's forward and whose inference
    calls a latent encoder named ``z_encoder`` or ``encoder`` first.

    Parameters
    ----------
    model_cls
        A scvi-tools model class, e.g. ``scvi.model.SCANVI``.

    Returns
    -------
    The new model class (the same class for the same ``model_cls``).

    Examples
    --------
    >>> import scvi
    >>> import attreg_sc as asc
    >>> from attreg_sc.scvi_tools import with_prior
    >>> adata = asc.datasets.synthetic(n_cells=120, n_genes=30, n_gt_genes=6, seed=0)
    >>> SCVIWithPrior = with_prior(scvi.model.SCVI)
    >>> SCVIWithPrior.setup_anndata(adata, batch_key="batch")
    >>> model = SCVIWithPrior(adata, gt="is_gt", w_attr=10.0, n_latent=4)
    >>> model.train(max_epochs=1, enable_progress_bar=False)
    >>> model.get_latent_representation().shape
    (120, 4)
    """
    if not hasattr(model_cls, "_training_plan_cls"):
        raise TypeError(f"{model_cls!r} is not a scvi-tools model class with a training plan.")
    return type(
        f"{model_cls.__name__}WithPrior",
        (AttributionPriorModelMixin, model_cls),
        {
            "__module__": __name__,
            "__doc__": f"{model_cls.__name__} with attribution priors "
            "(see :class:`attreg_sc.scvi_tools.AttributionPriorModelMixin`).",
            "_training_plan_cls": attribution_prior_plan(model_cls._training_plan_cls),
        },
    )
