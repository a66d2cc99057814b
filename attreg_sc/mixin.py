"""Attribution priors on any scvi-tools model: :class:`AttributionPriorModelMixin` and
:func:`with_prior`.

The mixin goes in front of a scvi-tools model class (:class:`attreg_sc.SCARE` is
``AttributionPriorModelMixin`` over :class:`scvi.model.SCVI`; :func:`with_prior` builds the
same for SCANVI, TOTALVI, ...). It adds the prior to the constructor and to ``train``
(through the training plan of :func:`attreg_sc.train.attribution_prior_plan` and the
Lightning callbacks of :mod:`attreg_sc.train.callbacks`), checks every AnnData before
scvi-tools reads it (:func:`attreg_sc.validation.check_anndata`), and saves and loads in
a format that cannot run code (:mod:`attreg_sc.files`). Everything else is the scvi-tools
model.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import inspect
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import torch

from attreg_sc.files import (
    ModelFileError,
    SavedModel,
    load_model,
    packed_ground_truth,
    read_model_file,
    save_model,
    unpacked_ground_truth,
)
from attreg_sc.gt import CellGroundTruth, GroupedGroundTruth, as_ground_truths, from_genes
from attreg_sc.priors import build_prior_set
from attreg_sc.settings import DIRECTION_REDUCERS, REFERENCES, PriorSettings
from attreg_sc.train.plan import (
    PriorConfig,
    attribution_prior_plan,
    label_reference_groups,
    latent_encoder,
    latent_mean,
)
from attreg_sc.validation import check_anndata

logger = logging.getLogger(__name__)

__all__ = ["AttributionPriorModelMixin", "with_prior", "RegisteredCounts", "RENAMED_ARGUMENTS"]

#: ``obs`` column holding each cell's position, registered when a prior has per-cell GTs
CELL_INDEX_COLUMN = "_attreg_sc_cell_index"
#: numerical ``obs`` fields reach the plan as float32: exact integers up to 2**24
MAX_INDEXED_CELLS = 2**24
#: arguments of attreg_sc's earlier hand-written SCARE, and what to use now
RENAMED_ARGUMENTS = {
    "__init__": {
        "dropout": "dropout_rate=",
        "likelihood": "gene_likelihood=",
        "use_observed_library": "use_observed_lib_size=",
        "w_divergence": "plan_kwargs={'max_kl_weight': ...} in train()",
        "allow_non_integer": "setup_anndata(..., allow_non_integer=True)",
        "accelerator": "train(accelerator=...)",
    },
    "train": {
        "lr": "plan_kwargs={'lr': ...}",
        "weight_decay": "plan_kwargs={'weight_decay': ...}",
        "kl_warmup_epochs": "plan_kwargs={'n_epochs_kl_warmup': ...}",
        "validation_fraction": "train_size= (1 - the fraction)",
        "patience": "early_stopping_patience=",
        "grad_clip": "gradient_clip_val=",
        "progress_bar": "enable_progress_bar=",
        "resume": "ckpt_path= (the checkpoint file to resume from)",
    },
}
#: ``train`` arguments a resumed run may change
_RESUMABLE = ("max_epochs", "ckpt_path", "enable_progress_bar", "checkpoint_path",
              "checkpoint_every", "threads", "retain_freed_memory", "accelerator", "devices")


@dataclass
class RegisteredCounts:
    """The counts and batches a model registered for an AnnData (what the metrics and the
    report read)."""

    matrix: Any
    batch_codes: np.ndarray
    batch_categories: list[str]


def _is_per_cell(g: Any) -> bool:
    return isinstance(g, (GroupedGroundTruth, CellGroundTruth))


def _renamed(names, where: str, method: str) -> None:
    table = RENAMED_ARGUMENTS[method]
    for name in names:
        if name in table:
            raise TypeError(f"{where} has no {name}=; use {table[name]}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, bool
    )


#: the model arguments checked before anything is built: ``(test, what it must be)``
_MODEL_CHECKS = {
    "n_hidden": (lambda v: _is_int(v) and 1 <= v <= 65_536, "an integer in 1..65536"),
    "n_latent": (lambda v: _is_int(v) and 1 <= v <= 4_096, "an integer in 1..4096"),
    "n_layers": (lambda v: _is_int(v) and 1 <= v <= 64, "an integer in 1..64"),
    "dropout_rate": (lambda v: _is_real(v) and 0 <= v < 1, "a number in [0, 1)"),
}
#: the train arguments checked before any epoch (``None`` passes: scvi-tools' default)
_TRAIN_CHECKS = {
    "max_epochs": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "batch_size": (lambda v: _is_int(v) and v >= 2,
                   "an integer >= 2 (EG draws references from the same minibatch)"),
    "train_size": (lambda v: _is_real(v) and 0 < v <= 1, "a number in (0, 1]"),
    "validation_size": (lambda v: _is_real(v) and 0 <= v < 1, "a number in [0, 1)"),
    "gradient_clip_val": (lambda v: _is_real(v) and math.isfinite(v) and v > 0,
                          "a finite number > 0"),
    "early_stopping_patience": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "check_val_every_n_epoch": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
}
_PLAN_CHECKS = {
    "lr": (lambda v: _is_real(v) and math.isfinite(v) and v >= 0, "a finite number >= 0"),
    "weight_decay": (lambda v: _is_real(v) and math.isfinite(v) and v >= 0,
                     "a finite number >= 0"),
    "n_epochs_kl_warmup": (lambda v: _is_real(v) and math.isfinite(v) and v >= 0,
                           "a number of epochs >= 0"),
    "max_kl_weight": (lambda v: _is_real(v) and math.isfinite(v) and v >= 0,
                      "a finite number >= 0"),
}


def _check(values: Mapping[str, Any], checks: dict, where: str) -> None:
    for name, (ok, what) in checks.items():
        value = values.get(name)
        if value is not None and not ok(value):
            raise ValueError(f"{where}{name} must be {what}, got {value!r}.")


def _digest(*parts: Any) -> str:
    """sha256 of strings, bytes and arrays (their dtype, shape and bytes), in order."""
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


class _SavedReference:
    """What scvi-tools' ``load_query_data`` / ``prepare_query_anndata`` read from a
    reference model, from a checked file instead of an unpickled one."""

    def __init__(self, saved: SavedModel) -> None:
        self._attrs = {**saved.attr_dict, "registry_": saved.registry}
        self._var_names = np.asarray(saved.var_names, dtype=object)
        self.module = torch.nn.Module()
        state = dict(saved.state_dict)
        self.module.state_dict = lambda: state  # noqa: E731 - read-only view
        self.saved = saved

    def _get_user_attributes(self):
        return list(self._attrs.items())

    def get_var_names(self, **_):
        return self._var_names


class AttributionPriorModelMixin:
    """Attribution priors on a scvi-tools model's latent encoder.

    Adds the keyword arguments ``gt``, ``gt_per_label``, ``gene_key``, ``prior`` and every
    field of :class:`~attreg_sc.settings.PriorSettings` (``w_attr``, ``reducer``,
    ``attribution``, ...) to the model's constructor (or set them later with
    :meth:`set_prior`); switches the encoder from BatchNorm to LayerNorm unless told
    otherwise (BatchNorm couples the cells of a minibatch); checks every AnnData before
    scvi-tools reads it; trains with the prior and scARE's callbacks; and saves/loads in
    a format that cannot run code.

    Parameters
    ----------
    adata, registry
        As for the scvi-tools model.
    gt, gt_per_label, gene_key
        The prior's GTs, see :meth:`set_prior`.
    prior
        A :class:`~attreg_sc.settings.PriorSettings` (or a dict of its fields); single
        fields may also be given as keywords (``w_attr=10``).
    **kwargs
        The scvi-tools model's arguments, and prior settings by name.
    """

    _prior_config: PriorConfig | None = None
    _prior_defaults: PriorSettings = PriorSettings()
    _gene_key: str | None = None

    def __init__(
        self,
        adata=None,
        registry: dict | None = None,
        *args: Any,
        gt: Any = None,
        gt_per_label: Mapping[str, Any] | None = None,
        gene_key: str | None = None,
        prior: PriorSettings | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        from attreg_sc._compat import chunked_library_size, named_like_scvi

        _renamed(kwargs, type(self).__name__, "__init__")
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in PriorSettings.names()}
        if prior is None:
            settings = PriorSettings()
        elif isinstance(prior, PriorSettings):
            settings = prior
        else:
            settings = PriorSettings.from_dict(prior, source="prior=")
        settings = settings.replace(**options)  # every setting checked now
        if args:  # scvi-tools' positional model arguments, by the base's names
            names = [
                p.name
                for p in inspect.signature(super().__init__).parameters.values()
                if p.kind == p.POSITIONAL_OR_KEYWORD and p.name not in ("adata", "registry")
            ]
            if len(args) > len(names):
                raise TypeError(f"{type(self).__name__} takes at most {len(names) + 2} "
                                f"positional arguments ({len(args) + 2} given).")
            for name, value in zip(names, args, strict=False):
                if name in kwargs:
                    raise TypeError(f"{name} given by position and by keyword.")
                kwargs[name] = value
        kwargs.setdefault("use_batch_norm", "none")
        kwargs.setdefault("use_layer_norm", "both")
        _check(kwargs, _MODEL_CHECKS, "")
        takes_registry = "registry" in inspect.signature(super().__init__).parameters
        if registry is not None and not takes_registry:
            if adata is None:
                raise TypeError(
                    f"{type(self).__name__} cannot be built from a registry alone; load it "
                    "with adata= (or save it with save_anndata=True)."
                )
            registry = None  # the base class sets itself up from adata
        base_kwargs = dict(kwargs)
        if registry is not None:
            base_kwargs["registry"] = registry
        if adata is None and registry is None:
            with named_like_scvi(self):  # scvi-tools allows this for SCVI by name
                super().__init__(None, **base_kwargs)
            self._adata, self._adata_manager = None, None  # scvi-tools leaves them unset
        else:
            with chunked_library_size():  # bounded memory on backed data
                super().__init__(adata, **base_kwargs)
        # scvi-tools records the init parameters from the base's frame against this
        # class's signature, which drops the base's named parameters: record all of them
        self.init_params_ = {"kwargs": {"kwargs": dict(kwargs)}, "non_kwargs": {}}
        self._prior_config = None
        self._prior_defaults = settings
        self._gene_key = gene_key
        if gt is not None or gt_per_label is not None or settings.w_sparsity > 0:
            self.set_prior(gt, gt_per_label=gt_per_label, gene_key=gene_key)

    def __repr__(self) -> str:
        """The model's summary (scvi-tools prints it from ``__repr__``; this returns it)."""
        return self.summary_string

    # -- setting up data -----------------------------------------------------------------
    @classmethod
    def _checked_setup(cls, base_setup, adata, *args, allow_non_integer: bool = False,
                       **kwargs):
        """``base_setup`` (a scvi-tools ``setup_anndata``) after every check of
        :func:`attreg_sc.validation.check_anndata`, before scvi-tools reads the counts."""
        from attreg_sc._compat import SETUP_ARGS_KEY

        if not isinstance(allow_non_integer, bool):
            raise TypeError(f"allow_non_integer must be True or False, got "
                            f"{allow_non_integer!r}.")
        bound = inspect.signature(base_setup).bind_partial(adata, *args, **kwargs).arguments
        missing_ok = kwargs.get("allow_missing_labels", False)  # scvi-tools' query setup
        obs_keys = [None if missing_ok else bound.get("labels_key")]
        for key in ("categorical_covariate_keys", "continuous_covariate_keys"):
            obs_keys += list(bound.get(key) or [])
        check_anndata(
            adata,
            layer=bound.get("layer"),
            batch_key=bound.get("batch_key"),
            allow_non_integer=allow_non_integer,
            obs_keys=tuple(k for k in obs_keys if k is not None),
        )
        base_setup(adata, *args, **kwargs)
        if allow_non_integer:
            manager = cls._get_most_recent_anndata_manager(adata, required=True)
            manager.registry[SETUP_ARGS_KEY]["allow_non_integer"] = True

    def _validate_anndata(self, adata=None, copy_if_view: bool = True):
        """scvi-tools' check of an AnnData the model is given; a new one first passes
        :func:`~attreg_sc.validation.check_anndata` with the model's setup, and gets the
        cell-index column if the model's per-cell GTs registered one."""
        from attreg_sc._compat import SETUP_ARGS_KEY, check_if_view

        if adata is not None and self.get_anndata_manager(adata) is None:
            args = dict(self.registry_.get(SETUP_ARGS_KEY) or {}) if self.registry_ else {}
            labels = args.get("labels_key")  # optional in a new AnnData (scvi-tools' rule)
            obs_keys = [labels if labels in adata.obs else None]
            for key in ("categorical_covariate_keys", "continuous_covariate_keys"):
                obs_keys += list(args.get(key) or [])
            check_anndata(
                adata,
                layer=args.get("layer"),
                batch_key=args.get("batch_key"),
                allow_non_integer=bool(args.get("allow_non_integer", False)),
                obs_keys=tuple(k for k in obs_keys if k is not None),
            )
            manager = self.adata_manager
            fields = manager.fields if manager is not None else []
            if any(getattr(f, "attr_key", None) == CELL_INDEX_COLUMN for f in fields):
                check_if_view(adata, copy_if_view=copy_if_view)
                adata.obs[CELL_INDEX_COLUMN] = np.arange(adata.n_obs)
        return super()._validate_anndata(adata, copy_if_view=copy_if_view)

    # -- the prior ---------------------------------------------------------------------
    @property
    def prior_config(self) -> PriorConfig | None:
        """The prior the next :meth:`train` adds (``None``: none)."""
        return self._prior_config

    @property
    def prior_settings(self) -> PriorSettings | None:
        """The prior's settings, or ``None`` for a model without a prior (a plain VAE)."""
        return None if self._prior_config is None else self._prior_config.settings

    @property
    def gene_key(self) -> str | None:
        """The ``var`` column GT gene names are matched against (``None``: var_names)."""
        return self._gene_key

    def set_prior(
        self,
        gt: Any = None,
        *,
        gt_per_label: Mapping[str, Any] | None = None,
        gene_key: str | None = None,
        settings: PriorSettings | None = None,
        **options: Any,
    ) -> None:
        """Set the attribution prior of the next :meth:`train` (``gt=None`` and
        ``gt_per_label=None``: remove it, unless ``w_sparsity > 0``, the prior that needs no
        GT). Everything is checked now, before training.

        Parameters
        ----------
        gt
            The GT, or a dict ``name -> GT`` (one prior each): gene names, a boolean
            ``adata.var`` column name or a boolean vector over the genes (one GT for every
            cell), or a per-group / per-cell GT of the model's cells
            (:func:`attreg_sc.gt.from_groups`, :func:`attreg_sc.gt.from_cell_matrix`,
            grouped MI markers; see :func:`attreg_sc.gt.as_ground_truths`). A per-cell GT
            makes :meth:`train` register each cell's position as ``obs`` column
            ``_attreg_sc_cell_index`` (scvi-tools' ``ind_x`` field). Encoder inputs after
            the genes (totalVI's proteins, continuous covariates) are outside every GT.
        gt_per_label
            ``{label: gene names}``: each cell's GT is the list of its label (the
            registered ``labels_key``); cells of other labels, e.g. scANVI's unlabelled
            cells, are left out of this prior.
        gene_key
            ``var`` column with gene symbols used to match gene names.
        settings
            The prior's settings (default: the constructor's).
        **options
            Single settings to change (fields of
            :class:`~attreg_sc.settings.PriorSettings`, e.g. ``w_attr=10``).
        """
        from scvi import REGISTRY_KEYS

        settings = (settings or self._prior_defaults).replace(**options)
        if gt is None and gt_per_label is None and settings.w_sparsity == 0:
            self._prior_defaults = settings
            self._prior_config = None
            return
        if self.adata is None:
            raise ValueError("set_prior needs the model's AnnData to match genes; build the "
                             "model with adata=.")
        adata = self.adata
        gene_key = self._gene_key if gene_key is None else gene_key
        ground_truths = as_ground_truths(adata, gt, gene_key)
        if any(_is_per_cell(g) for g in ground_truths.values()) and adata.n_obs > MAX_INDEXED_CELLS:
            raise ValueError(
                f"per-cell GTs need each cell's position in the minibatch, which scvi-tools "
                f"passes as float32 (exact up to {MAX_INDEXED_CELLS:,} cells); this AnnData "
                f"has {adata.n_obs:,}. Use a GT vector or gt_per_label instead."
            )
        n_latent = int(self.module.n_latent)
        blocks = settings.resolve_blocks(list(ground_truths), n_latent)
        label_table = label_has_gt = None
        if gt_per_label is not None:
            if REGISTRY_KEYS.LABELS_KEY not in self.adata_manager.data_registry:
                raise KeyError("gt_per_label needs labels: register labels_key= in "
                               "setup_anndata.")
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
        if settings.references == "label":
            self._check_reference_labels()
        if settings.target == "model":
            target_of = getattr(self.module, "attribution_target", None)
            if target_of is None:
                raise ValueError(f"target='model' needs attreg_sc.SCARE; "
                                 f"{type(self).__name__} explains its encoder only.")
            target_of("model")  # refuses architectures it cannot explain, now
        # build once now, on a stand-in encoder: bad settings fail before training
        stand_in = torch.nn.Linear(adata.n_vars, n_latent)
        dry = dict(ground_truths)
        if label_table is not None:
            dry["per_label"] = object()
        build_prior_set(stand_in, dry, n_latent=n_latent, generator=torch.Generator(),
                        settings=settings, latent_blocks=blocks)
        self._prior_config = PriorConfig(
            ground_truths=ground_truths,
            settings=settings,
            blocks=blocks,
            label_table=label_table,
            label_has_gt=label_has_gt,
        )
        self._prior_defaults, self._gene_key = settings, gene_key
        vectors = {k: g for k, g in ground_truths.items() if isinstance(g, np.ndarray)}
        if vectors and settings.w_attr > 0:  # warned now, before training
            self.gt_diagnostics_ = self.diagnose_ground_truths(vectors)

    def _check_reference_labels(self) -> None:
        """``references="label"`` needs labels registered by ``setup_anndata``, and more
        than one of them besides an unlabelled category (with one label it is
        ``"batch"`` under another name)."""
        from scvi import REGISTRY_KEYS

        fix = "register the cell types with SCARE.setup_anndata(adata, labels_key=...)"
        if REGISTRY_KEYS.LABELS_KEY not in self.adata_manager.data_registry:
            raise ValueError(f"references='label' draws EG references within labels: {fix}.")
        state = self.adata_manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY)
        n_labels = len(state.categorical_mapping) - (self._unlabeled_code() is not None)
        if state.original_key == "_scvi_labels" or n_labels < 2:
            raise ValueError(
                f"references='label' draws EG references within labels, but the AnnData "
                f"has {n_labels} registered label(s) besides an unlabelled category: {fix}."
            )

    def _warn_lone_labels(self, batch_size: int, unlabeled: int | None) -> None:
        """``references="label"``: warn, before training, about labels whose cells are
        alone in their label in most minibatches of ``batch_size`` random cells (they
        then draw references among all cells, as ``references="batch"`` does)."""
        from scvi import REGISTRY_KEYS

        codes = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY))
        state = self.adata_manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY)
        names = [str(c) for c in state.categorical_mapping]
        counts = np.bincount(codes.astype(np.int64).ravel(), minlength=len(names)).astype(float)
        if unlabeled is not None:
            counts[unlabeled] = 0.0
        total = counts.sum()
        if total < 2:
            return
        # chance that none of the minibatch's other cells shares a cell's label
        alone = (1.0 - np.clip(counts - 1.0, 0.0, None) / (total - 1.0)) ** (batch_size - 1)
        lone = [c for c in np.argsort(counts) if counts[c] > 0 and alone[c] > 0.5]
        if not lone:
            return
        listed = ", ".join(f"{names[c]} ({int(counts[c])} cells)" for c in lone[:8])
        more = f" and {len(lone) - 8} more" if len(lone) > 8 else ""
        logger.warning(
            "references='label': with minibatches of %d cells, the cells of %d label(s) "
            "(%s%s; %.1f%% of the labelled cells) are alone in their label in most "
            "minibatches, and then draw EG references among all cells, as "
            "references='batch' does. Raise batch_size or merge rare labels where the prior "
            "should act within them.",
            batch_size, len(lone), listed, more, 100.0 * counts[lone].sum() / total,
        )

    def _unlabeled_code(self) -> int | None:
        """The code of the registered unlabelled category (scvi-tools'
        ``unlabeled_category``, as SCANVI registers it), or ``None``."""
        from scvi import REGISTRY_KEYS

        if REGISTRY_KEYS.LABELS_KEY not in self.adata_manager.data_registry:
            return None
        state = self.adata_manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY)
        category = dict(state).get("unlabeled_category")
        mapping = [str(c) for c in state.categorical_mapping]
        if category is None or str(category) not in mapping:
            return None
        return mapping.index(str(category))

    def diagnose_ground_truths(self, ground_truths: Mapping[str, Any]):
        """Per GT: genes in the data, expressed and variable, and a verdict; a set too
        small or too flat to steer anything gets a warning with its numbers
        (:func:`attreg_sc.gt_diagnostics.diagnose`). Run by :meth:`set_prior` for the GT
        vectors (the result is ``model.gt_diagnostics_``); the per-gene statistics are
        read once per model, in chunks of cells.

        Parameters
        ----------
        ground_truths
            ``{name: GT}`` as :meth:`set_prior` takes them (vectors over the genes).
        """
        from scvi import REGISTRY_KEYS

        from attreg_sc.gt_diagnostics import diagnose, gene_statistics

        gts = as_ground_truths(self.adata, dict(ground_truths), self._gene_key)
        gts = {k: g for k, g in gts.items() if isinstance(g, np.ndarray)}
        cached = self.__dict__.get("_gene_statistics")
        if cached is not None and cached[0] is self.adata:
            stats = cached[1]
        else:
            counts = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
            stats = gene_statistics(counts)
            self.__dict__["_gene_statistics"] = (self.adata, stats)
        return diagnose(self.adata, gts, statistics=stats)

    # -- training ----------------------------------------------------------------------
    def train(
        self,
        *args: Any,
        threads: int | str | None = "auto",
        prior_warmup_epochs: int = 0,
        checkpoint_path: str | os.PathLike | None = None,
        checkpoint_every: int = 1,
        retain_freed_memory: bool = True,
        **kwargs: Any,
    ):
        """scvi-tools' ``train``, with the prior of :meth:`set_prior` added to the loss and
        scARE's callbacks (:mod:`attreg_sc.train.callbacks`).

        Parameters
        ----------
        *args, **kwargs
            The scvi-tools model's ``train`` arguments (``max_epochs``, ``train_size``,
            ``batch_size``, ``early_stopping``, ``plan_kwargs``, ``accelerator``,
            ``devices``, ``strategy``, ``ckpt_path`` to resume, Lightning's trainer
            arguments). With ``early_stopping=True`` the best epoch's weights are kept.
        threads
            CPU threads while training, restored afterwards: ``"auto"`` (default; the cores
            other processes leave free, re-measured every epoch), an int, or ``None``
            (torch's current setting).
        prior_warmup_epochs
            Epochs of plain training before the prior is switched on.
        checkpoint_path, checkpoint_every
            Write a checkpoint to this file every ``checkpoint_every`` epochs (atomically,
            in a format that cannot run code); ``train(ckpt_path=that file)`` resumes an
            interrupted run exactly, and is refused if the data, a GT or a setting differs.
        retain_freed_memory
            On the CPU, call :func:`attreg.retain_freed_cpu_memory` first (glibc keeps
            freed blocks for reuse; process-wide).

        Notes
        -----
        On a backed AnnData with uncompressed CSR counts, the rows are read without HDF5's
        chunk cache while training (anndata's handle is closed and reopened afterwards:
        objects taken from ``adata.X`` before must be taken again); see
        :func:`attreg_sc._compat.backed_rows_without_chunk_cache`.
        """
        from attreg_sc.train.callbacks import (
            BestWeightsEarlyStopping,
            EpochCheckpoint,
            NonFiniteLoss,
            NonFiniteLossError,
            PriorWarmup,
            ResumeGuard,
            SafeCheckpointIO,
            ThreadPolicyCallback,
        )

        for name, value, low in (("checkpoint_every", checkpoint_every, 1),
                                 ("prior_warmup_epochs", prior_warmup_epochs, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
        base = super().train
        signature = inspect.signature(base)
        var_kw = next((p.name for p in signature.parameters.values()
                       if p.kind == p.VAR_KEYWORD), None)
        _renamed(kwargs, f"{type(self).__name__}.train", "train")
        bound = signature.bind_partial(*args, **kwargs).arguments
        call = {k: v for k, v in bound.items() if k != var_kw}
        call.update(bound.get(var_kw, {}) if var_kw else {})
        _check(call, _TRAIN_CHECKS, "")
        _check(call.get("plan_kwargs") or {}, _PLAN_CHECKS, "plan_kwargs: ")
        if (call.get("plan_kwargs") or {}).get("lr") == 0:
            logger.warning("plan_kwargs={'lr': 0}: the weights will not change (nothing trains).")
        cfg = self._prior_config
        if cfg is not None and any(_is_per_cell(g) for g in cfg.ground_truths.values()):
            self._register_cell_indices()
        resuming = call.get("ckpt_path") is not None
        fingerprint = self._fingerprint(call) if checkpoint_path or resuming else None
        if call.get("datamodule") is None:
            # the loaders' base seed (for workers) from their own stream, not torch's global
            # one: the data order then depends only on the random state a checkpoint holds
            splitter = dict(call.get("datasplitter_kwargs") or {})
            splitter.setdefault("generator", torch.Generator().manual_seed(0))
            call["datasplitter_kwargs"] = splitter
        if cfg is not None and cfg.settings.references == "label":
            cfg = dataclasses.replace(cfg, unlabeled_code=self._unlabeled_code())
            size = signature.parameters.get("batch_size")  # 128: scvi-tools' usual default
            default = 128 if size is None or size.default is size.empty else size.default
            batch_size = call.get("batch_size", default)
            self._warn_lone_labels(int(batch_size), cfg.unlabeled_code)
        plan_kwargs = dict(call.get("plan_kwargs") or {})
        plan_kwargs.setdefault("prior", cfg)
        call["plan_kwargs"] = plan_kwargs
        callbacks = list(call.pop("callbacks", None) or [])
        callbacks += [ThreadPolicyCallback(threads), NonFiniteLoss()]
        if prior_warmup_epochs:
            callbacks.append(PriorWarmup(prior_warmup_epochs))
        self._early_stopping(call, callbacks, BestWeightsEarlyStopping)
        if fingerprint is not None:
            guard = ResumeGuard(fingerprint, call.get("max_epochs"))
            callbacks.append(guard)
            plugins = list(call.pop("plugins", None) or [])
            call["plugins"] = [*plugins, SafeCheckpointIO(guard)]
        if checkpoint_path is not None:
            callbacks.append(EpochCheckpoint(checkpoint_path, checkpoint_every))
        call["callbacks"] = callbacks
        if retain_freed_memory and not torch.cuda.is_available():
            import attreg

            attreg.retain_freed_cpu_memory()
        from attreg.fast_paths import fast_paths_enabled
        from attreg_sc._compat import backed_rows_without_chunk_cache

        uncached = (self.adata is not None and call.get("datamodule") is None
                    and fast_paths_enabled())
        try:
            with (backed_rows_without_chunk_cache(self.adata) if uncached
                  else contextlib.nullcontext()):
                return base(**call)
        except NonFiniteLossError:
            self.module.eval()
            raise

    def _early_stopping(self, call: dict, callbacks: list, callback_cls) -> None:
        """scvi-tools' early stopping replaced by :class:`BestWeightsEarlyStopping` (the
        best weights kept, a log line instead of a print); ``early_stopping=None``: on when
        there is a validation set (scARE's default)."""
        wanted = call.get("early_stopping")
        train_size = call.get("train_size")
        validation_size = call.get("validation_size")
        has_validation = call.get("datamodule") is not None or not (
            (train_size is not None and train_size >= 1.0 and not validation_size)
            or validation_size == 0
        )
        options = {
            "monitor": call.pop("early_stopping_monitor", "validation_loss"),
            "patience": call.pop("early_stopping_patience", 45),
            "min_delta": call.pop("early_stopping_min_delta", 0.0),
            "mode": call.pop("early_stopping_mode", "min"),
        }
        start = call.pop("early_stopping_warmup_epochs", 0)
        call["early_stopping"] = False
        if not has_validation and call.get("check_val_every_n_epoch") is not None:
            call["check_val_every_n_epoch"] = None  # nothing to validate on
        if wanted is None:  # scARE's default: on where a validation set is known to exist
            wanted = has_validation and call.get("datamodule") is None
        if not wanted:
            return
        if not has_validation:
            raise ValueError(
                "early_stopping=True watches the validation loss, but train_size/"
                "validation_size leave no validation cells; lower train_size or turn "
                "early_stopping off."
            )
        from attreg_sc._compat import uses_distributed_sampler

        if uses_distributed_sampler(call.get("strategy")):
            logger.warning("early stopping is off with DDP (scvi-tools' rule): each process "
                           "would judge its own validation cells.")
            return
        callbacks.append(callback_cls(start_epoch=start, **options))
        if call.get("check_val_every_n_epoch") is None:
            call["check_val_every_n_epoch"] = 1

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

    def _fingerprint(self, train_args: Mapping[str, Any]) -> dict[str, str]:
        """What a resumed run must share with the interrupted one: the model's and the
        prior's settings, the training arguments (but those in ``_RESUMABLE``), scvi-tools'
        seed, and digests of the data (genes, counts per cell, batches) and of each GT."""
        import scvi

        out = {f"model.{k}": repr(v) for k, v in sorted(self.init_params_["kwargs"]
                                                         ["kwargs"].items())}
        for k, v in sorted(train_args.items()):
            if k in _RESUMABLE or k in ("callbacks", "plugins"):
                continue
            if k == "plan_kwargs":
                v = {pk: pv for pk, pv in v.items() if pk != "prior"}
            out[f"train.{k}"] = repr(v)
        out["scvi.seed"] = repr(scvi.settings.seed)
        cfg = self._prior_config
        if cfg is not None:
            out.update({f"prior.{k}": repr(v) for k, v in cfg.settings.to_dict().items()})
            parts = []
            for name, g in cfg.ground_truths.items():
                parts += [name, *(v for v in packed_ground_truth(g).values()
                                  if isinstance(v, np.ndarray))]
            if cfg.label_table is not None:
                parts += ["per_label", cfg.label_table, cfg.label_has_gt]
            out["prior.ground_truths"] = _digest(*parts)
        if self.adata is not None:
            from attreg_sc.validation import row_totals

            data = self._data_for(self.adata)
            out["data.genes"] = _digest("\n".join(map(str, self.adata.var_names)))
            out["data.cells"] = repr(self.adata.n_obs)
            out["data.counts_per_cell"] = _digest(
                np.asarray(row_totals(data.matrix), dtype=np.float64))
            out["data.batches"] = _digest(data.batch_codes, "\n".join(data.batch_categories))
        return out

    # -- what attreg_sc's metrics, report and CLI read from a model -----------------------
    @property
    def loss_history(self) -> dict[str, list[float]]:
        """The training history per loss term (``loss``, ``reconstruction``, ``kl``,
        ``attribution``, ``validation_loss``), for the plots and the report."""
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

    def prior_summary(self, n_samples: int = 4, seed: int = 0) -> pd.DataFrame:
        """What the prior reached, after training: one row per (GT, latent dimension).

        ``gt_share``: the mean over cells of the GT's share of the dimension's absolute EG
        attribution (post hoc, :func:`attreg_sc.metrics.dimension_shares`); ``var``: the
        dimension's variance (a collapsed dimension has ~0); ``in_block``: the dimension is
        in the GT's latent block (all dimensions when the GT has none); ``training_share``
        and ``weight``: the prior's own share and multiplier at the last epoch (with
        ``target_share``; NaN otherwise); ``genes``, ``expressed``, ``variable``,
        ``verdict``: the diagnostics read before training (``gt_diagnostics_``).
        Per-cell GT matrices are left out (their share is per cell).

        Parameters
        ----------
        n_samples, seed
            EG references per cell and their seed.

        Examples
        --------
        >>> import attreg_sc as asc
        >>> adata = asc.datasets.synthetic(n_cells=100, n_genes=30, n_gt_genes=5, seed=0)
        >>> asc.SCARE.setup_anndata(adata)
        >>> m = asc.SCARE(adata, n_latent=2, gt="is_gt", target_share=0.9)
        >>> m.train(max_epochs=2, enable_progress_bar=False)
        >>> s = m.prior_summary(n_samples=2)
        >>> s.index.tolist(), bool(s["weight"].notna().all())
        ([('gt', 0), ('gt', 1)], True)
        """
        from attreg_sc.metrics import dimension_shares

        cfg = self.prior_config
        if cfg is None or not self.is_trained_:
            raise RuntimeError(
                "prior_summary needs a trained model with a prior: call set_prior (or "
                "pass gt=...) and train first."
            )
        history = self.history if self.history is not None else {}
        diagnostics = getattr(self, "gt_diagnostics_", None)
        rows = []
        for i, (name, g) in enumerate(cfg.ground_truths.items()):
            if not isinstance(g, np.ndarray):
                continue
            block = cfg.blocks.get(name)
            end = {}
            for key in ("share", "weight"):
                column = f"prior_{key}_gt{i}"
                end[key] = (float(history[column].iloc[-1, 0]) if column in history
                            else float("nan"))
            diag = (diagnostics.loc[name].to_dict() if diagnostics is not None
                    and name in diagnostics.index else {})
            shares = dimension_shares(self, g, n_samples=n_samples, seed=seed)
            for dim, r in shares.drop(index="sum").iterrows():
                rows.append({
                    "gt": name, "dimension": int(dim), "gt_share": r["gt_share"],
                    "var": r["var"], "in_block": block is None or int(dim) in block,
                    "training_share": end["share"], "weight": end["weight"],
                    **{k: diag.get(k) for k in ("genes", "expressed", "variable", "verdict")},
                })
        columns = ["gt", "dimension", "gt_share", "var", "in_block", "training_share",
                   "weight", "genes", "expressed", "variable", "verdict"]
        return pd.DataFrame(rows, columns=columns).set_index(["gt", "dimension"])

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
        reducer: str | int | None = None,
        target: str | None = None,
        n_samples: int = 8,
        n_steps: int = 20,
        batch_size: int = 256,
        seed: int = 0,
        genes_only: bool = True,
        key_added: str | None = None,
        progress_bar: bool = False,
        internal_batch_size: int | None = None,
        references: str = "batch",
    ) -> np.ndarray:
        """Post-hoc attributions of the latent encoder, ``(n_cells, n_genes)`` (not
        differentiable).

        ``F`` of the latent posterior mean attributed to the encoder's input (``log1p``
        counts, then any proteins or covariates the model concatenates).

        Parameters
        ----------
        adata, indices, batch_size
            Cells to explain, as in ``get_latent_representation``.
        method
            ``"eg"`` (references: ``n_samples`` other cells of the same chunk of
            ``batch_size`` cells) or ``"ig"`` (``n_steps`` from zeros).
        reducer
            ``F``: a latent dimension (``int``), ``"sum"``, ``"mean"`` or ``"l2"``; default:
            the prior's reducer, or ``"sum"`` when the prior used random or per-dimension
            directions (see :func:`attreg_sc.metrics.dimension_shares` for every one).
        target
            ``"encoder"`` or ``"model"`` (default: the prior's target).
        n_samples, n_steps
            EG references per cell; IG steps.
        seed
            Seed of the EG draws.
        genes_only
            Return the gene columns only (drop proteins/covariates).
        key_added
            Also store the matrix in ``adata.layers[key_added]`` (the documented in-place
            change).
        progress_bar
            Show a tqdm bar over minibatches.
        internal_batch_size
            captum's argument: at most this many rows per forward pass (bounds memory).
        references
            EG's references: ``"batch"`` (other cells of the chunk) or ``"label"`` (other
            cells of the chunk with the same registered label, as the prior's
            ``references="label"`` draws them: what distinguishes a cell within its
            type).

        Examples
        --------
        >>> import attreg_sc as asc
        >>> adata = asc.datasets.synthetic(n_cells=100, n_genes=40, n_gt_genes=5)
        >>> asc.SCARE.setup_anndata(adata)
        >>> m = asc.SCARE(adata, n_latent=2)
        >>> m.train(max_epochs=1, enable_progress_bar=False)
        >>> m.get_attributions(method="ig", n_steps=4, key_added="scare_attributions").shape
        (100, 40)
        >>> "scare_attributions" in adata.layers
        True
        """
        from scvi import REGISTRY_KEYS
        from tqdm.auto import tqdm

        import attreg
        from attreg.reducers import Index, resolve_reducer

        settings = self.prior_settings or self._prior_defaults
        target = target or settings.target
        if isinstance(reducer, (int, np.integer)) and not isinstance(reducer, bool):
            f = Index(int(reducer))
        elif reducer is None:
            name = settings.reducer if self.prior_settings is not None else "sum"
            f = resolve_reducer("sum" if name in DIRECTION_REDUCERS else name)
        else:
            f = resolve_reducer(reducer)
        methods = {"eg": attreg.ExpectedGradients, "ig": attreg.IntegratedGradients}
        if method not in methods:
            raise ValueError(f"unknown method {method!r}; use 'eg' or 'ig'.")
        if references not in REFERENCES:
            raise ValueError(f"unknown references {references!r}; use one of {list(REFERENCES)}.")
        unlabeled = None
        if references == "label":
            if method != "eg":
                raise ValueError("references='label' chooses EG's references; use method='eg'.")
            self._check_reference_labels()
            unlabeled = self._unlabeled_code()
        if target == "model":
            explained = self.module.attribution_target("model")
        elif target == "encoder":
            encoder = latent_encoder(self.module)

            def explained(x, *rest):
                return latent_mean(encoder(x, *rest))
        else:
            raise ValueError(f"unknown target {target!r}; use 'encoder' or 'model'.")
        explain = methods[method](explained, f)
        adata = self._validate_anndata(adata)
        loader = self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size)
        generator = torch.Generator().manual_seed(seed)
        self.module.eval()
        out = []
        for tensors in tqdm(loader, desc="attributions", disable=not progress_bar):
            x, *rest = self._encoder_inputs(tensors)
            if target == "model":
                rest = rest[:1]
            kwargs = (
                {"n_samples": n_samples, "generator": generator}
                if method == "eg"
                else {"n_steps": n_steps}
            )
            kwargs["internal_batch_size"] = internal_batch_size
            if references == "label":
                kwargs["reference_groups"] = label_reference_groups(
                    tensors[REGISTRY_KEYS.LABELS_KEY], unlabeled
                )
            attr = explain.attribute(x, additional_forward_args=tuple(rest), **kwargs)
            out.append(attr.detach().cpu().numpy())
        attributions = np.concatenate(out)
        result = attributions[:, : adata.n_vars] if genes_only else attributions
        if key_added is not None:
            if indices is not None or not genes_only:
                raise ValueError("key_added stores one value per cell and gene: leave "
                                 "indices and genes_only at their defaults.")
            adata.layers[key_added] = result
        return result

    # -- files -------------------------------------------------------------------------
    def _prior_to_file(self) -> dict:
        cfg = self._prior_config
        if cfg is None:
            return {}
        return {
            "settings": cfg.settings.to_dict(),
            "ground_truths": {k: packed_ground_truth(g) for k, g in cfg.ground_truths.items()},
            "label_table": cfg.label_table,
            "label_has_gt": cfg.label_has_gt,
            "gene_key": self._gene_key,
        }

    def _prior_from_file(self, saved: SavedModel, n_cells: int | None) -> None:
        """The saved prior, checked like the constructor's (per-cell GTs of other cells
        than ``n_cells`` are dropped with a warning)."""
        d = saved.prior
        self._prior_config = None
        if not d:
            return
        path, n_genes = saved.path, len(saved.var_names)
        if saved.format_version == 1:  # attreg 0.1's SCAREVI
            known = {"ground_truths", "label_table", "label_has_gt", "w_attr", "options", "seed"}
            values = {**(d.get("options") or {}), "w_attr": d.get("w_attr"), "seed": d.get("seed")}
        else:
            known = {"settings", "ground_truths", "label_table", "label_has_gt", "gene_key"}
            values = d.get("settings")
        unknown = sorted(map(str, set(d) - known))
        if unknown:
            raise ModelFileError(f"{path}: extra.prior: unknown fields {unknown}.")
        try:
            settings = PriorSettings.from_dict(values, source=f"{path}: extra.prior.settings")
        except (TypeError, ValueError) as err:
            raise ModelFileError(str(err)) from None
        gts = {}
        raw = d.get("ground_truths") or {}
        if not isinstance(raw, Mapping):
            raise ModelFileError(f"{path}: extra.prior.ground_truths: not a mapping.")
        for name, packed in raw.items():
            field = f"extra.prior.ground_truths[{name!r}]"
            if isinstance(packed, np.ndarray):  # attreg 0.1 stored vectors bare
                packed = {"kind": "vector", "mask": packed}
            gts[str(name)] = unpacked_ground_truth(packed, n_genes, path, field)
        dropped = [k for k, g in gts.items() if _is_per_cell(g) and g.shape[0] != n_cells]
        if dropped:
            logger.warning("%s: the per-cell GTs %s describe the %d cells the model was "
                           "trained on, not these; the model keeps its prior without them.",
                           path, dropped, next(iter(gts[k].shape[0] for k in dropped)))
            gts = {k: g for k, g in gts.items() if k not in dropped}
            settings = settings.replace(
                latent_blocks={k: v for k, v in settings.latent_blocks.items()
                               if k not in dropped},
                gt_weights={k: v for k, v in settings.gt_weights.items() if k not in dropped},
            )
        label_table = d.get("label_table")
        label_has_gt = d.get("label_has_gt")
        if (label_table is None) != (label_has_gt is None):
            raise ModelFileError(f"{path}: extra.prior: label_table and label_has_gt go "
                                 "together.")
        if label_table is not None:
            if (not isinstance(label_table, np.ndarray) or label_table.dtype != bool
                    or label_table.ndim != 2 or label_table.shape[1] != n_genes
                    or not isinstance(label_has_gt, np.ndarray) or label_has_gt.dtype != bool
                    or label_has_gt.shape != (label_table.shape[0],)):
                raise ModelFileError(f"{path}: extra.prior.label_table: expected a boolean "
                                     "(labels x genes) table and one flag per label.")
        gene_key = d.get("gene_key")
        if gene_key is not None and not isinstance(gene_key, str):
            raise ModelFileError(f"{path}: extra.prior.gene_key: not a text.")
        n_latent = int(self.module.n_latent)
        try:
            blocks = settings.resolve_blocks(list(gts), n_latent)
        except (KeyError, ValueError) as err:
            raise ModelFileError(f"{path}: extra.prior.settings: {err}") from None
        self._gene_key = gene_key
        self._prior_defaults = settings
        if gts or label_table is not None or settings.w_sparsity > 0:
            self._prior_config = PriorConfig(gts, settings, blocks, label_table, label_has_gt)

    def save(
        self,
        dir_path: str | os.PathLike,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        **_ignored: Any,
    ) -> None:
        """Save into the folder ``dir_path`` (scvi-tools' layout and semantics; attreg_sc's
        safe file format). An existing folder is refused unless ``overwrite``; then only
        the model's own files are replaced, every other file stays (see
        :func:`attreg_sc.files.save_model`). ``save_anndata=True`` adds ``adata.h5ad``."""
        save_model(self, dir_path, prefix=prefix, overwrite=overwrite,
                   save_anndata=save_anndata, extra={"prior": self._prior_to_file()})

    @classmethod
    def load(
        cls,
        dir_path: str | os.PathLike,
        adata=None,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
        backup_url: str | None = None,
        datamodule: Any = None,
        allowed_classes_names_list: list[str] | None = None,
    ):
        """Load a model saved by :meth:`save`; ``adata=None`` uses the saved AnnData if
        there is one. No code from the file runs, and every field is checked first
        (:mod:`attreg_sc.files`); an AnnData whose genes differ from the model's is
        refused, naming the first differing gene."""
        if backup_url is not None or datamodule is not None:
            raise ValueError("load reads a local folder with an AnnData: backup_url and "
                             "datamodule are not supported.")
        allowed = tuple(allowed_classes_names_list or ()) + cls._legacy_names()
        model, saved = load_model(cls, dir_path, adata, accelerator, device, prefix,
                                  allowed_classes=allowed)
        model._prior_from_file(saved, None if model.adata is None else model.adata.n_obs)
        return model

    @classmethod
    def _legacy_names(cls) -> tuple[str, ...]:
        """Other class names under which files of this class were written."""
        return ()

    @staticmethod
    def load_registry(dir_path: str | os.PathLike, prefix: str | None = None) -> dict:
        """The registry saved with the model (read from the checked file)."""
        return read_model_file(dir_path, prefix).registry

    @staticmethod
    def view_setup_args(dir_path: str | os.PathLike, prefix: str | None = None) -> None:
        """Show the arguments that set up the saved model's AnnData (scvi-tools' view)."""
        from scvi.data import AnnDataManager

        registry = AttributionPriorModelMixin.load_registry(dir_path, prefix)
        AnnDataManager.view_setup_method_args(registry)

    @staticmethod
    def _reference(reference_model):
        if isinstance(reference_model, (str, os.PathLike)):
            return _SavedReference(read_model_file(reference_model))
        return reference_model

    @classmethod
    def load_query_data(cls, adata=None, reference_model=None, *args: Any, **kwargs: Any):
        """scvi-tools' scArches query mapping; a reference given as a path is read with
        the checked loader. The reference's prior carries over to the query model (per-cell
        GTs, which name the reference's cells, are dropped with a warning)."""
        reference = cls._reference(reference_model)
        subset = kwargs.get("inplace_subset_query_vars", False) or (
            len(args) > 1 and args[1] is True
        )
        if adata is not None and not adata.var_names.is_unique:
            dup = adata.var_names[adata.var_names.duplicated()].unique()
            raise ValueError(
                f"the query's var_names repeat {len(dup)} name(s) (e.g. {list(dup[:3])}); give "
                "each gene its own name (adata.var_names_make_unique())."
            )
        if adata is not None and not subset:
            names = [str(v) for v in reference.get_var_names()]
            query = [str(v) for v in adata.var_names]
            if query != names:
                first = next((i for i, (a, b) in enumerate(zip(query, names, strict=False))
                              if a != b), min(len(query), len(names)))
                raise ValueError(
                    f"the query's genes differ from the reference's (first at position "
                    f"{first}; {len(query)} vs {len(names)} genes); run "
                    f"{cls.__name__}.prepare_query_anndata(adata, reference) first, or pass "
                    "inplace_subset_query_vars=True."
                )
        model = super().load_query_data(adata, reference, *args, **kwargs)
        if isinstance(reference, _SavedReference):
            holder = copy.copy(model)
            holder._prior_from_file(reference.saved, n_cells=-1)
            cfg = holder._prior_config
        else:
            cfg = getattr(reference, "_prior_config", None)
            if cfg is not None:  # the query's own copy: the reference's prior stays as it is
                cfg = dataclasses.replace(cfg, ground_truths=dict(cfg.ground_truths),
                                          blocks=dict(cfg.blocks))
                cfg = _without_reference_cells(cfg)
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
        if cfg is not None:
            model._prior_defaults = cfg.settings
        return model

    @classmethod
    def prepare_query_anndata(cls, adata, reference_model, *args: Any, **kwargs: Any):
        """scvi-tools' ``prepare_query_anndata``; a path is read with the checked loader."""
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
    cfg.blocks = {k: v for k, v in cfg.blocks.items() if k not in dropped}
    cfg.settings = cfg.settings.replace(
        latent_blocks={k: v for k, v in cfg.settings.latent_blocks.items() if k not in dropped},
        gt_weights={k: v for k, v in cfg.settings.gt_weights.items() if k not in dropped},
    )
    return cfg if cfg.active else None


@cache
def with_prior(model_cls: type) -> type:
    """A scvi-tools model class with attribution priors on its latent encoder.

    The returned class is ``model_cls`` with :class:`AttributionPriorModelMixin` in
    front and its training plan wrapped by
    :func:`~attreg_sc.train.attribution_prior_plan`; its name is the original's with
    ``WithPrior`` appended. Works for SCVI, SCANVI and TOTALVI (tested) and any
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
    >>> adata = asc.datasets.synthetic(n_cells=120, n_genes=30, n_gt_genes=6, seed=0)
    >>> SCVIWithPrior = asc.with_prior(scvi.model.SCVI)
    >>> SCVIWithPrior.setup_anndata(adata, batch_key="batch")
    >>> model = SCVIWithPrior(adata, gt="is_gt", w_attr=10.0, n_latent=4)
    >>> model.train(max_epochs=1, enable_progress_bar=False)
    >>> model.get_latent_representation().shape
    (120, 4)
    """
    if not hasattr(model_cls, "_training_plan_cls"):
        raise TypeError(f"{model_cls!r} is not a scvi-tools model class with a training plan.")
    base_setup = model_cls.setup_anndata

    @classmethod
    def setup_anndata(cls, adata, *args, allow_non_integer: bool = False, **kwargs):
        return cls._checked_setup(
            base_setup.__func__.__get__(cls), adata, *args,
            allow_non_integer=allow_non_integer, **kwargs
        )

    base_params = list(inspect.signature(base_setup.__func__).parameters.values())
    var_kw = [p for p in base_params if p.kind == p.VAR_KEYWORD]
    flag = inspect.Parameter("allow_non_integer", inspect.Parameter.KEYWORD_ONLY, default=False)
    setup_anndata.__func__.__signature__ = inspect.Signature(
        [p for p in base_params if p.kind != p.VAR_KEYWORD] + [flag] + var_kw
    )
    setup_anndata.__func__.__doc__ = (
        f"{model_cls.__name__}.setup_anndata after attreg_sc's checks of the counts "
        "(:func:`attreg_sc.validation.check_anndata`); ``allow_non_integer=True`` accepts "
        "non-integer counts."
    )
    return type(
        f"{model_cls.__name__}WithPrior",
        (AttributionPriorModelMixin, model_cls),
        {
            "__module__": __name__,
            "__doc__": f"{model_cls.__name__} with attribution priors "
            "(see :class:`attreg_sc.AttributionPriorModelMixin`).",
            "_training_plan_cls": attribution_prior_plan(model_cls._training_plan_cls),
            "setup_anndata": setup_anndata,
        },
    )
