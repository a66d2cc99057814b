"""The training loop: minibatches of sparse rows, KL warm-up, prior, early stopping.

``L = w_R * L_R + w_D * kl_weight(epoch) * L_D + w_A * L_A`` per minibatch, where
``L_A`` is an attreg :class:`~attreg.PriorSet` evaluated on the encoder input of the
minibatch.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from attreg.transfer import to_device
from attreg_sc._io import load_versioned, save_versioned
from attreg_sc.data import CountData
from attreg_sc.train.threads import ThreadPolicy

__all__ = ["TrainingPlan", "train_module", "training_step", "NonFiniteLossError", "EarlyStopping"]

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A loss term or gradient became NaN/inf during training."""


@dataclass
class TrainingPlan:
    """Optimisation settings (all documented in :meth:`attreg_sc.SCARE.train`).

    Parameters
    ----------
    max_epochs, batch_size, lr, weight_decay, kl_warmup_epochs, prior_warmup_epochs
        As in :meth:`attreg_sc.SCARE.train`.
    validation_fraction, early_stopping, patience, grad_clip, seed, progress_bar
        As in :meth:`attreg_sc.SCARE.train`.
    checkpoint_path, checkpoint_every
        As in :meth:`attreg_sc.SCARE.train`.
    w_reconstruction, w_divergence, w_attribution
        ``w_R``, ``w_D`` and ``w_A``.
    """

    max_epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-6
    kl_warmup_epochs: int = 10
    w_reconstruction: float = 1.0
    w_divergence: float = 1.0
    w_attribution: float = 1.0
    prior_warmup_epochs: int = 0
    validation_fraction: float = 0.1
    early_stopping: bool = True
    patience: int = 10
    grad_clip: float | None = None
    seed: int = 0
    progress_bar: bool = True
    checkpoint_path: str | None = None
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        """Refuse settings that would train nothing or nonsense, before any training."""
        positive_ints = {
            "max_epochs": 1,
            "batch_size": 2,  # EG references come from the same minibatch
            "patience": 1,
            "checkpoint_every": 1,
        }
        for name, low in positive_ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
        for name in ("kl_warmup_epochs", "prior_warmup_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}.")
        for name in ("lr", "weight_decay", "w_reconstruction", "w_divergence", "w_attribution"):
            value = getattr(self, name)
            if isinstance(value, bool) or not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
        if self.lr == 0:
            raise ValueError("lr must be positive: with lr = 0 nothing trains.")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(
                f"validation_fraction must be in [0, 1), got {self.validation_fraction!r}."
            )
        if self.grad_clip is not None and not (np.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise ValueError(
                f"grad_clip must be a positive number or None, got {self.grad_clip!r}."
            )

    def kl_weight(self, epoch: int) -> float:
        if self.kl_warmup_epochs <= 0:
            return 1.0
        return min(1.0, (epoch + 1) / self.kl_warmup_epochs)


class EarlyStopping:
    """Stop after ``patience`` checks without a relative improvement of ``min_delta``.

    Examples
    --------
    >>> es = EarlyStopping(patience=2)
    >>> [es.step(v) for v in [10.0, 9.0, 9.0, 9.0]]
    [False, False, False, True]
    >>> es.best, es.best_step
    (9.0, 1)
    """

    def __init__(self, patience: int = 10, min_delta: float = 1e-4) -> None:
        self.patience, self.min_delta = patience, min_delta
        self.best, self.best_step, self.waited, self.n = math.inf, -1, 0, 0

    def step(self, value: float) -> bool:
        """Record ``value``; return True when training should stop."""
        improved = not math.isfinite(self.best) or value < self.best - self.min_delta * abs(
            self.best
        )
        if improved and math.isfinite(value):
            self.best, self.best_step, self.waited = value, self.n, 0
        else:
            self.waited += 1
        self.n += 1
        return self.waited >= self.patience

    @property
    def improved(self) -> bool:
        """Whether the last recorded value was the best so far."""
        return self.waited == 0


def _split(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    perm = rng.permutation(n)
    n_val = int(round(n * fraction)) if n >= 20 else 0
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


_TERMS = ("loss", "reconstruction", "kl", "attribution")
_SYMBOLS = {"loss": "total loss", "reconstruction": "L_R", "kl": "L_D", "attribution": "L_A"}


def make_optimizer(
    parameters: Iterable[torch.nn.Parameter], plan: TrainingPlan, fused: bool | None = None
) -> torch.optim.Adam:
    """Adam with the plan's learning rate and weight decay.

    ``fused=None`` picks the fused (single-kernel) implementation where every parameter
    allows it (floating point on the CPU or CUDA): the same update, 4x faster than the
    per-tensor loop on this project's CPU (a tenth of a plain step at batch 128).
    ``fused=False`` forces the per-tensor loop.
    """
    params = list(parameters)
    if fused is None:
        fused = all(p.dtype.is_floating_point and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(
        params, lr=plan.lr, weight_decay=plan.weight_decay, fused=True if fused else None
    )


def minibatch(
    data: CountData, codes: torch.Tensor, idx: np.ndarray, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts and batch codes of the cells ``idx`` on ``device``, copied without a host
    synchronisation (:func:`attreg.transfer.to_device`)."""
    return data.rows(idx, device), to_device(codes[idx], device)


def training_step(
    module: torch.nn.Module,
    opt: torch.optim.Optimizer,
    counts: torch.Tensor,
    batch_index: torch.Tensor,
    cell_index: np.ndarray,
    plan: TrainingPlan,
    kl_weight: float,
    prior_loss: Callable | None = None,
) -> torch.Tensor:
    """One optimisation step; returns the detached terms ``[loss, L_R, L_D, L_A]``.

    No host synchronisation: the caller checks the returned values when it wants to.
    """
    # module(...) is SCAREModule.loss; calling the module (not .loss) lets a
    # DistributedDataParallel wrapper prepare its gradient synchronisation
    terms = module(counts, batch_index, kl_weight, plan.w_reconstruction, plan.w_divergence)
    loss = terms["loss"]
    l_a = torch.zeros((), device=loss.device)
    if prior_loss is not None:
        l_a = prior_loss(terms["x_in"], batch_index, cell_index, terms["h_first"])
        loss = loss + plan.w_attribution * l_a
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if plan.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(module.parameters(), plan.grad_clip)
    opt.step()
    return torch.stack([loss, terms["reconstruction"], terms["kl_z"] + terms["kl_l"], l_a]).detach()


def _check_finite(step_terms: torch.Tensor, epoch: int) -> None:
    """Raise with the first non-finite step and term (one host sync per epoch)."""
    values = step_terms.cpu()
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        step, col = (int(v) for v in bad.nonzero()[0])
        if col == 0:  # name the culprit term when only the total is non-finite
            col = next((c for c in (1, 2, 3) if bad[step, c]), 0)
        key = _TERMS[col]
        raise NonFiniteLossError(
            f"{_SYMBOLS[key]} ({key}) became {float(values[step, col])} at epoch {epoch}, "
            f"step {step}; lower the learning rate, set grad_clip=, or check the data for "
            "extreme counts. The weights of the last finished epoch were restored."
        )


def train_module(
    module: torch.nn.Module,
    data: CountData,
    plan: TrainingPlan,
    prior_loss: Callable[..., torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
    generators: Sequence[torch.Generator] = (),
    resume: bool = False,
    fingerprint: dict | None = None,
    threads: int | str | None = None,
) -> dict[str, list[float]]:
    """Train ``module`` in place on ``data``; return the per-epoch history.

    ``prior_loss(x_in, batch_index, cell_index, h_first)`` returns ``L_A`` for a
    minibatch (``h_first``: the encoder's first-layer output, reusable by the prior).

    With ``plan.checkpoint_path``, a checkpoint (weights, optimizer, every RNG state --
    numpy's, torch's and those of ``generators`` --, history, early-stopping state) is
    written atomically every ``plan.checkpoint_every`` epochs; ``resume=True`` continues
    from it, giving the same weights as an uninterrupted run (same seed, CPU).

    ``fingerprint``: what the run's result depends on besides ``plan`` (the model's
    settings, a digest of the data and of the GTs: ``SCARE._resume_fingerprint``). It is
    stored in the checkpoint, and a resume whose fingerprint or plan differs is refused
    with the differing settings named (only ``max_epochs`` may change: a longer run).

    ``threads``: torch's CPU thread count during training (see
    :class:`~attreg_sc.train.threads.ThreadPolicy`), restored at the end.

    Parameters
    ----------
    module
        The model (e.g. :class:`attreg_sc.SCAREModule`).
    data
        Counts, batches and library statistics.
    plan
        Optimisation settings.
    prior_loss
        ``L_A`` of a minibatch (``None``: no prior).
    device
        Where to train.
    generators
        Random generators of the prior, checkpointed with the run.
    resume
        Continue from ``plan.checkpoint_path``.
    fingerprint
        What else the run depends on (checked on resume).
    threads
        CPU threads (``None``: leave torch's setting; ``"auto"``; a number).
    """
    with ThreadPolicy(threads) as policy:
        return _train_module(
            module, data, plan, prior_loss, device, generators, resume, fingerprint, policy
        )


def _train_module(
    module, data, plan, prior_loss, device, generators, resume, fingerprint, threads
) -> dict[str, list[float]]:
    from tqdm.auto import tqdm

    rng = np.random.default_rng(plan.seed)
    torch.manual_seed(plan.seed)
    train_idx, val_idx = _split(data.n_cells, plan.validation_fraction, rng)
    if len(train_idx) == 0:
        raise ValueError("no cells to train on.")
    codes = torch.from_numpy(data.batch_codes)
    module.to(device)
    opt = make_optimizer(module.parameters(), plan)
    history: dict[str, list[float]] = {
        k: []
        for k in (
            "loss",
            "reconstruction",
            "kl",
            "attribution",
            "validation_loss",
            "kl_weight",
            "validation_elbo",
        )
    }
    stopper, best_state = EarlyStopping(plan.patience), None
    validation_prior = _validation_prior(prior_loss)
    first_epoch = 0
    fingerprint = {**plan_fingerprint(plan), **(fingerprint or {})}
    if resume:
        state = load_checkpoint(plan.checkpoint_path)
        check_resume(state["fingerprint"], fingerprint, plan.checkpoint_path)
        module.load_state_dict(state["module"])
        opt.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        for g, gs in zip(generators, state["generators"], strict=True):
            g.set_state(gs)
        history = state["history"]
        stopper.__dict__.update(state["stopper"])
        best_state = state["best_state"]
        first_epoch = state["epoch"] + 1
        logger.info("resuming at epoch %d from %s", first_epoch, plan.checkpoint_path)
    bar = tqdm(
        range(first_epoch, plan.max_epochs),
        disable=not plan.progress_bar,
        # the bar names the model it trains: scARE, or the cVAE of a baseline
        desc="scARE" if prior_loss is not None and plan.w_attribution > 0 else "cVAE (no prior)",
        unit="epoch",
        initial=first_epoch,
        total=plan.max_epochs,
    )
    for epoch in bar:
        if epoch > first_epoch:
            threads.after_epoch()
        module.train()
        kl_weight = plan.kl_weight(epoch)
        use_prior = (
            prior_loss is not None and plan.w_attribution > 0 and epoch >= plan.prior_warmup_epochs
        )
        order = rng.permutation(train_idx)
        good_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        step_terms = []
        for start in range(0, len(order), plan.batch_size):
            idx = np.sort(order[start : start + plan.batch_size])
            if len(idx) < 2 and len(order) > 1:
                continue  # a single-cell last batch has no EG reference
            step_terms.append(
                training_step(
                    module,
                    opt,
                    *minibatch(data, codes, idx, device),
                    idx,
                    plan,
                    kl_weight,
                    prior_loss if use_prior else None,
                )
            )
        terms = torch.stack(step_terms)
        try:
            _check_finite(terms, epoch)
        except NonFiniteLossError:
            module.load_state_dict(good_state)
            module.eval()
            raise
        for key, v in zip(_TERMS, terms.mean(0).tolist(), strict=True):
            history[key].append(v)
        history["kl_weight"].append(kl_weight)
        val, val_elbo = _validation_loss(
            module, data, val_idx, codes, plan, device, validation_prior if use_prior else None
        )
        history["validation_loss"].append(val)
        history.setdefault("validation_elbo", []).append(val_elbo)
        bar.set_postfix(loss=f"{history['loss'][-1]:.1f}", val=f"{val:.1f}")
        logger.debug("epoch %d: %s", epoch, {k: v[-1] for k, v in history.items()})
        # the window opens once the objective is complete: KL warmed up, prior switched on
        watching = kl_weight >= 1.0 and (
            prior_loss is None or plan.w_attribution == 0 or epoch >= plan.prior_warmup_epochs
        )
        if plan.early_stopping and len(val_idx) and watching:
            stopper.step(val)
            if stopper.improved:
                best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        if plan.checkpoint_path and (epoch + 1) % plan.checkpoint_every == 0:
            save_checkpoint(
                plan.checkpoint_path,
                {
                    "format_version": CHECKPOINT_VERSION,
                    "epoch": epoch,
                    "module": module.state_dict(),
                    "optimizer": opt.state_dict(),
                    "numpy_rng": rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(),
                    "generators": [g.get_state() for g in generators],
                    "history": history,
                    "stopper": dict(stopper.__dict__),
                    "best_state": best_state,
                    "fingerprint": fingerprint,
                },
            )
        if plan.early_stopping and len(val_idx) and watching and stopper.waited >= stopper.patience:
            logger.info(
                "early stopping at epoch %d: the validation loss did not improve for %d epochs "
                "(best %.3f; its weights are kept)",
                epoch + 1,
                stopper.patience,
                stopper.best,
            )
            break
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return history


CHECKPOINT_VERSION = 3  # 2: safe checksummed container (attreg_sc._io); 3: + fingerprint

# what a resumed run may change: a longer run, another checkpoint file or rhythm, the bar
_RESUMABLE_CHANGES = ("max_epochs", "checkpoint_path", "checkpoint_every", "progress_bar")


def plan_fingerprint(plan: TrainingPlan) -> dict:
    """The plan's settings that a resumed run must share with the interrupted one."""
    return {k: v for k, v in dataclasses.asdict(plan).items() if k not in _RESUMABLE_CHANGES}


def check_resume(saved: dict, current: dict, path) -> None:
    """Refuse to resume when a setting, the data or a GT differs from the checkpoint's."""
    differing = [
        f"{k}: checkpoint {saved.get(k, '(absent)')!r}, now {current.get(k, '(absent)')!r}"
        for k in sorted(set(saved) | set(current))
        if saved.get(k) != current.get(k)
    ]
    if differing:
        raise ValueError(
            f"cannot resume from {path}: the run differs from the interrupted one in "
            f"{'; '.join(differing)}. Resume with the same data and settings (only "
            "max_epochs may grow), or start a new run without resume."
        )


def save_checkpoint(path, payload: dict) -> None:
    """Write a training checkpoint atomically (temporary file + rename)."""
    save_versioned(path, payload)


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, with clear errors."""
    return load_versioned(
        path, CHECKPOINT_VERSION, "checkpoint", hint="Train with checkpoint_path= first."
    )


def _validation_prior(prior_loss: Callable | None) -> Callable | None:
    """The prior as validation calls it: with fixed draws when it offers them (see
    :meth:`attreg_sc.SCARE._prior_loss`), else with its own draws."""
    if prior_loss is None or "validation" not in inspect.signature(prior_loss).parameters:
        return prior_loss
    return functools.partial(prior_loss, validation=True)


@torch.no_grad()
def _validation_loss(
    module, data, idx, codes, plan, device, prior_loss: Callable | None = None
) -> tuple[float, float]:
    """``(objective, elbo)`` on the validation cells: the negative ELBO ``L_R + L_D`` and
    the objective being trained, ``w_R L_R + w_D L_D + w_A L_A`` (``L_A`` when the prior
    is on), which early stopping monitors: selecting by the ELBO alone would restore the
    epoch that fits the data best whatever the prior, undoing it."""
    if len(idx) == 0:
        return float("nan"), float("nan")
    module.eval()
    chunks, sizes = [], []
    for start in range(0, len(idx), 1024):
        rows = idx[start : start + 1024]
        counts, batch_index = minibatch(data, codes, rows, device)
        terms = module.loss(counts, batch_index, 1.0)
        kl = terms["kl_z"] + terms["kl_l"]
        l_a = torch.zeros((), device=kl.device)
        if prior_loss is not None and len(rows) > 1:
            with torch.enable_grad():  # attributions need gradients (no parameter update)
                l_a = prior_loss(terms["x_in"], batch_index, rows, terms["h_first"]).detach()
        objective = (
            plan.w_reconstruction * terms["reconstruction"]
            + plan.w_divergence * kl
            + plan.w_attribution * l_a
        )
        chunks.append(torch.stack([objective, terms["reconstruction"] + kl]))
        sizes.append(len(rows))
    module.train()
    means = torch.stack(chunks).cpu().tolist()  # one host sync per validation pass
    objective = sum(m[0] * s for m, s in zip(means, sizes, strict=True)) / len(idx)
    elbo = sum(m[1] * s for m, s in zip(means, sizes, strict=True)) / len(idx)
    return objective, elbo
