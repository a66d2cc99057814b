"""``SCARE``: scARE as a scvi-tools model (the one model of attreg_sc)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Literal

import scvi

from attreg_sc.mixin import AttributionPriorModelMixin
from attreg_sc.module import SCAREVAE
from attreg_sc.settings import PriorSettings
from attreg_sc.train.plan import attribution_prior_plan

logger = logging.getLogger(__name__)

__all__ = ["SCARE"]


class SCARE(AttributionPriorModelMixin, scvi.model.SCVI):
    """scARE: a batch-conditioned negative-binomial VAE with a library-size encoder,
    trained with attribution priors on its encoder.

    ``SCARE`` *is* a :class:`scvi.model.SCVI` (every scvi-tools method works:
    ``get_latent_representation``, ``get_normalized_expression``,
    ``differential_expression``, ``get_elbo``, ``load_query_data``, ...), with scARE's
    architecture as its defaults (NB likelihood, learned library size, LayerNorm instead of
    BatchNorm, the batch given to the encoder), its module
    :class:`~attreg_sc.module.SCAREVAE` (``normalize_input``, ``w_reconstruction``, the
    prior's ``target="model"``, attreg's fast paths), the prior added to the loss by its
    training plan, scARE's training schedule and callbacks, and files that cannot run code.

    Set up the AnnData first, as for any scvi-tools model:
    ``SCARE.setup_anndata(adata, layer=..., batch_key=...)``; it checks the counts before
    scvi-tools reads them.

    Parameters
    ----------
    adata
        AnnData set up with :meth:`setup_anndata` (``None``: the module is built when
        ``train`` gets a data module, as for SCVI).
    registry
        scvi-tools' registry (used when loading).
    n_hidden, n_latent, n_layers, dropout_rate, dispersion, gene_likelihood,
    use_observed_lib_size, latent_distribution
        scvi-tools' SCVI arguments, in its order; scARE's defaults (``gene_likelihood="nb"``,
        ``use_observed_lib_size=False``).
    gt, gt_per_label, gene_key
        The prior's GTs, see :meth:`set_prior`.
    prior
        The prior's settings (:class:`~attreg_sc.settings.PriorSettings`); single fields
        may be given as keywords: ``w_attr`` (default 30), ``attribution``, ``target``,
        ``reducer``, ``reparameterizer``, ``loss``, ``aggregation``, ``n_samples``,
        ``n_steps``, ``n_directions``, ``w_exclusion``, ``latent_blocks``, ``gt_weights``,
        ``seed``.
    **kwargs
        Prior settings by name, and :class:`~attreg_sc.module.SCAREVAE`'s arguments
        (``normalize_input``, ``w_reconstruction``, scvi-tools' VAE arguments such as
        ``encode_covariates`` (default ``True``), ``use_layer_norm``, ...).

    Examples
    --------
    >>> import attreg_sc as asc
    >>> adata = asc.datasets.synthetic(n_cells=150, n_genes=30, n_gt_genes=6, seed=0)
    >>> asc.SCARE.setup_anndata(adata, batch_key="batch")
    >>> model = asc.SCARE(adata, n_latent=4, gt="is_gt", w_attr=10.0)
    >>> model.train(max_epochs=2, enable_progress_bar=False)
    >>> model.get_latent_representation().shape
    (150, 4)
    >>> model.get_normalized_expression().shape
    (150, 30)
    """

    _module_cls = SCAREVAE
    _training_plan_cls = attribution_prior_plan(scvi.train.TrainingPlan)

    def __init__(
        self,
        adata=None,
        registry: dict | None = None,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        dispersion: Literal["gene", "gene-batch", "gene-label", "gene-cell"] = "gene",
        gene_likelihood: Literal["zinb", "nb", "poisson", "normal"] = "nb",
        use_observed_lib_size: bool = False,
        latent_distribution: Literal["normal", "ln"] = "normal",
        *,
        gt: Any = None,
        gt_per_label: Mapping[str, Any] | None = None,
        gene_key: str | None = None,
        prior: PriorSettings | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        for name in ("layer", "batch_key", "labels_key"):
            if name in kwargs:
                raise TypeError(
                    f"SCARE takes no {name}=; set up the AnnData first: "
                    f"SCARE.setup_anndata(adata, {name}=...)."
                )
        kwargs.setdefault("encode_covariates", True)
        super().__init__(
            adata,
            registry,
            n_hidden=n_hidden,
            n_latent=n_latent,
            n_layers=n_layers,
            dropout_rate=dropout_rate,
            dispersion=dispersion,
            gene_likelihood=gene_likelihood,
            use_observed_lib_size=use_observed_lib_size,
            latent_distribution=latent_distribution,
            gt=gt,
            gt_per_label=gt_per_label,
            gene_key=gene_key,
            prior=prior,
            **kwargs,
        )
        self._model_summary_string = self._model_summary_string.replace(
            "SCVI model", "SCARE model (scARE on scvi-tools' SCVI)"
        )

    @classmethod
    def setup_anndata(
        cls,
        adata,
        layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        size_factor_key: str | None = None,
        categorical_covariate_keys: list[str] | None = None,
        continuous_covariate_keys: list[str] | None = None,
        allow_non_integer: bool = False,
        **kwargs: Any,
    ) -> None:
        """Check the AnnData, then register it (scvi-tools' ``SCVI.setup_anndata``).

        Before scvi-tools reads anything: at least two cells and two genes, unique gene
        names, a sound sparse structure, finite non-negative integer counts, no cell
        without counts, every cell labelled in the given ``obs`` columns
        (:func:`attreg_sc.validation.check_anndata`). Like scvi-tools, this writes its
        ``_scvi_*`` columns and ``uns`` entries into ``adata``.

        Parameters
        ----------
        adata
            AnnData with raw counts.
        layer, batch_key, labels_key, size_factor_key, categorical_covariate_keys,
        continuous_covariate_keys
            scvi-tools' arguments.
        allow_non_integer
            Accept non-integer counts (e.g. ambient-corrected estimates).
        **kwargs
            scvi-tools' further arguments.

        Examples
        --------
        >>> import attreg_sc as asc
        >>> adata = asc.datasets.synthetic(n_cells=50, n_genes=40, n_gt_genes=5)
        >>> asc.SCARE.setup_anndata(adata, batch_key="batch")
        >>> asc.SCARE(adata, n_latent=2).summary_stats.n_batch
        2
        """
        cls._checked_setup(
            super().setup_anndata,
            adata,
            layer,
            batch_key,
            labels_key,
            size_factor_key,
            categorical_covariate_keys,
            continuous_covariate_keys,
            allow_non_integer=allow_non_integer,
            **kwargs,
        )

    def train(
        self,
        max_epochs: int | None = 100,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float | None = None,
        validation_size: float | None = None,
        shuffle_set_split: bool = True,
        load_sparse_tensor: bool = False,
        batch_size: int = 128,
        early_stopping: bool | None = None,
        datasplitter_kwargs: dict | None = None,
        plan_config: Any = None,
        plan_kwargs: Mapping[str, Any] | None = None,
        datamodule: Any = None,
        trainer_config: Any = None,
        *,
        threads: int | str | None = "auto",
        prior_warmup_epochs: int = 0,
        checkpoint_path: str | os.PathLike | None = None,
        checkpoint_every: int = 1,
        retain_freed_memory: bool = True,
        **trainer_kwargs: Any,
    ):
        """Train with scARE's schedule: scvi-tools' ``train`` (same arguments, same order)
        with scARE's defaults and callbacks.

        scARE's defaults: ``max_epochs=100``; early stopping on the objective being trained
        (``validation_loss``, the prior included) with ``early_stopping_patience=10``,
        watching once the KL weight has warmed up and the prior is on, keeping the best
        epoch's weights, and on whenever there is a validation set
        (``early_stopping=None``); the validation loss is computed every epoch
        (``check_val_every_n_epoch=1``); the KL weight warms up over 10 epochs
        (``plan_kwargs={'n_epochs_kl_warmup': 10}``).

        Parameters
        ----------
        max_epochs, accelerator, devices, train_size, validation_size, shuffle_set_split,
        load_sparse_tensor, batch_size, early_stopping, datasplitter_kwargs, plan_config,
        plan_kwargs, datamodule, trainer_config
            scvi-tools' arguments (``batch_size``: cells per minibatch; EG references
            come from the same minibatch). Several processes or GPUs: ``devices=N,
            strategy="ddp"`` (docs/scaling.md).
        threads, prior_warmup_epochs, checkpoint_path, checkpoint_every, retain_freed_memory
            See :meth:`attreg_sc.AttributionPriorModelMixin.train`.
        **trainer_kwargs
            Lightning's and scvi-tools' trainer arguments (``ckpt_path`` resumes from a
            checkpoint, ``gradient_clip_val``, ``early_stopping_patience``, ...).
        """
        plan = dict(plan_kwargs or {})
        configured = dict(plan_config or {}) if isinstance(plan_config, Mapping) else {}
        if "n_epochs_kl_warmup" not in configured and "n_steps_kl_warmup" not in plan:
            plan.setdefault("n_epochs_kl_warmup", 10)
        warmup = plan.get("n_epochs_kl_warmup") or 0
        trainer_kwargs.setdefault("early_stopping_patience", 10)
        trainer_kwargs.setdefault("check_val_every_n_epoch", 1)  # the validation loss per epoch
        trainer_kwargs.setdefault(
            "early_stopping_warmup_epochs", max(int(warmup), int(prior_warmup_epochs or 0))
        )
        return super().train(
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            train_size=train_size,
            validation_size=validation_size,
            shuffle_set_split=shuffle_set_split,
            load_sparse_tensor=load_sparse_tensor,
            batch_size=batch_size,
            early_stopping=early_stopping,
            datasplitter_kwargs=datasplitter_kwargs,
            plan_config=plan_config,
            plan_kwargs=plan,
            datamodule=datamodule,
            trainer_config=trainer_config,
            threads=threads,
            prior_warmup_epochs=prior_warmup_epochs,
            checkpoint_path=checkpoint_path,
            checkpoint_every=checkpoint_every,
            retain_freed_memory=retain_freed_memory,
            **trainer_kwargs,
        )

    @classmethod
    def _legacy_names(cls) -> tuple[str, ...]:
        return ("SCAREVI",)
