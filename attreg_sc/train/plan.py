"""Training plans that add scARE's attribution prior ``w_A * L_A`` to any scvi-tools plan.

The prior explains the model's latent encoder (``module.z_encoder`` in SCVI and SCANVI,
``module.encoder`` in TOTALVI): ``F`` of the latent posterior mean, attributed to the
encoder's first input (``log1p`` counts, followed by whatever the model concatenates:
proteins in totalVI, continuous covariates, a batch embedding). The encoder's inputs
are captured by a forward hook during the model's own forward pass, so the prior sees
exactly what the encoder saw, for every model whose inference calls its encoder once
first (all of scvi-tools' VAEs).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import torch

from attreg_sc.gt import GroupedGroundTruth
from attreg_sc.priors import build_prior_set
from attreg_sc.settings import PriorSettings

logger = logging.getLogger(__name__)

__all__ = [
    "PriorConfig",
    "AttributionPriorPlanMixin",
    "attribution_prior_plan",
    "latent_encoder",
    "VALIDATION_SEED_OFFSET",
]

#: validation draws come from ``seed + VALIDATION_SEED_OFFSET``, the same on every call
VALIDATION_SEED_OFFSET = 1_000_003


def label_reference_groups(codes: torch.Tensor, unlabeled_code: int | None) -> torch.Tensor:
    """EG's reference groups for ``references="label"``: the cells' label codes, with the
    unlabelled category's cells (``unlabeled_code``, SCANVI's) in no group (-1: they draw
    their references among all cells; :func:`attreg.attr.expected_gradients.group_reference_index`).

    Parameters
    ----------
    codes
        The cells' registered label codes (any shape with one value per cell).
    unlabeled_code
        The unlabelled category's code, or ``None``.

    Examples
    --------
    >>> label_reference_groups(torch.tensor([[0], [2], [1], [2]]), 2).tolist()
    [0, -1, 1, -1]
    """
    codes = codes.long().view(-1)
    return codes if unlabeled_code is None else codes.masked_fill(codes == unlabeled_code, -1)


@dataclass
class PriorConfig:
    """What the plan needs to build the prior; made by the model (see
    :meth:`attreg_sc.AttributionPriorModelMixin.set_prior`).

    Attributes
    ----------
    ground_truths
        ``{name: GT}``: a bool vector over the genes (one GT for every cell) or a per-cell
        GT (:class:`~attreg_sc.gt.GroupedGroundTruth`, :class:`~attreg_sc.gt.CellGroundTruth`)
        whose rows are looked up by the cells' registered positions (``ind_x``).
    settings
        The prior's settings.
    blocks
        ``{GT name: latent dims}`` (``settings.latent_blocks`` resolved).
    label_table
        ``(n_label_codes, n_genes)`` bool, or ``None``: the GT of each registered label
        (row ``c`` for label code ``c``); cells whose label has no row in
        ``label_has_gt`` are left out of this prior (unlabelled cells, say).
    label_has_gt
        ``(n_label_codes,)`` bool.
    unlabeled_code
        The code of the registered unlabelled category (SCANVI's), or ``None``; with
        ``settings.references == "label"`` its cells belong to no reference group (they
        draw EG references among all the minibatch's cells). Set by ``train``.
    """

    ground_truths: dict = field(default_factory=dict)
    settings: PriorSettings = field(default_factory=PriorSettings)
    blocks: dict = field(default_factory=dict)
    label_table: np.ndarray | None = None
    label_has_gt: np.ndarray | None = None
    unlabeled_code: int | None = None

    @property
    def w_attr(self) -> float:
        """The factor of ``L_A`` in the loss: ``w_attr``, or 1 with a target share (the
        weights are then the priors' own multipliers)."""
        if self.settings.target_share is not None:
            return 1.0
        return self.settings.w_attr

    @property
    def active(self) -> bool:
        has_prior = (
            bool(self.ground_truths)
            or self.label_table is not None
            or self.settings.w_sparsity > 0
        )
        return self.w_attr > 0 and has_prior


def latent_encoder(module: torch.nn.Module) -> torch.nn.Module:
    """The latent encoder of a scvi-tools module (``z_encoder`` or ``encoder``).

    Parameters
    ----------
    module
        A scvi-tools module (``VAE``, ``SCANVAE``, ``TOTALVAE``, ...).
    """
    for name in ("z_encoder", "encoder"):
        enc = getattr(module, name, None)
        if isinstance(enc, torch.nn.Module):
            return enc
    raise TypeError(
        f"{type(module).__name__} has no latent encoder named z_encoder or encoder; "
        "attreg_sc's scvi-tools plans explain that encoder."
    )


def latent_mean(out: Any) -> torch.Tensor:
    """The posterior mean from an encoder's output: ``(Normal, z, ...)`` or ``(q_m, q_v, z)``."""
    first = out[0] if isinstance(out, (tuple, list)) else out
    return first.loc if isinstance(first, torch.distributions.Distribution) else first


def _padded(g: np.ndarray, width: int, what: str) -> np.ndarray:
    if g.shape[-1] == width:
        return g
    if g.shape[-1] > width:
        raise ValueError(f"{what} has {g.shape[-1]} entries; the encoder has {width} inputs.")
    pad = np.zeros(g.shape[:-1] + (width - g.shape[-1],), dtype=g.dtype)
    return np.concatenate([g, pad], axis=-1)


class AttributionPriorPlanMixin:
    """Adds ``w_A * L_A`` to the loss of the scvi-tools plan it is mixed into.

    ``prior=`` (a :class:`PriorConfig`) is the one extra constructor argument. The prior
    is added to the loss returned by the plan's ``forward``, so every plan's own
    ``training_step`` (plain, semi-supervised, adversarial with manual optimisation)
    backpropagates it, and ``validation_loss`` (early stopping) includes it; validation
    uses the same draws on every call (common random numbers). Logged as
    ``attribution_loss_train`` / ``attribution_loss_validation`` (unweighted ``L_A``).

    Parameters
    ----------
    module
        The scvi-tools module.
    prior
        What to add (``None`` or an inactive config: the plan is scvi-tools' own).
    *args, **kwargs
        The scvi-tools plan's arguments.
    """

    def __init__(self, module, *args, prior: PriorConfig | None = None, **kwargs) -> None:
        super().__init__(module, *args, **kwargs)
        self.prior_config = prior if prior is not None and prior.active else None
        self._captured: tuple | None = None
        self._first_out: torch.Tensor | None = None
        self._armed = False
        self._cell_gts: dict = {}
        # the prior's modules are the plan's working parts, not its state: kept out of
        # the LightningModule's children (its checkpoints hold the model's weights once)
        self._unregistered("_prefix", None)
        self._unregistered("_vector_priors", None)
        self._unregistered("_label_prior", None)
        self._unregistered("_encoder", None)
        #: the prior is on (the :class:`~attreg_sc.train.callbacks.PriorWarmup` callback
        #: switches it off for the first epochs)
        self.prior_enabled = True
        #: per-step ``[loss, L_R, L_D, L_A]`` of the epoch, kept while a
        #: :class:`~attreg_sc.train.callbacks.NonFiniteLoss` callback watches
        self.step_terms: list[torch.Tensor] | None = None
        if self.prior_config is None:
            return
        self._unregistered("_encoder", latent_encoder(module))
        if any(
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in self._encoder.modules()
        ):
            raise ValueError(
                "the latent encoder has BatchNorm, which couples the cells of a minibatch, so "
                "attributions of one cell would depend on the others; build the model with "
                "use_batch_norm='none' and use_layer_norm='both' (attreg_sc's default)."
            )
        self._generator = torch.Generator().manual_seed(self.prior_config.settings.seed)
        target = self.prior_config.settings.target
        if target != "encoder" and not hasattr(module, "attribution_target"):
            raise ValueError(
                f"target={target!r} needs a module that provides it; {type(module).__name__} "
                "explains its encoder only (target='encoder')."
            )

    def _unregistered(self, name: str, value: Any) -> None:
        """Set an attribute that ``nn.Module`` does not register as a child."""
        object.__setattr__(self, name, value)

    @property
    def prior_generator(self) -> torch.Generator | None:
        """The random generator of the prior's draws (``None`` without a prior)."""
        return getattr(self, "_generator", None)

    def _optimizer_creator_fn(self, optimizer_cls):
        """scvi-tools' Adam/AdamW, fused (one kernel for all parameters) when the fast
        paths are on (:mod:`attreg.fast_paths`): the same update up to float rounding."""
        from attreg.fast_paths import fast_paths_enabled

        if not fast_paths_enabled():
            return super()._optimizer_creator_fn(optimizer_cls)

        def create(params):
            params = list(params)
            fused = all(p.dtype == torch.float32 and p.device.type == "cpu" for p in params)
            return optimizer_cls(
                params,
                lr=self.lr,
                eps=self.eps,
                weight_decay=self.weight_decay,
                fused=True if fused else None,
            )

        return create

    # -- per-epoch metrics without per-step logging ----------------------------------------
    def _metrics_deferred(self, loss_output) -> bool:
        """scvi-tools logs four torchmetrics objects on every step (about 3.6 ms of a 13 ms
        CPU step on PBMC 3k, ``benchmarks/bench_scvi_tools.py``); with the fast paths on,
        the plain plans' ELBO terms are summed in tensors and logged once per epoch, to the
        same values and history keys."""
        from scvi.train import TrainingPlan

        base = super().compute_and_log_metrics.__func__
        return (
            self._fast_logging()
            and base is TrainingPlan.compute_and_log_metrics
            and not loss_output.extra_metrics_keys
        )

    def _fast_logging(self) -> bool:
        from attreg.fast_paths import fast_paths_enabled

        attached = getattr(self, "_trainer", None) is not None
        return fast_paths_enabled() and not self.on_step and not (attached and self.use_sync_dist)

    def _accumulate_mean(self, stage: str, name: str, value: torch.Tensor, n: int) -> None:
        """Add to the per-epoch weighted mean ``name`` (logged at the epoch's end)."""
        weighted = self.__dict__.setdefault("_epoch_means", {}).setdefault(stage, {})
        total, count = weighted.get(name, (0.0, 0))
        weighted[name] = (total + value.detach() * n, count + n)

    def training_step(self, batch, batch_idx):
        """scvi-tools' plain ``training_step`` with its per-step logs (``train_loss``, the
        KL weight) folded into per-epoch values when the fast paths are on: Lightning's
        bookkeeping of a logged value costs about a millisecond per step on CPU
        (``benchmarks/bench_scvi_tools.py``). Other plans run unchanged."""
        from scvi.train import TrainingPlan

        base = super().training_step.__func__
        if not (self._fast_logging() and base is TrainingPlan.training_step):
            return super().training_step(batch, batch_idx)
        if "kl_weight" in self.loss_kwargs:
            self.loss_kwargs.update({"kl_weight": self.kl_weight})
            self.__dict__.setdefault("_epoch_last", {})["kl_weight"] = self.kl_weight
        _, _, scvi_loss = self.forward(batch, loss_kwargs=self.loss_kwargs)
        self._accumulate_mean("train", "train_loss", scvi_loss.loss, int(scvi_loss.n_obs_minibatch))
        self.compute_and_log_metrics(scvi_loss, self.train_metrics, "train")
        if scvi_loss.extra_metrics is not None and len(scvi_loss.extra_metrics.keys()) > 0:
            self.prepare_scib_autotune(scvi_loss.extra_metrics, "training")
        return scvi_loss.loss

    def compute_and_log_metrics(self, loss_output, metrics, mode: str):
        if not self._metrics_deferred(loss_output):
            return super().compute_and_log_metrics(loss_output, metrics, mode)
        sums = self.__dict__.setdefault("_epoch_sums", {}).setdefault(mode, {})
        for key, value in (
            ("reconstruction_loss", loss_output.reconstruction_loss_sum),
            ("kl_local", loss_output.kl_local_sum),
            ("kl_global", loss_output.kl_global_sum),
        ):
            value = torch.as_tensor(value).detach()
            sums[key] = sums[key] + value if key in sums else value
        sums["n_obs"] = sums.get("n_obs", 0) + int(loss_output.n_obs_minibatch)
        sums["n_batches"] = sums.get("n_batches", 0) + 1

    def log_epoch_metrics(self, mode: str) -> None:
        """Log the epoch's accumulated values of ``mode`` (``train``/``validation``) now
        (once; the epoch-end hook logs what is left)."""
        last = self.__dict__.get("_epoch_last", {})
        if mode == "train" and "kl_weight" in last:
            self.log("kl_weight", float(last.pop("kl_weight")), on_step=False, on_epoch=True)
        if mode == "train" and self.__dict__.get("_constraints_logged") != self.current_epoch:
            self.__dict__["_constraints_logged"] = self.current_epoch
            for name, constraint in self.share_constraints().items():  # one sync per epoch
                state = constraint.state()
                self.log(f"prior_weight_{name}", state["weight"], on_step=False, on_epoch=True)
                self.log(f"prior_share_{name}", state["share"], on_step=False, on_epoch=True)
        means = self.__dict__.get("_epoch_means", {}).pop(mode, None)
        if means:
            self.log_dict({k: t / c for k, (t, c) in means.items()}, on_step=False, on_epoch=True)
        sums = self.__dict__.get("_epoch_sums", {}).pop(mode, None)
        if not sums:
            return
        n_total = self.n_obs_training if mode == "train" else self.n_obs_validation
        n = 1 if n_total is None or n_total < 1 else n_total
        rec = sums["reconstruction_loss"] / sums["n_obs"]
        kl_local = sums["kl_local"] / sums["n_obs"]
        kl_global = sums["kl_global"] / sums["n_batches"]
        values = {
            f"elbo_{mode}": rec + kl_local + kl_global / n,
            f"reconstruction_loss_{mode}": rec,
            f"kl_local_{mode}": kl_local,
            f"kl_global_{mode}": kl_global,
        }
        self.log_dict(values, on_step=False, on_epoch=True)

    def on_fit_start(self) -> None:
        """Put the module in training mode when it comes in evaluation mode.

        scvi-tools leaves the module in evaluation mode after every ``train()`` and on
        ``load`` / ``load_query_data``, and Lightning (since 2.2) no longer calls
        ``train()`` when a fit starts, so a second ``train()``, a loaded model or a query
        model would otherwise train with dropout off (and Lightning would warn about
        modules in eval mode). A module whose top level is in training mode is left as
        it is, with any submodule its user froze in evaluation mode.
        """
        super().on_fit_start()
        if not self.module.training:
            self.module.train()

    def on_train_epoch_end(self):
        self.log_epoch_metrics("train")
        return super().on_train_epoch_end()

    def share_constraints(self) -> dict:
        """``{GT name: attreg.ShareConstraint}`` of the priors that aim at a target share
        (empty before the first step and without ``target_share``)."""
        out = {}
        for prefix, prior in (("", self._vector_priors), ("per_label", self._label_prior)):
            if prior is None:
                continue
            items = prior.priors.items() if hasattr(prior, "priors") else [(prefix, prior)]
            for name, p in items:
                if getattr(p, "constraint", None) is not None:
                    out[name] = p.constraint
        return out

    def on_validation_epoch_end(self):
        self.log_epoch_metrics("validation")
        return super().on_validation_epoch_end()

    def validation_step(self, batch, batch_idx):
        """The plan's validation step with the same random draws at every epoch (the
        latent samples and the prior's draws seeded by the minibatch's index): epoch-to-epoch
        changes of the validation loss, which early stopping compares, are the model's, not
        the sampling noise's. The training stream is left as it was."""
        device = self.device
        fork = {"devices": []} if device.type == "cpu" else {
            "devices": [device.index or 0], "device_type": device.type}
        seed = self.prior_config.settings.seed if self.prior_config is not None else 0
        with torch.random.fork_rng(**fork):
            torch.manual_seed(seed + VALIDATION_SEED_OFFSET + int(batch_idx))
            return super().validation_step(batch, batch_idx)

    # the encoder's inputs of the model's own forward pass
    def _capture_encoder_inputs(self, _module, args, _out) -> None:
        if self._armed:
            self._captured, self._armed = tuple(args), False

    def _capture_first_layer(self, _module, _args, out) -> None:
        if self._first_out is None and self._armed:
            self._first_out = out

    def _first_linear(self) -> torch.nn.Linear | None:
        """The first product of an FCLayers encoder (scvi-tools' layout), if any."""
        layers = getattr(getattr(self._encoder, "encoder", None), "fc_layers", None)
        first = layers[0][0] if layers is not None and len(layers) else None
        return first if isinstance(first, torch.nn.Linear) else None

    def _explained(self, x: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        return latent_mean(self._encoder(x, *rest))

    def _build(self, width: int, n_latent: int, device: torch.device) -> None:
        from attreg_sc.fast.encoder_prefix import encoder_prefix

        cfg = self.prior_config
        settings = cfg.settings
        if settings.target == "model":
            self._unregistered("_prefix", None)
            target = self.module.attribution_target("model")
        else:  # the encoder split after its first product (same function; the fast EG path)
            self._unregistered("_prefix", encoder_prefix(self._encoder, width, self._captured))
            target = self._prefix if self._prefix is not None else self._explained
        # vectors padded to the encoder's width; per-cell GTs are given rows per step
        vectors = {
            k: _padded(v, width, f"GT {k!r}") if isinstance(v, np.ndarray) else v
            for k, v in cfg.ground_truths.items()
        }
        self._cell_gts = {}
        for i, g in enumerate(vectors.values()):
            if isinstance(g, GroupedGroundTruth):  # gathered on the device: table[code]
                table = _padded(g.table.astype(np.float32), width, f"per-group GT gt{i}")
                table = np.vstack([table, np.zeros((1, width), np.float32)])  # code -1
                codes = np.where(g.codes < 0, len(table) - 1, g.codes)
                self._cell_gts[f"gt{i}"] = (
                    torch.from_numpy(codes.astype(np.int64)).to(device),
                    torch.from_numpy(table).to(device),
                )
            elif not isinstance(g, np.ndarray):
                self._cell_gts[f"gt{i}"] = g
        common = dict(n_latent=n_latent, generator=self._generator, settings=settings)
        if vectors or settings.w_sparsity > 0:  # the GT-free sparsity prior lives here
            self._unregistered(
                "_vector_priors",
                build_prior_set(target, vectors, latent_blocks=cfg.blocks, **common).to(device),
            )
        if cfg.label_table is not None:
            per_label = settings.replace(latent_blocks={}, gt_weights={})
            common["settings"] = per_label
            self._unregistered(
                "_label_prior",
                build_prior_set(target, {"per_label": object()}, **common).priors["gt0"].to(device),
            )
            self._label_table = torch.from_numpy(
                _padded(cfg.label_table.astype(np.float32), width, "the per-label GT")
            ).to(device)
            self._label_has_gt = torch.from_numpy(cfg.label_has_gt.astype(bool)).to(device)

    def _cell_gt_rows(self, tensors: dict, width: int, device: torch.device) -> dict:
        """The minibatch's rows of every per-cell GT, by the cells' registered positions."""
        if not self._cell_gts:
            return {}
        from scvi import REGISTRY_KEYS

        if REGISTRY_KEYS.INDICES_KEY not in tensors:
            raise RuntimeError(
                "the minibatch carries no cell indices for the per-cell GTs; train with the "
                "model's train(), which registers them."
            )
        positions = tensors[REGISTRY_KEYS.INDICES_KEY].view(-1).long()
        rows, host_idx = {}, None
        for name, g in self._cell_gts.items():
            if isinstance(g, tuple):  # per group: a gather on the device, no synchronisation
                codes, table = g
                rows[name] = table.index_select(0, codes.index_select(0, positions))
                continue
            if host_idx is None:  # a sparse per-cell matrix is sliced on the host
                host_idx = positions.cpu().numpy()
            block = _padded(g.rows(host_idx), width, f"per-cell GT {name}")
            rows[name] = torch.from_numpy(block).to(device, non_blocking=True)
        return rows

    def _attribution_loss(self, tensors: dict) -> torch.Tensor:
        from scvi import REGISTRY_KEYS

        x, *rest = self._captured
        if self.prior_config.settings.target == "model":
            rest = rest[:1]  # the reconstruction's function of (x_in, batch_index)
        if self._vector_priors is None and self._label_prior is None:
            n_latent = getattr(self.module, "n_latent", None)
            if n_latent is None:  # the encoder's forward samples z: leave the stream as it is
                with torch.no_grad(), torch.random.fork_rng(devices=[]):
                    n_latent = self._explained(x[:1], *(r[:1] for r in rest)).shape[-1]
            self._build(x.shape[-1], n_latent, x.device)
            pending = self.__dict__.pop("_pending_constraints", None)
            if pending:  # a resumed run: the multipliers where the interrupted run left them
                set_constraint_states(self.share_constraints(), pending)
        for prior in (self._vector_priors, self._label_prior):
            if prior is not None:  # validation calls leave the multipliers alone
                prior.train(self.training)
        acts = None
        if self._prefix is not None and self._first_out is not None:
            from attreg_sc.fast.encoder_prefix import covariate_part

            # the prefix's activations from the model's own first product: W_x x + b
            acts = self._first_out - covariate_part(self._encoder, x.shape[-1], *rest)
        # references="label": EG draws each cell's references among its label's cells
        groups = (
            label_reference_groups(tensors[REGISTRY_KEYS.LABELS_KEY],
                                   self.prior_config.unlabeled_code)
            if self.prior_config.settings.references == "label"
            else None
        )
        total = x.new_zeros(())
        if self._vector_priors is not None:
            total = total + self._vector_priors(
                x.detach(),
                gts=self._cell_gt_rows(tensors, x.shape[-1], x.device),
                additional_forward_args=tuple(rest),
                input_activations=acts,
                reference_groups=groups,
            )
        if self._label_prior is not None:
            codes = tensors[REGISTRY_KEYS.LABELS_KEY].long().view(-1)
            keep = self._label_has_gt[codes]
            if int(keep.sum()) >= 2:  # EG draws its references from the labelled cells
                gt = self._label_table[codes[keep]]
                args = tuple(r[keep] for r in rest)
                total = total + self._label_prior(
                    x.detach()[keep],
                    gt=gt,
                    additional_forward_args=args,
                    input_activations=None if acts is None else acts[keep],
                    reference_groups=None if groups is None else groups[keep],
                )
        return total

    def _model_forward(self, *args, **kwargs):
        """The plan's own forward; a distribution refusing non-finite parameters (the
        weights became NaN at an earlier step of the epoch) becomes a
        :class:`~attreg_sc.train.callbacks.NonFiniteLossError` naming that step."""
        from attreg_sc.module import unchecked_distributions
        from attreg_sc.train.callbacks import NonFiniteLossError, non_finite_error

        try:
            with unchecked_distributions():
                return super().forward(*args, **kwargs)
        except ValueError as err:
            if "invalid values" not in str(err):
                raise
            error = non_finite_error(self.step_terms or [], self.current_epoch)
            if error is None:
                error = NonFiniteLossError(
                    f"the model's outputs became non-finite at epoch {self.current_epoch} "
                    f"({str(err).splitlines()[0][:120]}); lower the learning rate or check "
                    "the data for extreme counts. The weights of the last finished epoch "
                    "were restored."
                )
            raise error from None

    def forward(self, *args, **kwargs):
        if self.prior_config is None:
            outputs = self._model_forward(*args, **kwargs)
            if self.training and self.step_terms is not None:
                self._record_terms(outputs[2])
            return outputs
        self._captured, self._first_out, self._armed = None, None, True
        hooks = [self._encoder.register_forward_hook(self._capture_encoder_inputs)]
        first = self._first_linear()
        if first is not None:  # runs before the encoder's own hook: both see one call
            hooks.append(first.register_forward_hook(self._capture_first_layer))
        try:
            inference_outputs, generative_outputs, loss_output = self._model_forward(
                *args, **kwargs
            )
        finally:
            self._armed = False
            for hook in hooks:
                hook.remove()
        if self._captured is None:
            raise RuntimeError(
                f"{type(self.module).__name__}'s forward did not call its latent encoder; "
                "the attribution prior cannot be computed."
            )
        tensors = args[0] if args else kwargs["tensors"]
        stage = "train" if self.training else "validation"
        if not self.prior_enabled:
            l_a = loss_output.loss.new_zeros(())
        elif self.training:
            l_a = self._attribution_loss(tensors)
        else:  # the same draws on every validation call; the training stream untouched
            state = self._generator.get_state()
            self._generator.manual_seed(self.prior_config.settings.seed + VALIDATION_SEED_OFFSET)
            try:
                with torch.enable_grad():
                    l_a = self._attribution_loss(tensors).detach()
            finally:
                self._generator.set_state(state)
        loss_output.loss = loss_output.loss + self.prior_config.w_attr * l_a
        n = int(loss_output.n_obs_minibatch)
        if self.training and self.step_terms is not None:
            self._record_terms(loss_output, l_a)
        name = f"attribution_loss_{stage}"
        if self._fast_logging():  # a weighted mean per epoch, logged at the epoch's end
            self._accumulate_mean(stage, name, l_a, n)
        else:
            attached = getattr(self, "_trainer", None) is not None
            self.log(name, l_a.detach(), on_epoch=True, on_step=False, batch_size=n,
                     sync_dist=attached and self.use_sync_dist)
        return inference_outputs, generative_outputs, loss_output

    def _record_terms(self, loss_output, l_a: torch.Tensor | None = None) -> None:
        """Keep the step's ``[loss, L_R, L_D, L_A]`` (detached, on the device: no host
        synchronisation) for the non-finite check at the epoch's end."""
        n = max(int(loss_output.n_obs_minibatch), 1)
        loss = loss_output.loss.detach()
        self.step_terms.append(
            torch.stack(
                [
                    loss,
                    torch.as_tensor(loss_output.reconstruction_loss_sum).detach() / n,
                    torch.as_tensor(loss_output.kl_local_sum).detach() / n,
                    loss.new_zeros(()) if l_a is None else l_a.detach(),
                ]
            )
        )


def constraint_states(constraints: dict) -> dict[str, dict[str, float]]:
    """Plain values of the share constraints' states (what a checkpoint stores)."""
    return {
        name: {
            "log_multiplier": float(c.log_multiplier),
            "share_average": float(c.share_average),
            "steps": int(c.steps),
        }
        for name, c in constraints.items()
    }


def set_constraint_states(constraints: dict, states: dict) -> None:
    """Put checked states (:func:`constraint_states`) back into the constraints; a state
    for a GT the run does not have is refused."""
    unknown = sorted(set(states) - set(constraints))
    if unknown:
        raise ValueError(f"the checkpoint holds multipliers of unknown GTs {unknown}.")
    for name, state in states.items():
        c = constraints[name]
        c.log_multiplier.fill_(state["log_multiplier"])
        c.share_average.fill_(state["share_average"])
        c.steps.fill_(state["steps"])
        c._updates = state["steps"]


@cache
def attribution_prior_plan(plan_cls: type) -> type:
    """``plan_cls`` (any scvi-tools ``TrainingPlan`` subclass) with the attribution prior:
    ``AttributionPrior<PlanName>``. The same class is returned for the same ``plan_cls``.

    Examples
    --------
    >>> from scvi.train import TrainingPlan
    >>> attribution_prior_plan(TrainingPlan).__name__
    'AttributionPriorTrainingPlan'
    """
    return type(
        f"AttributionPrior{plan_cls.__name__}",
        (AttributionPriorPlanMixin, plan_cls),
        {"__module__": __name__, "__doc__": f"{plan_cls.__name__} plus ``w_A * L_A``."},
    )
