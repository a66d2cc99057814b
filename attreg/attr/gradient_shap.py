"""GradientShap (captum's form): Expected Gradients with Gaussian noise on the inputs.

For each input, ``n_samples`` draws of a baseline ``r`` from a distribution (a tensor of
rows, or a callable returning one), a noise ``e ~ N(0, stdevs^2)`` and ``alpha ~ U(0, 1)``:

.. math:: \\phi(x) = \\frac1k \\sum_s (x + e_s - r_s) \\odot
          \\frac{\\partial F(r_s + \\alpha_s (x + e_s - r_s))}{\\partial x}

(without the factor when ``multiply_by_inputs=False``). With ``stdevs = 0`` this is
:class:`~attreg.attr.ExpectedGradients` with a background. ``return_convergence_delta``
gives one completeness error per draw, ``sum(phi_s) - (F(x + e_s) - F(r_s))``, ordered
sample by sample (``(n * n_samples,)``, as captum's).

Examples
--------
>>> import torch
>>> model = torch.nn.Linear(3, 1)
>>> x, background = torch.randn(4, 3), torch.zeros(10, 3)
>>> attr, delta = GradientShap(model).attribute(x, background, n_samples=5,
...                                             return_convergence_delta=True)
>>> attr.shape, delta.shape, bool(delta.abs().max() < 1e-5)
(torch.Size([4, 3]), torch.Size([20]), True)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from attreg._validation import check_finite, check_noise_sd, check_positive_int
from attreg.attr._base import PathAttribution, n_directions
from attreg.attr._gradients import expand_additional_args, forward_reduced, gradients_at
from attreg.attr.integrated_gradients import call_baselines

__all__ = ["GradientShap"]


class GradientShap(PathAttribution):
    """Expected Gradients over a baseline distribution, with input noise (captum's
    ``GradientShap``); differentiable like every attreg method.

    Parameters
    ----------
    forward_func, reducer, differentiable, check_batchnorm, check_inputs
        See :class:`~attreg.attr._base.Attribution`.
    multiply_by_inputs
        Multiply the gradients by ``x + e - r`` (default, SHAP values).
    """

    def attribute(
        self,
        inputs: torch.Tensor,
        baselines: torch.Tensor | Callable,
        n_samples: int = 5,
        stdevs: float = 0.0,
        target: int | torch.Tensor | None = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Attributions shaped like ``inputs`` (and the per-draw deltas if asked).

        ``baselines``: rows ``(b, ...)`` drawn uniformly with replacement, or a callable
        ``fn()`` / ``fn(inputs)`` returning them.
        """
        check_positive_int(n_samples, "n_samples")
        stdevs = check_noise_sd(stdevs)
        inputs, reducer = self._prepare(inputs, target)
        if n_directions(reducer) > 1:
            raise ValueError(
                "GradientShap takes a scalar reducer; use ExpectedGradients for several directions."
            )
        base = _baselines(baselines, inputs)
        if self.check_inputs:
            check_finite(base, "baselines")
        k, n = n_samples, inputs.shape[0]
        dev = generator.device if generator is not None else inputs.device
        idx = torch.randint(0, base.shape[0], (k, n), generator=generator, device=dev)
        refs = base.index_select(0, idx.reshape(-1).to(base.device)).reshape(
            k, n, *inputs.shape[1:]
        )
        refs = refs.to(inputs.device, inputs.dtype)
        noise = torch.randn((k, *inputs.shape), generator=generator, device=dev)
        ends = inputs.unsqueeze(0) + stdevs * noise.to(inputs.device, inputs.dtype)
        alphas = torch.rand((k, n), generator=generator, device=dev).to(inputs.device, inputs.dtype)
        delta = ends - refs
        shape = (k, n) + (1,) * (inputs.ndim - 1)
        points = (refs + alphas.view(shape) * delta).reshape(k * n, *inputs.shape[1:])
        grads = gradients_at(
            self.forward_func,
            points,
            reducer,
            n=n,
            additional_forward_args=additional_forward_args,
            create_graph=self.differentiable,
        ).reshape(k, *inputs.shape)
        terms = delta * grads if self.multiply_by_inputs else grads
        attr = terms.mean(0)
        if not return_convergence_delta:
            return attr
        with torch.no_grad():
            args = expand_additional_args(additional_forward_args, n, 2 * k)
            stacked = torch.cat([ends, refs]).reshape(2 * k * n, *inputs.shape[1:])
            values = forward_reduced(self.forward_func, stacked, reducer, args).reshape(2, k, n)
            err = (delta * grads).detach().reshape(k, n, -1).sum(-1) - (values[0] - values[1])
        return attr, err.T.reshape(-1)  # sample by sample, as captum orders them


def _baselines(baselines: Any, inputs: torch.Tensor) -> torch.Tensor:
    baselines = call_baselines(baselines, inputs)
    if not isinstance(baselines, torch.Tensor):
        raise TypeError(
            f"baselines must be a tensor of rows (b, ...) or a callable returning one, got "
            f"{type(baselines).__name__}; convert arrays with torch.as_tensor."
        )
    if baselines.ndim == inputs.ndim - 1:
        baselines = baselines.unsqueeze(0)
    if baselines.shape[1:] != inputs.shape[1:] or baselines.shape[0] == 0:
        raise ValueError(
            f"baselines of shape {tuple(baselines.shape)} do not match inputs "
            f"{tuple(inputs.shape)}: give rows (b, ...) like the inputs."
        )
    return baselines
