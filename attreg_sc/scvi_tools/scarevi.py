"""SCAREVI: scARE built on scvi-tools (SCVI's model, module and training plan)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import scvi

from attreg_sc.scvi_tools.model import AttributionPriorModelMixin
from attreg_sc.scvi_tools.module import SCAREVAE
from attreg_sc.scvi_tools.plan import attribution_prior_plan

logger = logging.getLogger(__name__)

__all__ = ["SCAREVI"]

#: scARE's architecture in scvi-tools' names (attreg_sc.SCARE's defaults)
SCARE_ARCHITECTURE = {
    "n_hidden": 128,
    "n_latent": 10,
    "n_layers": 1,
    "dropout_rate": 0.1,
    "dispersion": "gene",
    "gene_likelihood": "nb",
    "use_observed_lib_size": False,  # the library-size encoder
    "encode_covariates": True,  # the batch enters the encoder
    "use_batch_norm": "none",
    "use_layer_norm": "both",
}


#: attreg_sc.SCARE arguments that SCAREVI has no equivalent for, and what to do instead
SCARE_ONLY = {
    "target": "SCAREVI explains the encoder (target='encoder'); use attreg_sc.SCARE for "
    "target='model'.",
    "w_reconstruction": "scvi-tools' loss has no reconstruction weight; use attreg_sc.SCARE.",
    "w_divergence": "scvi-tools' KL weight is annealed by the plan: pass "
    "plan_kwargs={'max_kl_weight': ...} to train().",
    "normalize_input": "scvi-tools' encoder reads log1p(counts); use attreg_sc.SCARE for "
    "normalize_input=True.",
    "accelerator": "pass accelerator= to train() (scvi-tools chooses the device there).",
    "allow_non_integer": "scvi-tools trains on non-integer counts and warns; leave it out.",
}


class SCAREVI(AttributionPriorModelMixin, scvi.model.SCVI):
    """scARE as a scvi-tools model: a batch-conditioned NB VAE with a library-size
    encoder, trained with attribution priors on its encoder.

    Its module is :class:`~attreg_sc.scvi_tools.module.SCAREVAE`, scvi-tools' VAE with
    attreg's fast paths. It *is* a :class:`scvi.model.SCVI` (every scvi-tools method works:
    ``get_normalized_expression``, ``differential_expression``, ``get_elbo``,
    ``load_query_data``, ...) with scARE's architecture (LayerNorm, batch given to the
    encoder, learned library size, NB), scARE's prior (default: random-direction
    reducer, ``share`` / ``outside_share``, ``w_attr=30``) added by the training plan,
    and files that cannot run code. :class:`attreg_sc.SCARE`'s constructor arguments are
    accepted under their SCARE names.

    Parameters
    ----------
    adata
        AnnData with raw counts. If it was not set up, it is set up here with ``layer``
        and ``batch_key`` (``SCAREVI.setup_anndata``, i.e. scvi-tools').
    registry
        scvi-tools' registry (used when loading).
    gt, gt_per_label, w_attr, gene_key
        The prior, see :meth:`~attreg_sc.scvi_tools.AttributionPriorModelMixin.set_prior`.
    seed
        Seed of the prior's draws.
    attribution, reducer, reparameterizer, loss, gt_weights, aggregation, n_samples,
    n_steps, n_directions, latent_blocks, w_exclusion
        The prior's settings, as in :class:`attreg_sc.SCARE`.
    dropout, likelihood, use_observed_library
        SCARE's names of ``dropout_rate``, ``gene_likelihood``, ``use_observed_lib_size``.
    layer, batch_key
        Set up ``adata`` if it was not.
    **kwargs
        scvi-tools' SCVI arguments (``n_hidden``, ``n_latent``, ``n_layers``,
        ``dispersion``, ``use_layer_norm``, ...); scARE's defaults where not given.

    Examples
    --------
    >>> import attreg_sc as asc
    >>> from attreg_sc.scvi_tools import SCAREVI
    >>> adata = asc.datasets.synthetic(n_cells=150, n_genes=30, n_gt_genes=6, seed=0)
    >>> model = SCAREVI(adata, batch_key="batch", gt="is_gt", n_latent=4)
    >>> model.train(max_epochs=2, progress_bar=False)
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
        *,
        gt: Any = None,
        gt_per_label: Mapping[str, Any] | None = None,
        w_attr: float = 30.0,
        gene_key: str | None = None,
        seed: int = 0,
        attribution: str = "eg",
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
        dropout: float | None = None,
        likelihood: str | None = None,
        use_observed_library: bool | None = None,
        layer: str | None = None,
        batch_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        for name in set(kwargs) & set(SCARE_ONLY):
            if name == "target" and kwargs[name] == "encoder":
                kwargs.pop(name)
                continue
            raise TypeError(f"SCAREVI has no {name}=: {SCARE_ONLY[name]}")
        for scare_name, scvi_name, value in (
            ("dropout", "dropout_rate", dropout),
            ("likelihood", "gene_likelihood", likelihood),
            ("use_observed_library", "use_observed_lib_size", use_observed_library),
        ):
            if value is not None:
                if scvi_name in kwargs:
                    raise TypeError(f"give {scare_name} or {scvi_name}, not both.")
                kwargs[scvi_name] = value
        for key, value in SCARE_ARCHITECTURE.items():
            kwargs.setdefault(key, value)
        if adata is not None and registry is None:
            from scvi.data._constants import _SCVI_UUID_KEY

            set_up = _SCVI_UUID_KEY in adata.uns and self._get_most_recent_anndata_manager(adata)
            if layer is not None or batch_key is not None or not set_up:
                type(self).setup_anndata(adata, layer=layer, batch_key=batch_key)
        options = dict(
            attribution=attribution,
            reducer=reducer,
            reparameterizer=reparameterizer,
            loss=loss,
            gt_weights=gt_weights,
            aggregation=aggregation,
            n_samples=n_samples,
            n_steps=n_steps,
            n_directions=n_directions,
            latent_blocks=latent_blocks,
            w_exclusion=w_exclusion,
        )
        super().__init__(
            adata,
            registry,
            gt=gt,
            gt_per_label=gt_per_label,
            w_attr=w_attr,
            gene_key=gene_key,
            prior_seed=seed,
            prior_options=options,
            **kwargs,
        )

    def train(
        self,
        max_epochs: int = 100,
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 1e-6,
        kl_warmup_epochs: int = 10,
        validation_fraction: float = 0.1,
        early_stopping: bool = True,
        patience: int = 10,
        progress_bar: bool = True,
        plan_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ):
        """Train with scARE's schedule (SCARE's names and defaults; scvi-tools' ``train``
        arguments, e.g. ``accelerator``, ``train_size``, ``plan_kwargs``,
        ``check_val_every_n_epoch``, pass through and take precedence).

        Parameters
        ----------
        max_epochs
            Upper bound on epochs.
        batch_size
            Cells per minibatch (EG references come from the same minibatch).
        lr, weight_decay
            Adam settings.
        kl_warmup_epochs
            Linear warm-up of the KL weight.
        validation_fraction
            Cells held out for validation (``train_size = 1 - validation_fraction``).
        early_stopping, patience
            Stop when ``validation_loss`` (ELBO plus ``w_A * L_A``) has not improved for
            ``patience`` epochs.
        progress_bar
            Show Lightning's progress bar.
        plan_kwargs
            scvi-tools' training-plan arguments.
        """
        plan = {"lr": lr, "weight_decay": weight_decay, "n_epochs_kl_warmup": kl_warmup_epochs}
        plan.update(plan_kwargs or {})
        settings = {
            "max_epochs": max_epochs,
            "batch_size": batch_size,
            "train_size": 1.0 - validation_fraction,
            "early_stopping": early_stopping and validation_fraction > 0,
            "early_stopping_patience": patience,
            "early_stopping_monitor": "validation_loss",
            "check_val_every_n_epoch": 1 if validation_fraction > 0 else None,
            "enable_progress_bar": progress_bar,
        }
        settings.update(kwargs)
        result = super().train(plan_kwargs=plan, **settings)
        stopped = self.history.get("train_loss")
        if stopped is not None and len(stopped) < settings["max_epochs"]:
            logger.info("early stopping after %d of %d epochs", len(stopped), max_epochs)
        return result
