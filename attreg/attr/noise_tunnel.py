"""NoiseTunnel: SmoothGrad, SmoothGrad² and VarGrad around any attribution method,
differentiable (captum's ``NoiseTunnel``, usable inside a prior).

Each sample is copied ``nt_samples`` times with Gaussian noise of standard deviation
``stdevs`` added; the method attributes all copies in one call, and the maps of a
sample's copies are aggregated: their mean (``"smoothgrad"``), the mean of their squares
(``"smoothgrad_sq"``) or their variance (``"vargrad"``, ``mean(a^2) - mean(a)^2``).

Examples
--------
>>> import torch
>>> from torch import nn
>>> import attreg
>>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
>>> smooth = NoiseTunnel(attreg.InputGradient(model), nt_samples=8, stdevs=0.1)
>>> smooth.attribute(torch.randn(5, 4), generator=torch.Generator().manual_seed(0)).shape
torch.Size([5, 4])
"""

from __future__ import annotations

from typing import Any

import torch

from attreg._validation import check_noise_sd, check_positive_int
from attreg.attr._base import Attribution
from attreg.attr._gradients import expand_additional_args
from attreg.reducers import DirectionReducer

__all__ = ["NT_TYPES", "NoiseTunnel"]

NT_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")


class NoiseTunnel(Attribution):
    """Average (or square-average, or vary) a method's attributions over noisy copies.

    Parameters
    ----------
    method
        Any attribution method (its forward function, reducer, differentiability and
        checks are used). Not with a direction reducer (each noisy copy would draw its own
        directions).
    nt_type, nt_samples, stdevs
        Defaults of :meth:`attribute`: ``"smoothgrad"``, 5 copies, noise sd 1.0 (captum's).
    """

    def __init__(
        self,
        method: Attribution,
        nt_type: str = "smoothgrad",
        nt_samples: int = 5,
        stdevs: float = 1.0,
    ) -> None:
        if not isinstance(method, Attribution):
            raise TypeError(f"method must be an attreg attribution method, got {method!r}.")
        if isinstance(method.reducer, DirectionReducer):
            raise ValueError(
                "NoiseTunnel with a direction reducer would draw other directions for each "
                "noisy copy of a sample; use a scalar reducer (sum, one output) or fixed "
                "Directions."
            )
        super().__init__(
            method.forward_func,
            method.reducer,
            differentiable=method.differentiable,
            check_batchnorm=method.check_batchnorm,
            check_inputs=method.check_inputs,
        )
        self.method = method
        self.nt_type, self.nt_samples, self.stdevs = _check(nt_type, nt_samples, stdevs)

    @property
    def multiply_by_inputs(self) -> bool:
        return self.method.multiplies_by_inputs

    def attribute(
        self,
        inputs: torch.Tensor,
        nt_type: str | None = None,
        nt_samples: int | None = None,
        stdevs: float | None = None,
        generator: torch.Generator | None = None,
        target: int | torch.Tensor | None = None,
        additional_forward_args: Any = None,
        nt_samples_batch_size: int | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Aggregated attributions shaped like ``inputs``; ``kwargs`` go to the method
        (e.g. ``baselines``/``n_steps`` for IG, ``references`` for EG: a background
        tensor there, since "batch" references could be noisy copies of the sample).

        ``nt_samples_batch_size``: attribute at most this many noisy copies of the batch
        per call (bounds memory; the same noise, the same result)."""
        nt_type, k, sd = _check(
            nt_type or self.nt_type,
            self.nt_samples if nt_samples is None else nt_samples,
            self.stdevs if stdevs is None else stdevs,
        )
        if not isinstance(inputs, torch.Tensor) or inputs.ndim < 1:
            raise TypeError("inputs must be a tensor of shape (n_samples, ...).")
        n = inputs.shape[0]
        dev = generator.device if generator is not None else inputs.device
        noise = torch.randn((k, *inputs.shape), generator=generator, device=dev)
        noisy = inputs.unsqueeze(0) + sd * noise.to(inputs.device, inputs.dtype)
        per_call = (
            k
            if nt_samples_batch_size is None
            else check_positive_int(nt_samples_batch_size, "nt_samples_batch_size")
        )
        if "generator" in _method_parameters(self.method):
            kwargs["generator"] = generator
        parts = []
        for s0 in range(0, k, per_call):
            c = min(k, s0 + per_call) - s0
            parts.append(
                self._attribute_copies(
                    noisy[s0 : s0 + c], n, c, target, additional_forward_args, dict(kwargs)
                )
            )
        deltas = None
        if isinstance(parts[0], tuple):  # (attributions, convergence delta) per chunk
            deltas = torch.cat([d for _, d in parts])
            parts = [a for a, _ in parts]
        attr = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)  # (k, n, ...)
        out = self._aggregate(attr, nt_type)
        return out if deltas is None else (out, deltas)

    @staticmethod
    def _aggregate(attr: torch.Tensor, nt_type: str) -> torch.Tensor:
        if nt_type == "smoothgrad":
            return attr.mean(0)
        squares = attr.square().mean(0)
        if nt_type == "smoothgrad_sq":
            return squares
        return squares - attr.mean(0).square()

    def _attribute_copies(self, noisy, n, c, target, additional_forward_args, kwargs):
        """Attributions of ``c`` noisy copies ``(c, n, ...)`` in one call -> ``(c, n, ...)``."""
        flat = noisy.reshape(c * n, *noisy.shape[2:])
        if isinstance(target, torch.Tensor) and target.ndim >= 1 and target.shape[0] == n:
            target = target.repeat(c)
        baselines = kwargs.get("baselines")
        if isinstance(baselines, torch.Tensor) and baselines.ndim == noisy.ndim - 1:
            if baselines.shape[0] == n and n > 1:
                kwargs["baselines"] = baselines.repeat(c, *([1] * (baselines.ndim - 1)))
        out = self.method.attribute(
            flat,
            target=target,
            additional_forward_args=expand_additional_args(additional_forward_args, n, c),
            **kwargs,
        )
        if isinstance(out, tuple):  # return_convergence_delta=True: one delta per copy
            return out[0].reshape(c, n, *out[0].shape[1:]), out[1]
        return out.reshape(c, n, *out.shape[1:])


def _method_parameters(method: Attribution) -> set[str]:
    import inspect

    return set(inspect.signature(method.attribute).parameters)


def _check(nt_type: str, nt_samples: int, stdevs: float) -> tuple[str, int, float]:
    if nt_type not in NT_TYPES:
        raise ValueError(f"unknown nt_type {nt_type!r}; use one of {NT_TYPES}.")
    return nt_type, check_positive_int(nt_samples, "nt_samples"), check_noise_sd(stdevs)
