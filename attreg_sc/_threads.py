"""Library code leaves the user's thread settings as it found them.

Some dependencies change torch's intra-op thread count as a side effect: scanpy's
``pp.neighbors`` (through its nearest-neighbour and thread-pool libraries) raised
``torch.get_num_threads()`` from 1 (``OMP_NUM_THREADS=1``) to the number of cores, so a
model trained later in the same process ran with a spinning OpenMP thread, much slower
on a loaded machine and with different numbers. Every call into such code goes through
:func:`torch_threads_unchanged`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["torch_threads_unchanged"]


@contextlib.contextmanager
def torch_threads_unchanged() -> Iterator[None]:
    """Restore torch's intra-op thread count on exit if the body changed it.

    Examples
    --------
    >>> import torch
    >>> n = torch.get_num_threads()
    >>> with torch_threads_unchanged():
    ...     torch.set_num_threads(1)
    >>> torch.get_num_threads() == n
    True
    """
    before = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
