"""Host-to-device copies that do not stall a training step.

``tensor.to("cuda")`` from ordinary (pageable) host memory is a synchronising copy:
PyTorch waits for the stream, so the CPU cannot queue the rest of the step while the GPU
works through what is already queued. A training step makes a few such copies each
time (the minibatch's counts and batch codes, per-cell ground-truth rows, the random
references and path positions drawn with a CPU generator for reproducibility, IG's
quadrature). :func:`to_device` makes them without a host synchronisation: a CPU tensor
bound for CUDA is staged in pinned memory (PyTorch's caching host allocator, which keeps
the staging block until the copy has finished) and copied with ``non_blocking=True``.
Other copies are ``Tensor.to``.

Meant for tensors the caller has just made and will not write to again (a pinned input
is copied from in place, so writing to it before the copy ends would change what
arrives).

Examples
--------
>>> import torch
>>> from attreg.transfer import to_device
>>> t = torch.arange(4)
>>> to_device(t, "cpu") is t
True
"""

from __future__ import annotations

import torch

__all__ = ["to_device"]

# device types whose host-to-device copies go through pinned memory, asynchronously
ASYNC_DEVICE_TYPES: tuple[str, ...] = ("cuda",)


def _pinned(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.pin_memory()


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device``, without a host synchronisation for a CPU -> CUDA copy.

    Parameters
    ----------
    tensor
        Any tensor; returned as is when it is already on ``device``.
    device
        The target device.

    Returns
    -------
    torch.Tensor
        The tensor on ``device`` (same dtype and values).
    """
    device = torch.device(device)
    if tensor.device.type == "cpu" and device.type in ASYNC_DEVICE_TYPES:
        return _pinned(tensor).to(device, non_blocking=True)
    return tensor.to(device)
