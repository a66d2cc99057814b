"""SCAREVAE: scvi-tools' VAE with attreg's speed machinery, behind :mod:`attreg.fast_paths`.

The reference math is scvi-tools' own; with the fast paths on (the default), two
products of the step are computed differently, to the same values up to float rounding:

* every ``nn.Linear`` computes with :class:`attreg.cpu_matmul.Linear` (oneDNN on CPU
  float32; the same parameters and state dict);
* the NB log-likelihood's ``lgamma(x + theta) - lgamma(theta)`` uses
  :func:`attreg_sc.special.log_gamma_ratio`, whose derivative avoids two ``digamma``
  calls per count (``torch.lgamma``'s backward is most of scvi-tools' CPU step), and
  terms of a per-gene ``theta`` are computed once per gene, not once per count;
* the training plan's Adam is fused (one kernel for all parameters);
* with a likelihood without zero inflation, the decoder's zero-inflation head (a
  ``n_hidden x n_genes`` product scvi-tools computes and never reads) is skipped.

With ``attreg.set_fast_paths(False)`` the module computes exactly as scvi-tools' VAE.
"""

from __future__ import annotations

import functools

import torch
from scvi.distributions import NegativeBinomial
from scvi.module import VAE

from attreg import cpu_matmul
from attreg.fast_paths import fast_paths_enabled
from attreg_sc.distributions import negative_binomial_log_prob

__all__ = ["SCAREVAE", "FastNegativeBinomial", "UnusedHead"]


class FastNegativeBinomial(NegativeBinomial):
    """scvi-tools' ``NegativeBinomial`` whose ``log_prob`` uses
    :func:`attreg_sc.distributions.negative_binomial_log_prob` (the same formula and
    values; a fast derivative on CPU, behind :mod:`attreg.fast_paths`)."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args or self.on_mps or not fast_paths_enabled():
            return super().log_prob(value)
        theta = self.theta
        if theta.dim() == 2 and theta.shape[0] > 1 and theta.stride(0) == 0:
            theta = theta[:1]  # a per-gene theta broadcast over cells: compute once per gene
        return negative_binomial_log_prob(value, self.mu, theta, eps=self._eps)


class UnusedHead(cpu_matmul.Linear):
    """The decoder's zero-inflation head when the likelihood has none: its product
    (``n_hidden x n_genes`` per cell, whose result the NB likelihood never reads) is
    skipped with the fast paths on. Same parameters and state dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor | None:
        if fast_paths_enabled():
            return None
        return super().forward(x)


class SCAREVAE(VAE):
    """scvi-tools' :class:`scvi.module.VAE` with oneDNN products and the fast NB
    log-likelihood (see the module docstring); the same parameters and state dict."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for m in self.modules():
            if type(m) is torch.nn.Linear:  # same parameters; forward through oneDNN
                m.__class__ = cpu_matmul.Linear
        head = getattr(self.decoder, "px_dropout_decoder", None)
        if self.gene_likelihood != "zinb" and isinstance(head, cpu_matmul.Linear):
            head.__class__ = UnusedHead

    @functools.wraps(VAE.generative)  # scvi-tools inspects its signature
    def generative(self, *args, **kwargs):
        outputs = super().generative(*args, **kwargs)
        px = outputs.get("px")
        if type(px) is NegativeBinomial:
            px.__class__ = FastNegativeBinomial
        return outputs
