"""The scARE generative model: a batch-conditioned negative-binomial VAE (pure torch).

No AnnData here: the module sees count tensors, batch indices and library priors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from attreg.attr.linear_prefix import LinearPrefix
from attreg_sc.distributions import (
    kl_normal,
    negative_binomial_log_prob,
    zero_inflated_negative_binomial_log_prob,
)
from attreg_sc.nn.layers import Decoder, Encoder, LibraryEncoder

__all__ = ["SCAREModule", "DISPERSIONS", "LIKELIHOODS"]

DISPERSIONS = ("gene", "gene-batch", "gene-cell")
LIKELIHOODS = ("nb", "zinb")


class SCAREModule(nn.Module):
    """Conditional VAE in the spirit of scVI with LayerNorm (attribution-safe).

    Parameters
    ----------
    n_genes
        Number of genes.
    n_batches
        Number of batch categories (the one-hot enters encoder and decoder).
    n_hidden, n_latent, n_layers, dropout
        Architecture (defaults 128, 10, 1, 0.1).
    dispersion
        Inverse dispersion ``theta``: ``"gene"``, ``"gene-batch"`` or ``"gene-cell"``.
    likelihood
        ``"nb"`` or ``"zinb"``.
    use_observed_library
        Use the observed log library size instead of the library encoder.
    normalize_input
        Encoder input ``log1p(counts / library * 1e4)`` instead of ``log1p(counts)``.
    library_log_means, library_log_vars
        Per-batch mean and variance of the log library size (the empirical prior of
        ``q(l | x, c)``), shape ``(n_batches,)``.

    Examples
    --------
    >>> import torch
    >>> m = SCAREModule(n_genes=20, n_batches=2)
    >>> x = torch.poisson(torch.full((4, 20), 3.0)); b = torch.tensor([0, 1, 0, 1])
    >>> sorted(m.loss(x, b))
    ['h_first', 'kl_l', 'kl_z', 'loss', 'reconstruction', 'x_in']
    """

    def __init__(
        self,
        n_genes: int,
        n_batches: int = 1,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        dropout: float = 0.1,
        dispersion: str = "gene",
        likelihood: str = "nb",
        use_observed_library: bool = False,
        normalize_input: bool = False,
        library_log_means: torch.Tensor | None = None,
        library_log_vars: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if dispersion not in DISPERSIONS:
            raise ValueError(f"unknown dispersion {dispersion!r}; use one of {DISPERSIONS}.")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}; use one of {LIKELIHOODS}.")
        self.n_genes, self.n_batches, self.n_latent = n_genes, n_batches, n_latent
        self.dispersion, self.likelihood = dispersion, likelihood
        self.use_observed_library = use_observed_library
        self.normalize_input = normalize_input
        n_cat = n_batches if n_batches > 1 else 0
        self.encoder = Encoder(n_genes, n_latent, n_cat, n_hidden, n_layers, dropout)
        self.library_encoder = (
            None if use_observed_library else LibraryEncoder(n_genes, n_cat, n_hidden, dropout)
        )
        self.decoder = Decoder(
            n_latent,
            n_genes,
            n_cat,
            n_hidden,
            n_layers,
            dropout,
            per_cell_dispersion=dispersion == "gene-cell",
            zero_inflated=likelihood == "zinb",
        )
        if dispersion == "gene":
            self.log_theta = nn.Parameter(torch.randn(n_genes) * 0.1)
        elif dispersion == "gene-batch":
            self.log_theta = nn.Parameter(torch.randn(n_genes, n_batches) * 0.1)
        else:
            self.log_theta = None
        means = torch.zeros(n_batches) if library_log_means is None else library_log_means
        vars_ = torch.ones(n_batches) if library_log_vars is None else library_log_vars
        self.register_buffer("library_log_means", torch.as_tensor(means, dtype=torch.float32))
        self.register_buffer("library_log_vars", torch.as_tensor(vars_, dtype=torch.float32))

    # -- pieces ----------------------------------------------------------------------
    def one_hot(self, batch_index: torch.Tensor) -> torch.Tensor | None:
        """The batch one-hot ``(n, n_batches)`` (``None`` with a single batch)."""
        if self.n_batches <= 1:
            return None
        return F.one_hot(batch_index.long(), self.n_batches).to(torch.get_default_dtype())

    def batch_covariate(self, batch_index: torch.Tensor) -> torch.Tensor | None:
        """What the layers take as the batch covariate: the integer codes, which they
        look up as columns of their covariate weights (same values as the one-hot
        product); ``None`` with a single batch."""
        return None if self.n_batches <= 1 else batch_index.long()

    def encoder_input(self, counts: torch.Tensor) -> torch.Tensor:
        """The tensor that enters the encoder (and whose attributions the prior takes)."""
        if self.normalize_input:
            lib = counts.sum(dim=1, keepdim=True).clamp_min(1.0)
            return torch.log1p(counts / lib * 1e4)
        return torch.log1p(counts)

    @torch.no_grad()
    def latent_mean(self, counts: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        """``E[z | x, c]`` for a block of cells (no graph)."""
        return self.encoder(self.encoder_input(counts), self.batch_covariate(batch_index))[0]

    def inference(
        self, counts: torch.Tensor, batch_index: torch.Tensor, x_in: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``q(z, l | x, c)``: means, variances, samples and the log library size."""
        x_in = self.encoder_input(counts) if x_in is None else x_in
        cat = self.batch_covariate(batch_index)
        h_first = self.encoder.body.first(x_in)
        qz_m, qz_v = self.encoder.from_first(h_first, cat)
        z = qz_m + qz_v.sqrt() * torch.randn_like(qz_m) if self.training else qz_m
        out = {"x_in": x_in, "h_first": h_first, "qz_m": qz_m, "qz_v": qz_v, "z": z}
        if self.library_encoder is None:
            out["log_library"] = torch.log(counts.sum(dim=1, keepdim=True).clamp_min(1.0))
        else:
            ql_m, ql_v = self.library_encoder(x_in, cat)
            out["ql_m"], out["ql_v"] = ql_m, ql_v
            out["log_library"] = (
                ql_m + ql_v.sqrt() * torch.randn_like(ql_m) if self.training else ql_m
            )
        return out

    def generative(
        self, z: torch.Tensor, log_library: torch.Tensor, batch_index: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``p(x | z, l, c)``: NB mean ``rate``, inverse dispersion ``theta`` (+ ZI logits)."""
        cat = self.batch_covariate(batch_index)
        out = self.decoder(z, cat)
        out["rate"] = torch.exp(log_library) * out["scale"]
        if self.dispersion == "gene":
            out["theta"] = torch.exp(self.log_theta)
        elif self.dispersion == "gene-batch":
            out["theta"] = torch.exp(self.log_theta[:, batch_index.long()].T)
        else:
            out["theta"] = torch.exp(out.pop("log_theta"))
        return out

    def reconstruction_log_prob(self, counts: torch.Tensor, gen: dict) -> torch.Tensor:
        """Per-cell ``log p(x | z, l, c)`` summed over genes."""
        if self.likelihood == "zinb":
            lp = zero_inflated_negative_binomial_log_prob(
                counts, gen["rate"], gen["theta"], gen["zi_logits"]
            )
        else:
            lp = negative_binomial_log_prob(counts, gen["rate"], gen["theta"])
        return lp.sum(dim=-1)

    def loss(
        self,
        counts: torch.Tensor,
        batch_index: torch.Tensor,
        kl_weight: float = 1.0,
        w_reconstruction: float = 1.0,
        w_divergence: float = 1.0,
    ) -> dict[str, torch.Tensor]:
        """``w_R * L_R + w_D * kl_weight * L_D`` (means over cells) and its terms.

        ``x_in`` (the encoder input) and ``h_first`` (the encoder's first-layer output
        on it) are returned too, so that an attribution prior can reuse them.
        """
        inf = self.inference(counts, batch_index)
        gen = self.generative(inf["z"], inf["log_library"], batch_index)
        recon = -self.reconstruction_log_prob(counts, gen).mean()
        kl_z = kl_normal(inf["qz_m"], inf["qz_v"]).mean()
        if self.library_encoder is not None:
            b = batch_index.long()
            kl_l = kl_normal(
                inf["ql_m"],
                inf["ql_v"],
                self.library_log_means[b].unsqueeze(1),
                self.library_log_vars[b].unsqueeze(1),
            ).mean()
        else:
            kl_l = torch.zeros((), device=counts.device)
        total = w_reconstruction * recon + w_divergence * kl_weight * (kl_z + kl_l)
        return {
            "loss": total,
            "reconstruction": recon,
            "kl_z": kl_z,
            "kl_l": kl_l,
            "x_in": inf["x_in"],
            "h_first": inf["h_first"],
        }

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Same as :meth:`loss` (so that wrappers such as DDP can call the module)."""
        return self.loss(*args, **kwargs)

    # -- attribution targets -------------------------------------------------------------
    def attribution_target(self, target: str = "encoder") -> Callable:
        """A function ``(x_in, batch_index) -> output`` for attributions.

        ``"encoder"``: the latent mean ``qz_m`` (reduce with a sum: ``F = sum_k mu_k``),
        as an :class:`attreg.LinearPrefix` (first linear layer + rest), so that EG/IG
        interpolate in the hidden space and reuse the training forward's activations.
        ``"model"``: the log NB mean of every gene at ``z = qz_m`` (the deterministic
        reconstruction; its log because the sum of the mean over genes is the library
        size and carries no gene information).
        """
        if target == "encoder":
            return LinearPrefix(self.encoder.body.first, _EncoderRest(self))
        if target == "model":
            return _LogReconstruction(self)
        raise ValueError(f"unknown attribution target {target!r}; use 'encoder' or 'model'.")


class _EncoderMean(nn.Module):
    def __init__(self, module: SCAREModule) -> None:
        super().__init__()
        self.module_ = module

    def forward(self, x_in: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        return self.module_.encoder(x_in, self.module_.batch_covariate(batch_index))[0]


class _EncoderRest(_EncoderMean):
    """The encoder's mean after its first linear layer: ``(h_first, batch) -> qz_m``."""

    def forward(self, h_first: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        m = self.module_
        return m.encoder.mean_from_first(h_first, m.batch_covariate(batch_index))

    def reduced_gradient(
        self,
        h_first: torch.Tensor,
        reducer: Callable,
        batch_index: torch.Tensor,
        *,
        create_graph: bool = False,
    ) -> torch.Tensor | None:
        """``dF/dh_first`` in closed form for a linear reducer (sum, mean, unit, random or
        per-unit directions) and a one-block encoder; ``None`` otherwise (see
        :func:`attreg.attr.gradients_at`)."""
        m = self.module_
        if hasattr(reducer, "row_output_weights") and reducer.m > 1 and reducer.output is None:
            weights = reducer.row_output_weights(h_first.shape[0], m.n_latent, h_first.device)
        else:
            output_weights = getattr(reducer, "output_weights", None)
            weights = None if output_weights is None else output_weights(m.n_latent, h_first.device)
        if weights is None:
            return None
        return m.encoder.mean_gradient_from_first(h_first, weights, m.batch_covariate(batch_index))


class _LogReconstruction(_EncoderMean):
    def forward(self, x_in: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        m = self.module_
        cat = m.batch_covariate(batch_index)
        qz_m = m.encoder(x_in, cat)[0]
        if m.library_encoder is None:
            log_lib = torch.zeros(x_in.shape[0], 1, device=x_in.device, dtype=x_in.dtype)
        else:
            log_lib = m.library_encoder(x_in, cat)[0]
        return torch.log(m.decoder(qz_m, cat)["scale"] + 1e-8) + log_lib
