"""Lightning callbacks and a checkpoint format: what scARE adds to scvi-tools' training.

* :class:`ThreadPolicyCallback`: torch's CPU threads for the run (``threads="auto"``:
  the cores other processes leave free, re-measured every epoch), restored at the end.
* :class:`NonFiniteLoss`: a non-finite loss term raises :class:`NonFiniteLossError`
  naming the epoch, step and term, with the last finished epoch's weights restored
  (checked once per epoch: no host synchronisation per step).
* :class:`PriorWarmup`: plain training for the first epochs, then the prior.
* :class:`BestWeightsEarlyStopping`: Lightning's early stopping on the objective being
  trained (``validation_loss``, the prior included), watching only once the objective is
  complete, and restoring the best epoch's weights at the end.
* :class:`EpochCheckpoint`, :class:`ResumeGuard` and :class:`SafeCheckpointIO`: a
  checkpoint every few epochs, in attreg_sc's safe format (no code runs when it is
  read), holding every random state; resuming (``train(ckpt_path=...)``) gives the
  weights of an uninterrupted run, and is refused, naming each difference, when the
  data, a GT or a setting differs.
"""

from __future__ import annotations

import logging
import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.plugins.io import CheckpointIO

from attreg_sc._io import UnsafeFileError, from_safe, read_safe_payload, save_versioned
from attreg_sc.train.threads import ThreadPolicy

__all__ = [
    "NonFiniteLossError",
    "non_finite_error",
    "ThreadPolicyCallback",
    "NonFiniteLoss",
    "PriorWarmup",
    "BestWeightsEarlyStopping",
    "EpochCheckpoint",
    "ResumeGuard",
    "SafeCheckpointIO",
    "CHECKPOINT_FORMAT",
]

logger = logging.getLogger(__name__)

#: version of what :class:`ResumeGuard` adds to a checkpoint
CHECKPOINT_FORMAT = 1
_TERMS = ("loss", "reconstruction", "kl", "attribution")
_SYMBOLS = {"loss": "total loss", "reconstruction": "L_R", "kl": "L_D", "attribution": "L_A"}


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite during training (the last finished epoch's
    weights were restored)."""


def non_finite_error(step_terms: list[torch.Tensor], epoch: int) -> NonFiniteLossError | None:
    """The error naming the epoch's first non-finite step and term, from the plan's
    per-step ``[loss, L_R, L_D, L_A]`` (``None`` when every value is finite).

    Parameters
    ----------
    step_terms
        One ``[loss, L_R, L_D, L_A]`` tensor per step of the epoch.
    epoch
        The epoch (for the message).
    """
    if not step_terms:
        return None
    values = torch.stack(step_terms).cpu()  # one host synchronisation per epoch
    bad = ~torch.isfinite(values)
    if not bool(bad.any()):
        return None
    step, col = (int(v) for v in bad.nonzero()[0])
    if col == 0:  # name the culprit term when only the total is non-finite
        col = next((c for c in (1, 2, 3) if bad[step, c]), 0)
    key = _TERMS[col]
    return NonFiniteLossError(
        f"{_SYMBOLS[key]} ({key}) became {float(values[step, col])} at epoch {epoch}, step "
        f"{step}; lower the learning rate (plan_kwargs={{'lr': ...}}), set "
        "gradient_clip_val=, or check the data for extreme counts. The weights of the last "
        "finished epoch were restored."
    )


class ThreadPolicyCallback(Callback):
    """Run the fit under a :class:`~attreg_sc.train.threads.ThreadPolicy`.

    Parameters
    ----------
    threads
        ``None`` (leave torch's setting), an int, or ``"auto"``.
    """

    def __init__(self, threads: int | str | None) -> None:
        self.policy = ThreadPolicy(threads)  # checks the setting now, before training
        self._active = False

    def on_fit_start(self, trainer, pl_module) -> None:
        self.policy.__enter__()
        self._active = True

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.policy.after_epoch()

    def _restore(self) -> None:
        if self._active:
            self.policy.__exit__(None, None, None)
            self._active = False

    def on_fit_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()


class NonFiniteLoss(Callback):
    """Raise :class:`NonFiniteLossError` when a loss term of the epoch is NaN or inf,
    after restoring the weights the epoch started with.

    The training plan keeps each step's ``[loss, L_R, L_D, L_A]`` on the device; they are
    checked once, when the epoch's training steps are done (before validation)."""

    def __init__(self) -> None:
        self._good: dict[str, torch.Tensor] | None = None
        self._checked = False

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._good = {k: v.detach().clone() for k, v in pl_module.module.state_dict().items()}
        pl_module.step_terms = []
        self._checked = False

    def _check(self, trainer, pl_module) -> None:
        if self._checked or pl_module.step_terms is None:
            return
        self._checked = True
        error = non_finite_error(pl_module.step_terms, trainer.current_epoch)
        pl_module.step_terms = []
        if error is not None:
            self._restore(pl_module)
            raise error

    def _restore(self, pl_module) -> None:
        if self._good is not None:
            pl_module.module.load_state_dict(self._good)
        pl_module.module.eval()

    def on_exception(self, trainer, pl_module, exception) -> None:
        if isinstance(exception, NonFiniteLossError):
            self._restore(pl_module)

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.training or trainer.state.fn == "fit":
            self._check(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._check(trainer, pl_module)

    def on_fit_end(self, trainer, pl_module) -> None:
        pl_module.step_terms = None
        self._good = None


class PriorWarmup(Callback):
    """Train without the prior for the first ``epochs`` epochs.

    Parameters
    ----------
    epochs
        Epochs of plain training.
    """

    def __init__(self, epochs: int) -> None:
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"prior_warmup_epochs must be an integer >= 0, got {epochs!r}.")
        self.epochs = int(epochs)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        pl_module.prior_enabled = trainer.current_epoch >= self.epochs

    def on_fit_end(self, trainer, pl_module) -> None:
        pl_module.prior_enabled = True


class BestWeightsEarlyStopping(EarlyStopping):
    """Lightning's :class:`~lightning.pytorch.callbacks.EarlyStopping` that watches from
    epoch ``start_epoch`` on (once the objective is complete: the KL weight warmed up and
    the prior switched on) and restores the best epoch's weights when training ends.

    Parameters
    ----------
    start_epoch
        First epoch whose validation value counts.
    **kwargs
        :class:`~lightning.pytorch.callbacks.EarlyStopping`'s arguments.
    """

    def __init__(self, start_epoch: int = 0, **kwargs: Any) -> None:
        kwargs.setdefault("monitor", "validation_loss")
        kwargs.setdefault("mode", "min")
        super().__init__(**kwargs)
        self.start_epoch = int(start_epoch)
        self.best_state: dict[str, torch.Tensor] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    def _run_early_stopping_check(self, trainer) -> None:
        if trainer.current_epoch < self.start_epoch:
            return
        stopped = trainer.should_stop
        super()._run_early_stopping_check(trainer)
        if self.wait_count == 0 and self.monitor in trainer.callback_metrics:
            module = trainer.lightning_module.module
            self.best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        if trainer.should_stop and not stopped:
            logger.info(
                "early stopping at epoch %d: %s did not improve for %d epochs (best %.4f; "
                "its weights are kept)",
                trainer.current_epoch + 1,
                self.monitor,
                self.patience,
                float(self.best_score),
            )

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.best_state is not None:
            pl_module.module.load_state_dict(self.best_state)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "best_state": self.best_state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        best = state.pop("best_state", None)
        super().load_state_dict(state)
        self.best_state = best


class EpochCheckpoint(Callback):
    """Write a checkpoint to ``path`` every ``every`` epochs (atomically, in the format of
    the trainer's checkpoint I/O: :class:`SafeCheckpointIO`), with the epoch's metrics
    (the training plan logs them first).

    Parameters
    ----------
    path
        The checkpoint file.
    every
        Epochs between checkpoints.
    """

    def __init__(self, path: str | os.PathLike, every: int = 1) -> None:
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"checkpoint_every must be an integer >= 1, got {every!r}.")
        self.path, self.every = Path(path), int(every)
        if self.path.is_dir():
            raise IsADirectoryError(
                f"checkpoint_path {self.path} is a folder; give the checkpoint file's path."
            )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if (trainer.current_epoch + 1) % self.every == 0:
            flush = getattr(pl_module, "log_epoch_metrics", None)
            if flush is not None:  # the plan's per-epoch values, before they are saved
                flush("train")
            trainer.save_checkpoint(self.path, weights_only=False)


def _rng_states(pl_module) -> dict[str, Any]:
    legacy = np.random.get_state()  # noqa: NPY002 - the global state a resume restores
    py_version, py_state, py_gauss = random.getstate()
    generator = getattr(pl_module, "prior_generator", None)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": str(legacy[0]),
            "key": torch.from_numpy(np.asarray(legacy[1], dtype=np.int64)),
            "pos": int(legacy[2]),
            "has_gauss": int(legacy[3]),
            "cached_gaussian": float(legacy[4]),
        },
        "python": {"version": int(py_version), "state": list(py_state), "gauss": py_gauss},
        "prior": None if generator is None else generator.get_state(),
    }


def _checked_rng_states(states: Any, path: str) -> dict[str, Any]:
    """The checkpoint's random states, each checked (type, size) before it is used."""

    def bad(what: str) -> ValueError:
        return ValueError(f"{path}: the checkpoint's {what} is malformed; it was not written "
                          "by SCARE.train(checkpoint_path=...) or was altered.")

    if not isinstance(states, dict):
        raise bad("random states")
    reference = torch.get_rng_state()
    for key in ("torch", "prior"):
        t = states.get(key)
        if key == "prior" and t is None:
            continue
        if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.shape != reference.shape:
            raise bad(f"{key} random state")
    cuda = states.get("cuda", [])
    if not isinstance(cuda, list) or not all(isinstance(t, torch.Tensor) for t in cuda):
        raise bad("CUDA random state")
    numpy_state = states.get("numpy")
    if (
        not isinstance(numpy_state, dict)
        or numpy_state.get("name") != "MT19937"
        or not isinstance(numpy_state.get("key"), torch.Tensor)
        or tuple(numpy_state["key"].shape) != (624,)
        or not isinstance(numpy_state.get("pos"), int)
        or not 0 <= numpy_state["pos"] <= 624
    ):
        raise bad("numpy random state")
    py = states.get("python")
    if (
        not isinstance(py, dict)
        or not isinstance(py.get("state"), list)
        or len(py["state"]) != 625
        or not all(isinstance(v, int) for v in py["state"])
    ):
        raise bad("Python random state")
    return states


def _set_rng_states(states: dict[str, Any], pl_module) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    n = states["numpy"]
    key = n["key"].numpy().astype(np.uint32)
    state = (n["name"], key, n["pos"], n["has_gauss"], n["cached_gaussian"])
    np.random.set_state(state)  # noqa: NPY002 - the global state of the interrupted run
    py = states["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    generator = getattr(pl_module, "prior_generator", None)
    if generator is not None and states["prior"] is not None:
        generator.set_state(states["prior"])


def _setting_defaults(keys: set[str]) -> dict[str, str]:
    """The fingerprint entries (``prior.<field>``) of the default prior settings among
    ``keys``."""
    from attreg_sc.settings import PriorSettings

    defaults = {f"prior.{k}": repr(v) for k, v in PriorSettings().to_dict().items()}
    return {k: defaults[k] for k in keys if k in defaults}


class ResumeGuard(Callback):
    """Makes a resumed run equal an uninterrupted one, and refuses a resume that could
    not be.

    Saved with every checkpoint: the run's ``fingerprint`` (every setting, and digests of
    the data and of each GT), every random state (torch's, CUDA's, numpy's, Python's and
    the prior's) and the history so far. On resume, :meth:`check` runs as the checkpoint
    is read (:class:`SafeCheckpointIO`), before anything of it is used: its epoch, step and
    random states are checked, and the fingerprints compared (a difference is refused,
    naming each). The random states and the history are restored when training starts.

    Parameters
    ----------
    fingerprint
        What the run's result depends on; only ``max_epochs`` may differ on resume.
    max_epochs
        The resumed run's ``max_epochs``.
    """

    def __init__(self, fingerprint: dict[str, Any], max_epochs: int | None = None) -> None:
        self.fingerprint = dict(fingerprint)
        self.max_epochs = max_epochs
        self._states: dict[str, Any] | None = None
        self._history: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return "attreg_sc.ResumeGuard"

    def state_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "format": CHECKPOINT_FORMAT}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Checked already, as the file was read (:meth:`check`)."""

    def check(self, checkpoint: dict[str, Any], path: str) -> None:
        """Refuse a checkpoint this run cannot resume from, naming the field or setting."""
        ours = checkpoint.get("attreg_sc")
        if not isinstance(ours, dict) or ours.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"{path} was not written by SCARE.train(checkpoint_path=...) (no attreg_sc "
                "section): resume only from such checkpoints."
            )
        for field in ("epoch", "global_step"):
            value = checkpoint.get(field)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 10**9:
                raise ValueError(
                    f"{path}: the checkpoint's {field} is {value!r}; expected a count >= 0. "
                    "It was altered or is not a training checkpoint."
                )
        saved = (checkpoint.get("callbacks") or {}).get(self.state_key, {}).get("fingerprint")
        if not isinstance(saved, dict):
            raise ValueError(f"{path} holds no run fingerprint; it cannot be resumed safely.")
        # a prior setting added after the checkpoint was written ran at its default then
        saved = {**_setting_defaults(set(self.fingerprint) - set(saved)), **saved}
        differing = [
            f"{k}: checkpoint {saved.get(k, '(absent)')!r}, now "
            f"{self.fingerprint.get(k, '(absent)')!r}"
            for k in sorted(set(saved) | set(self.fingerprint))
            if saved.get(k) != self.fingerprint.get(k)
        ]
        if differing:
            raise ValueError(
                "cannot resume: the run differs from the interrupted one in "
                f"{'; '.join(differing)}. Resume with the same data and settings (only "
                "max_epochs may grow), or start a new run without ckpt_path."
            )
        if self.max_epochs is not None and 0 <= self.max_epochs <= checkpoint["epoch"]:
            raise ValueError(
                f"{path} was written after epoch {checkpoint['epoch'] + 1}; max_epochs="
                f"{self.max_epochs} leaves nothing to train. Raise max_epochs to continue."
            )
        self._states = _checked_rng_states(ours.get("rng"), path)
        self._history = _checked_history(ours.get("history"), path)
        self._constraints = _checked_constraints(ours.get("constraints"), path)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        from attreg_sc.train.plan import constraint_states

        constraints = getattr(pl_module, "share_constraints", None)
        checkpoint["attreg_sc"] = {
            "format": CHECKPOINT_FORMAT,
            "rng": _rng_states(pl_module),
            "history": _history_so_far(trainer),
            "constraints": constraint_states(constraints() if constraints else {}),
        }

    def on_train_start(self, trainer, pl_module) -> None:
        if getattr(self, "_constraints", None):  # applied when the priors are built
            pl_module._pending_constraints = self._constraints
            self._constraints = None
        if self._states is not None:
            _set_rng_states(self._states, pl_module)
            self._states = None
        if self._history:
            _restore_history(trainer, self._history)
            self._history = None


def _history_so_far(trainer) -> dict[str, Any]:
    """The model's history up to now: earlier ``train`` calls' and this run's epochs
    (scvi-tools' logger), as plain per-key lists."""
    import pandas as pd

    model = getattr(trainer, "_model", None)  # scvi-tools' TrainRunner sets it
    before = getattr(model, "history_", None) if getattr(model, "is_trained_", False) else None
    now = dict(getattr(getattr(trainer, "logger", None), "history", None) or {})
    epoch = trainer.current_epoch
    for key, value in trainer.callback_metrics.items():  # this epoch's, not yet logged
        frame = now.get(key)
        if key.endswith("_step") or (frame is not None and epoch in frame.index):
            continue
        row = pd.DataFrame({key: [float(value)]}, index=[epoch])
        now[key] = row if frame is None else pd.concat([frame, row])
    out: dict[str, Any] = {}
    for key in set(before or {}) | set(now):
        parts = [f[key] for f in (before or {}, now) if isinstance(f.get(key), pd.DataFrame)]
        values = [float(v) for p in parts for v in p.to_numpy().ravel()]
        out[str(key)] = values
    return out


def _checked_constraints(states: Any, path: str) -> dict[str, dict[str, float]]:
    """The checkpoint's target-share multipliers, each field checked (absent: none)."""
    if states is None:
        return {}
    bad = ValueError(f"{path}: the checkpoint's target-share multipliers are malformed; it "
                     "was not written by SCARE.train(checkpoint_path=...) or was altered.")
    if not isinstance(states, dict) or len(states) > 10_000:
        raise bad
    for name, state in states.items():
        if not isinstance(name, str) or not isinstance(state, dict):
            raise bad
        if set(state) != {"log_multiplier", "share_average", "steps"}:
            raise bad
        lm, avg, steps = state["log_multiplier"], state["share_average"], state["steps"]
        if not isinstance(lm, float) or not math.isfinite(lm) or abs(lm) > 50:
            raise bad
        if not isinstance(avg, float) or not (math.isnan(avg) or 0.0 <= avg <= 1.0):
            raise bad
        if isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps < 10**12:
            raise bad
    return states


def _checked_history(history: Any, path: str) -> dict[str, list[float]]:
    if history is None:
        return {}
    if not isinstance(history, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and len(v) <= 10**6
        and all(isinstance(x, float) for x in v)
        for k, v in history.items()
    ):
        raise ValueError(f"{path}: the checkpoint's history is malformed.")
    return history


def _restore_history(trainer, history: dict[str, list[float]]) -> None:
    """Give the model the interrupted run's history; scvi-tools appends this run's."""
    import pandas as pd

    model = getattr(trainer, "_model", None)
    if model is None:
        return
    model.history_ = {k: pd.DataFrame({k: v}, index=pd.RangeIndex(len(v), name="epoch"))
                      for k, v in history.items()}
    model.is_trained_ = True


class SafeCheckpointIO(CheckpointIO):
    """Lightning checkpoint I/O in attreg_sc's safe format: written atomically with a
    checksum, read only from a regular local file (size-capped) with
    ``torch.load(weights_only=True)``, so a checkpoint cannot run code when resumed.

    Parameters
    ----------
    guard
        Checks a checkpoint as it is read, before Lightning uses any of it
        (:meth:`ResumeGuard.check`).
    """

    def __init__(self, guard: ResumeGuard | None = None) -> None:
        self.guard = guard

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("SafeCheckpointIO takes no storage_options.")
        save_versioned(path, checkpoint)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        text = str(path)
        if "://" in text:
            raise ValueError(f"{text}: only local checkpoint files are read.")
        try:
            raw = read_safe_payload(path, "training checkpoint",
                                    hint="Train with checkpoint_path= first.")
            checkpoint = from_safe(raw)
        except UnsafeFileError as err:
            raise ValueError(str(err)) from None
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise ValueError(f"{text} is not a training checkpoint (no state_dict).")
        if self.guard is not None:
            self.guard.check(checkpoint, text)
        return checkpoint

    def remove_checkpoint(self, path) -> None:
        raise NotImplementedError(
            "attreg_sc's checkpoints are never deleted by training; remove them yourself."
        )
