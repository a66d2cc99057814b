"""Several input tensors attributed at once (captum's tuple inputs).

A tuple ``(x_1, ..., x_k)`` of tensors with the same number of rows is packed into one
``(n, d_1 + ... + d_k)`` tensor (each flattened); the forward function sees the tuple
again (:class:`PackedForward` splits and reshapes), and the attributions are split back
into one tensor per input. Path attributions act coordinate by coordinate, so this is
exact: IG, EG and the gradient methods give for each input what they would give with
the others held as the same path's points. EG's ``"batch"`` references take the whole
tuple from another sample; baselines and background references may be tuples too.

Examples
--------
>>> import torch
>>> from torch import nn
>>> import attreg
>>> class TwoInputs(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.a, self.b = nn.Linear(3, 1), nn.Linear(2, 1)
...     def forward(self, x, z):
...         return self.a(x) + self.b(z)
>>> xa, xz = torch.randn(4, 3), torch.randn(4, 2)
>>> ax, az = attreg.IntegratedGradients(TwoInputs()).attribute((xa, xz), n_steps=4)
>>> ax.shape, az.shape
(torch.Size([4, 3]), torch.Size([4, 2]))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["PackedForward", "TuplePacking"]


class TuplePacking:
    """Pack a tuple of ``(n, ...)`` tensors into ``(n, D)`` and split attributions back."""

    def __init__(self, inputs: Sequence[torch.Tensor]) -> None:
        if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
            raise TypeError("tuple inputs must be a non-empty tuple of tensors.")
        n = inputs[0].shape[0] if inputs[0].ndim else None
        for i, t in enumerate(inputs):
            if t.ndim < 1 or t.shape[0] != n:
                raise ValueError(
                    f"tuple input {i} has shape {tuple(t.shape)}; every input needs the same "
                    f"first (batch) dimension ({n})."
                )
            if not t.is_floating_point():
                raise TypeError(
                    f"tuple input {i} is {t.dtype}: attributions need floating inputs (for "
                    "token ids, take the attributions at the embedding with layer=)."
                )
        dtypes = {t.dtype for t in inputs}
        if len(dtypes) > 1:
            raise TypeError(f"tuple inputs have different dtypes {sorted(map(str, dtypes))}.")
        self.n = n
        self.shapes = [tuple(t.shape[1:]) for t in inputs]
        self.sizes = [math.prod(s) for s in self.shapes]

    def pack(self, parts: Sequence[torch.Tensor], name: str = "inputs") -> torch.Tensor:
        """``(rows, D)`` from a tuple shaped like the inputs (any number of rows)."""
        if len(parts) != len(self.shapes):
            raise ValueError(
                f"{name} has {len(parts)} tensors; the inputs have {len(self.shapes)}."
            )
        like = next((p for p in parts if isinstance(p, torch.Tensor) and p.ndim), None)
        rows = like.shape[0] if like is not None else 1
        dtype = like.dtype if like is not None else torch.get_default_dtype()
        parts = [  # captum allows a number per input (e.g. baselines=(zeros, 0.1))
            torch.full((rows, *shape), float(p), dtype=dtype)
            if not isinstance(p, torch.Tensor) or p.ndim == 0
            else p
            for p, shape in zip(parts, self.shapes, strict=True)
        ]
        if len({p.shape[0] for p in parts}) > 1:
            parts = [p.expand(max(q.shape[0] for q in parts), *p.shape[1:]) for p in parts]
        rows = parts[0].shape[0]
        flat = []
        for i, (p, shape) in enumerate(zip(parts, self.shapes, strict=True)):
            if tuple(p.shape[1:]) != shape:
                p = torch.broadcast_to(p, (rows, *shape)) if p.ndim == len(shape) else p
                if tuple(p.shape[1:]) != shape:
                    raise ValueError(
                        f"{name}[{i}] has shape {tuple(p.shape)}; expected (rows, *{shape})."
                    )
            flat.append(p.reshape(rows, -1))
        return torch.cat(flat, dim=1)

    def split(self, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The tuple from ``(..., D)`` attributions (leading dims kept, e.g. directions)."""
        parts = flat.split(self.sizes, dim=-1)
        lead = flat.shape[:-1]
        return tuple(p.reshape(*lead, *s) for p, s in zip(parts, self.shapes, strict=True))


class PackedForward(nn.Module):
    """``forward_func`` as a function of the packed ``(n, D)`` tensor."""

    def __init__(self, forward_func: Callable, packing: TuplePacking) -> None:
        super().__init__()
        self.forward_func = forward_func
        self.packing = packing

    def forward(self, flat: torch.Tensor, *args: Any) -> Any:
        return self.forward_func(*self.packing.split(flat), *args)


def pack_argument(value: Any, packing: TuplePacking, name: str) -> Any:
    """A tuple-valued ``baselines``/``references`` packed like the inputs (else as is)."""
    if isinstance(value, (tuple, list)):
        return packing.pack(list(value), name)
    return value
