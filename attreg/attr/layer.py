"""Attributions at a layer: the input or output of any submodule instead of the model's input.

``LayerTarget(model, layer)`` is a forward function of the layer's activations: its
forward ``(activations, x, *args)`` runs ``model(x, *args)`` with ``layer``'s output (or
input) replaced by ``activations``. Every attribution method then works on it with the
activations as inputs and ``x`` as an additional forward argument (repeated for every
path point or reference like any per-sample argument), so that

* an embedding model gets one attribution per token (``layer=`` the ``nn.Embedding``,
  attributions summed over the embedding dimension);
* token ids and other integer inputs are fine: the gradient is taken with respect to the
  activations, never the ids;
* the parameters before the layer still train: :meth:`LayerTarget.activations` computes
  the activations with their graph.

Examples
--------
>>> import torch
>>> from torch import nn
>>> import attreg
>>> model = nn.Sequential(nn.Embedding(50, 8), nn.Flatten(), nn.Linear(6 * 8, 1))
>>> at = LayerTarget(model, model[0])
>>> ids = torch.randint(0, 50, (4, 6))
>>> emb = at.activations(ids)
>>> attr = attreg.IntegratedGradients(at).attribute(emb, additional_forward_args=(ids,))
>>> attr.sum(-1).shape  # one attribution per token
torch.Size([4, 6])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["LayerTarget", "sum_trailing"]


class LayerTarget(nn.Module):
    """``model`` as a function of ``layer``'s output (``at="output"``) or first input
    (``at="input"``).

    Parameters
    ----------
    model
        The whole model (``nn.Module`` or callable): ``model(x, *args) -> output``.
    layer
        A submodule that runs once per forward pass.
    at
        ``"output"`` (default) or ``"input"`` (the first positional input of ``layer``).
    """

    def __init__(self, model: Callable, layer: nn.Module, at: str = "output") -> None:
        super().__init__()
        if not isinstance(layer, nn.Module):
            raise TypeError(
                f"layer must be an nn.Module (a submodule), got {type(layer).__name__}."
            )
        if at not in ("output", "input"):
            raise ValueError(f"at must be 'output' or 'input', got {at!r}.")
        if isinstance(model, nn.Module) and not any(m is layer for m in model.modules()):
            raise ValueError(
                f"{type(layer).__name__} is not a submodule of the model: give the layer "
                "object the model calls (e.g. model.embedding)."
            )
        self.model = model
        self.layer = layer
        self.at = at

    def activations(self, x: Any, *args: Any) -> torch.Tensor:
        """The layer's activations for ``x`` (with their graph to earlier parameters)."""
        seen: list[torch.Tensor] = []

        def grab_output(module, inputs, output):
            seen.append(output)

        def grab_input(module, inputs):
            seen.append(inputs[0])

        handle = (
            self.layer.register_forward_hook(grab_output)
            if self.at == "output"
            else self.layer.register_forward_pre_hook(grab_input)
        )
        try:
            self.model(x, *args)
        finally:
            handle.remove()
        return self._one(seen)

    def forward(self, activations: torch.Tensor, x: Any, *args: Any) -> Any:
        seen: list[int] = []

        def put_output(module, inputs, output):
            seen.append(1)
            if tuple(output.shape) != tuple(activations.shape):
                raise ValueError(
                    f"the layer's output has shape {tuple(output.shape)} but the activations "
                    f"given have {tuple(activations.shape)}; x and the activations must "
                    "have the same number of rows."
                )
            return activations

        def put_input(module, inputs):
            seen.append(1)
            return (activations, *inputs[1:])

        handle = (
            self.layer.register_forward_hook(put_output)
            if self.at == "output"
            else self.layer.register_forward_pre_hook(put_input)
        )
        try:
            out = self.model(x, *args)
        finally:
            handle.remove()
        self._one(seen)
        return out

    def _one(self, seen: list) -> Any:
        if len(seen) != 1:
            raise ValueError(
                f"the layer ran {len(seen)} times in one forward pass; attributions at a "
                "layer need a layer that runs exactly once (not a shared or skipped module)."
            )
        return seen[0]


def sum_trailing(attributions: torch.Tensor, keep: int) -> torch.Tensor:
    """Sum every dimension after the first ``keep`` (e.g. the embedding dimension of
    ``(n, tokens, emb)`` attributions with ``keep=2``).

    Parameters
    ----------
    attributions
        Attributions ``(n, ...)``.
    keep
        Leading dimensions kept.
    """
    if attributions.ndim <= keep:
        return attributions
    return attributions.sum(dim=tuple(range(keep, attributions.ndim)))
