"""SCAREVAE: scvi-tools' VAE with scARE's options, and attreg's speed machinery behind
:mod:`attreg.fast_paths`.

scARE's options, on top of :class:`scvi.module.VAE`:

* ``normalize_input``: the encoders read ``log1p(counts / library * 1e4)`` instead of
  ``log1p(counts)`` (the library size itself still comes from the counts);
* ``w_reconstruction``: the reconstruction term's weight ``w_R`` in
  ``w_R L_R + L_D + w_A L_A``;
* :meth:`SCAREVAE.attribution_target` ``"model"``: the log reconstructed mean as a
  function of the encoder's input (the prior's ``target="model"``);
* no head whose output the loss never reads (scvi-tools' VAE builds the zero-inflation
  head also for NB and the per-cell dispersion head for every dispersion): every
  parameter is used by the loss, so plain DDP (``strategy="ddp"``) trains it, and no
  product is computed for nothing.

With the fast paths on (the default), the step computes the same values differently:

* every ``nn.Linear`` computes with :class:`attreg.cpu_matmul.Linear` (oneDNN on CPU
  float32; the same parameters and state dict);
* the NB log-likelihood's ``lgamma(x + theta) - lgamma(theta)`` uses
  :func:`attreg_sc.special.log_gamma_ratio`, whose derivative avoids two ``digamma``
  calls per count, and terms of a per-gene ``theta`` are computed once per gene;
* dropout masks come from ``torch.rand`` (:class:`FastDropout`: the same distribution);
* the training step skips ``torch.distributions``' argument checks
  (:func:`unchecked_distributions`); non-finite values are reported once per epoch.

With ``attreg.set_fast_paths(False)`` the module computes exactly as scvi-tools' VAE.
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
from scvi.distributions import NegativeBinomial
from scvi.module import VAE
from torch import nn

from attreg import cpu_matmul
from attreg.fast_paths import fast_paths_enabled
from attreg_sc.distributions import negative_binomial_log_prob

__all__ = [
    "SCAREVAE",
    "FastNegativeBinomial",
    "FastDropout",
    "NoHead",
    "unchecked_distributions",
]


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


class NoHead(nn.Module):
    """Where scvi-tools' decoder has a head whose output the loss never reads (the
    zero-inflation logits without zero inflation, the per-cell dispersion without
    ``dispersion="gene-cell"``): no parameters, no product, ``None``."""

    def forward(self, *_args, **_kwargs) -> None:
        return None


class FastDropout(nn.Dropout):
    """``nn.Dropout`` whose CPU mask comes from ``torch.rand`` (``u >= p``), behind
    :mod:`attreg.fast_paths`: the same distribution (each unit kept with probability
    ``1 - p`` and scaled by ``1 / (1 - p)``) and state dict; PyTorch's ``bernoulli_`` draws
    about half as fast on the CPU. Other devices, and the reference math, use
    ``nn.Dropout``.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> y = FastDropout(0.25)(torch.ones(100_000))
    >>> abs(float((y == 0).float().mean()) - 0.25) < 0.01, bool(y.max() == 1 / 0.75)
    (True, True)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            not self.training
            or not 0.0 < self.p < 1.0
            or x.device.type != "cpu"
            or self.inplace
            or not fast_paths_enabled()
        ):
            return super().forward(x)
        return x * (torch.rand_like(x) >= self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))


@contextlib.contextmanager
def unchecked_distributions():
    """Inside, ``torch.distributions`` skip their argument checks (behind
    :mod:`attreg.fast_paths`). The checks read device values after every construction
    (about 20 per step, each over a minibatch-sized tensor); the training plan's
    non-finite check (:class:`attreg_sc.train.callbacks.NonFiniteLoss`) reports what they
    would have caught, once per epoch."""
    from torch.distributions import Distribution

    if not fast_paths_enabled():
        yield
        return
    before = Distribution._validate_args
    Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(before)


class SCAREVAE(VAE):
    """scvi-tools' :class:`scvi.module.VAE` with scARE's options (see the module
    docstring); every other argument is the VAE's.

    Parameters
    ----------
    *args
        :class:`scvi.module.VAE`'s arguments.
    normalize_input
        Encoders read ``log1p(counts / library * 1e4)`` (needs ``log_variational=True``).
    w_reconstruction
        Weight of the reconstruction term (finite, ``> 0``).
    **kwargs
        :class:`scvi.module.VAE`'s keyword arguments.

    Examples
    --------
    >>> m = SCAREVAE(20, n_batch=2, normalize_input=True, w_reconstruction=0.5)
    >>> x = torch.poisson(torch.full((4, 20), 3.0)); b = torch.tensor([[0], [1], [0], [1]])
    >>> out = m.inference(x, b)
    >>> tuple(out["qz"].loc.shape)
    (4, 10)
    """

    def __init__(
        self,
        *args,
        normalize_input: bool = False,
        w_reconstruction: float = 1.0,
        **kwargs,
    ) -> None:
        if not isinstance(normalize_input, bool):
            raise TypeError(f"normalize_input must be True or False, got {normalize_input!r}.")
        if (
            isinstance(w_reconstruction, bool)
            or not isinstance(w_reconstruction, (int, float))
            or not math.isfinite(w_reconstruction)
            or w_reconstruction <= 0
        ):
            raise ValueError(
                f"w_reconstruction must be a finite number > 0, got {w_reconstruction!r}."
            )
        super().__init__(*args, **kwargs)
        if normalize_input and not self.log_variational:
            raise ValueError(
                "normalize_input=True reads log1p of normalized counts: leave "
                "log_variational=True."
            )
        self.normalize_input = normalize_input
        self.w_reconstruction = float(w_reconstruction)
        if getattr(self, "library_log_vars", None) is not None:
            # a batch of one cell, or of cells with one library size, has variance 0: the
            # library prior's scale would be 0 (an invalid Normal); as the old SCARE did
            with torch.no_grad():
                self.library_log_vars.clamp_(min=1e-4)
        for m in self.modules():
            if type(m) is nn.Linear:  # same parameters; forward through oneDNN
                m.__class__ = cpu_matmul.Linear
            elif type(m) is nn.Dropout:  # same distribution; a faster CPU mask
                m.__class__ = FastDropout
        if self.gene_likelihood != "zinb" and hasattr(self.decoder, "px_dropout_decoder"):
            self.decoder.px_dropout_decoder = NoHead()
        if self.dispersion != "gene-cell" and hasattr(self.decoder, "px_r_decoder"):
            self.decoder.px_r_decoder = NoHead()

    # -- scARE's options ----------------------------------------------------------------
    def _regular_inference(self, x, batch_index, cont_covs=None, cat_covs=None, n_samples=1):
        if not self.normalize_input:
            return super()._regular_inference(x, batch_index, cont_covs, cat_covs, n_samples)
        library = x.sum(dim=1, keepdim=True)
        normalized = x / library.clamp_min(1.0) * 1e4  # the VAE takes its log1p
        out = super()._regular_inference(normalized, batch_index, cont_covs, cat_covs, n_samples)
        if self.use_observed_lib_size:  # from the counts, not from the normalized values
            log_library = torch.log(library)
            if n_samples > 1:
                log_library = log_library.unsqueeze(0).expand((n_samples, *log_library.shape))
            out["library"] = log_library
        return out

    def loss(self, tensors, inference_outputs, generative_outputs, kl_weight=1.0):
        out = super().loss(tensors, inference_outputs, generative_outputs, kl_weight)
        if self.w_reconstruction != 1.0:
            reconstruction = out.reconstruction_loss["reconstruction_loss"]
            out.loss = out.loss + (self.w_reconstruction - 1.0) * reconstruction.mean()
        return out

    @functools.wraps(VAE.generative)  # scvi-tools inspects its signature
    def generative(self, *args, **kwargs):
        outputs = super().generative(*args, **kwargs)
        px = outputs.get("px")
        if type(px) is NegativeBinomial:
            px.__class__ = FastNegativeBinomial
        return outputs

    # -- what the prior explains ---------------------------------------------------------
    def attribution_target(self, kind: str = "encoder") -> nn.Module:
        """A function of the latent encoder's inputs ``(x_in, batch_index)``.

        ``"encoder"``: the latent posterior mean. ``"model"``: the log reconstructed mean
        of every gene at the posterior mean (``log px_scale`` plus the log library the
        library encoder infers; its log because the mean's sum over genes is the library
        size and carries no gene information). Needs a model with a one-hot batch
        covariate only (no other covariates).
        """
        if kind == "encoder":
            return _LatentMean(self)
        if kind != "model":
            raise ValueError(f"unknown attribution target {kind!r}; use 'encoder' or 'model'.")
        if (
            getattr(self, "n_continuous_cov", 0)
            or getattr(self, "n_cats_per_cov", None)
            or getattr(self, "batch_representation", "one-hot") != "one-hot"
        ):
            raise ValueError(
                "target='model' supports models whose only covariate is a one-hot batch; "
                "use target='encoder' with covariates or a batch embedding."
            )
        return _LogReconstruction(self)


def _mean(encoder: nn.Module, x: torch.Tensor, *cat_list: torch.Tensor) -> torch.Tensor:
    """An scvi-tools ``Encoder``'s posterior mean, without building its distribution
    (whose argument checks read device values)."""
    return encoder.mean_encoder(encoder.encoder(x, *cat_list))


class _LatentMean(nn.Module):
    def __init__(self, module: SCAREVAE) -> None:
        super().__init__()
        self.module_ = module

    def forward(self, x_in: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        return _mean(self.module_.z_encoder, x_in, batch_index)


class _LogReconstruction(_LatentMean):
    def forward(self, x_in: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        m = self.module_
        qz_m = _mean(m.z_encoder, x_in, batch_index)
        if m.use_observed_lib_size:
            log_library = torch.zeros_like(qz_m[:, :1])
        else:
            log_library = _mean(m.l_encoder, x_in, batch_index)
        px_scale = m.decoder(m.dispersion, qz_m, log_library, batch_index)[0]
        return torch.log(px_scale + 1e-8) + log_library
