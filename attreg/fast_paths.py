"""One switch for every speed path: the reference math alone, or with its accelerations.

attreg and attreg_sc compute the same values two ways: the reference composition of
PyTorch operations, and faster forms of parts of it, each tested against the
reference:

* oneDNN products for wide float32 CPU layers (:mod:`attreg.cpu_matmul`);
* closed-form input gradients (a forward function's ``reduced_gradient``; attreg_sc's
  encoder block) instead of autograd;
* path attributions interpolated in a first linear layer's output
  (:class:`~attreg.attr.LinearPrefix`) instead of the input;
* fused losses with hand-written backwards (``abs_minmax`` + MSE, ``share`` +
  ``outside_share``) and the fused mean of products of Expected Gradients;
* attreg_sc's float32 CPU digamma for the negative-binomial likelihood's derivative,
  and FSSF's first-layer reuse;
* attreg_sc's reads of a backed .h5ad's rows while training, through a handle without
  HDF5's chunk cache (the same bytes).

``set_fast_paths(False)`` (or ``ATTREG_FAST_PATHS=0`` in the environment before the
import) turns all of them off: every value then comes from the reference math. Use it
to check a surprising result, or to compare the two; CI runs the numerical tests both
ways. Not switched: attreg_sc's dropout sampler (same distribution from
``torch.rand``; switching it would change a seeded run's draws, not its math).

Examples
--------
>>> import attreg
>>> with attreg.fast_paths(False):
...     attreg.fast_paths_enabled()
False
>>> attreg.fast_paths_enabled()
True
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["fast_paths", "fast_paths_enabled", "set_fast_paths"]

_OFF = ("0", "false", "off", "no")
_enabled: bool = os.environ.get("ATTREG_FAST_PATHS", "1").strip().lower() not in _OFF


def fast_paths_enabled() -> bool:
    """Whether the accelerated forms are in use (default ``True``)."""
    return _enabled


def set_fast_paths(enabled: bool) -> bool:
    """Turn every fast path on or off for the process; return the previous setting.

    Parameters
    ----------
    enabled
        ``False``: reference math only.
    """
    global _enabled
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True or False, got {enabled!r}.")
    previous, _enabled = _enabled, enabled
    return previous


@contextlib.contextmanager
def fast_paths(enabled: bool) -> Iterator[None]:
    """Context manager: :func:`set_fast_paths` for the body, restored afterwards.

    Parameters
    ----------
    enabled
        ``True``: attreg's accelerations on; ``False``: the reference math only.
    """
    previous = set_fast_paths(enabled)
    try:
        yield
    finally:
        set_fast_paths(previous)
