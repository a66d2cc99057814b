"""Layers of the scARE model: fully connected blocks with covariates, encoders, decoder.

LayerNorm, not BatchNorm: BatchNorm couples the samples whose attributions are taken.
The batch one-hot enters every first layer; ``W [x, c] = W_x x + W_c c``, so the
covariate is added through its own weight matrix instead of concatenating tensors
(same function, no copy of the gene matrix), and with integer batch codes ``W_c e_b``
is looked up as a column of ``W_c`` instead of multiplied out.
"""

from __future__ import annotations

import torch
from torch import nn

from attreg import cpu_matmul
from attreg_sc.nn.closed_form_gradient import norm_relu_input_gradient

__all__ = ["Dropout", "FCLayers", "Encoder", "LibraryEncoder", "Decoder"]


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose CPU mask comes from ``torch.rand`` (``u >= p``).

    Same distribution (each unit kept with probability ``1 - p`` and scaled by
    ``1 / (1 - p)``) and the same state dict; on the CPU PyTorch's ``bernoulli_`` draws
    about half as fast as ``torch.rand``, and an attribution prior adds one dropout pass
    per reference (``benchmarks/bench_peers.py``). Other devices use ``nn.Dropout``.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> y = Dropout(0.25)(torch.ones(100_000))
    >>> abs(float((y == 0).float().mean()) - 0.25) < 0.01, bool(y.max() == 1 / 0.75)
    (True, True)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not 0.0 < self.p < 1.0 or x.device.type != "cpu" or self.inplace:
            return super().forward(x)
        return x * self.mask_like(x)

    def mask_like(self, x: torch.Tensor) -> torch.Tensor | None:
        """A fresh scaled mask for ``x`` (``x * mask`` is this layer's output, drawn as on
        the CPU on every device), or ``None`` where the layer is the identity (eval, p = 0)."""
        if not self.training or self.p == 0.0:
            return None
        if self.p == 1.0:
            return torch.zeros_like(x)
        return (torch.rand_like(x) >= self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))


class FCLayers(nn.Module):
    """``n_layers`` x (Linear -> LayerNorm -> ReLU -> Dropout), covariates at the first layer.

    Parameters
    ----------
    n_in
        Input width.
    n_out
        Width of every hidden layer.
    n_cat
        Width of the covariate one-hot (0: none).
    n_layers
        Number of blocks (>= 1).
    dropout
        Dropout rate.
    """

    def __init__(
        self, n_in: int, n_out: int, n_cat: int = 0, n_layers: int = 1, dropout: float = 0.1
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}.")
        self.first = cpu_matmul.Linear(n_in, n_out)
        self.covariate = nn.Linear(n_cat, n_out, bias=False) if n_cat > 0 else None
        blocks: list[nn.Module] = [nn.LayerNorm(n_out), nn.ReLU(), Dropout(dropout)]
        for _ in range(n_layers - 1):
            blocks += [
                nn.Linear(n_out, n_out),
                nn.LayerNorm(n_out),
                nn.ReLU(),
                Dropout(dropout),
            ]
        self.rest = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, cat: torch.Tensor | None = None) -> torch.Tensor:
        return self.after_first(self.first(x), cat)

    def after_first(self, h: torch.Tensor, cat: torch.Tensor | None = None) -> torch.Tensor:
        """The block from the output ``h = first(x)`` of the first linear layer on."""
        return self.rest(self.with_covariate(h, cat))

    def with_covariate(self, h: torch.Tensor, cat: torch.Tensor | None = None) -> torch.Tensor:
        """``h + W_c c``: the first layer's output with the covariate term added (``h``
        itself for a layer built without covariates)."""
        if self.covariate is None:
            return h
        if cat is None:
            raise ValueError(
                "this layer was built with covariates; pass the batch codes or one-hot."
            )
        return h + self.covariate_term(cat)

    def single_block(self) -> tuple[nn.LayerNorm, Dropout] | None:
        """``(norm, dropout)`` when the part after the first layer is exactly one affine
        LayerNorm -> ReLU -> (this module's, not in-place) Dropout block, else ``None``."""
        if len(self.rest) != 3:
            return None
        norm, relu, dropout = self.rest
        if (
            isinstance(norm, nn.LayerNorm)
            and norm.weight is not None
            and norm.bias is not None
            and isinstance(relu, nn.ReLU)
            and isinstance(dropout, Dropout)
            and not dropout.inplace
        ):
            return norm, dropout
        return None

    def covariate_term(self, cat: torch.Tensor) -> torch.Tensor:
        """``W_c c`` for a one-hot (or any float) matrix ``c``, or for integer codes ``b``
        (``W_c e_b`` is column ``b`` of ``W_c``: a lookup, the same values and gradient as
        the product with the one-hot at a fraction of its cost)."""
        if cat.is_floating_point():
            return self.covariate(cat)
        return self.covariate.weight.t().index_select(0, cat.reshape(-1))


class Encoder(nn.Module):
    """``q(z | x, c)``: returns ``(mean, var)`` of a diagonal Gaussian.

    Parameters
    ----------
    n_in
        Input features (genes).
    n_out
        Latent dimensions.
    n_cat
        Categories of the covariate (batch) injected into the first layer.
    n_hidden, n_layers
        Units per hidden layer; hidden layers.
    dropout
        Dropout rate.
    var_eps
        Added to the posterior variance.
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        n_cat: int = 0,
        n_hidden: int = 128,
        n_layers: int = 1,
        dropout: float = 0.1,
        var_eps: float = 1e-4,
    ) -> None:
        super().__init__()
        self.body = FCLayers(n_in, n_hidden, n_cat, n_layers, dropout)
        self.mean = nn.Linear(n_hidden, n_out)
        self.log_var = nn.Linear(n_hidden, n_out)
        self.var_eps = var_eps

    def forward(
        self, x: torch.Tensor, cat: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.from_first(self.body.first(x), cat)

    def from_first(
        self, h_first: torch.Tensor, cat: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, var)`` from the first linear layer's output ``body.first(x)``."""
        h = self.body.after_first(h_first, cat)
        return self.mean(h), torch.exp(self.log_var(h)) + self.var_eps

    def mean_from_first(
        self, h_first: torch.Tensor, cat: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The mean only (no variance head) from the first linear layer's output."""
        return self.mean(self.body.after_first(h_first, cat))

    def mean_gradient_from_first(
        self, h_first: torch.Tensor, weights: torch.Tensor, cat: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """``dF/dh_first`` of ``F = mean_from_first(h_first, cat) @ weights``, row by row, in
        closed form (:mod:`attreg_sc.nn.closed_form_gradient`; with the graph to the
        parameters where grad mode is on), or ``None`` where the body is not one
        LayerNorm -> ReLU -> Dropout block (then use autograd)."""
        block = self.body.single_block()
        if block is None:
            return None
        norm, dropout = block
        h = self.body.with_covariate(h_first, cat)
        c = weights.to(self.mean.weight) @ self.mean.weight
        return norm_relu_input_gradient(
            h, norm.weight, norm.bias, c, dropout.mask_like(h), norm.eps
        )


class LibraryEncoder(Encoder):
    """``q(log l | x, c)``: a one-dimensional :class:`Encoder`.

    Parameters
    ----------
    n_in
        Input features (genes).
    n_cat
        Categories of the covariate (batch).
    n_hidden
        Units of the hidden layer.
    dropout
        Dropout rate.
    """

    def __init__(self, n_in: int, n_cat: int = 0, n_hidden: int = 128, dropout: float = 0.1):
        super().__init__(n_in, 1, n_cat, n_hidden, 1, dropout)


class Decoder(nn.Module):
    """``p(x | z, c)``: gene proportions (softmax), optional per-cell dispersion and dropout.

    Returns a dict with ``scale`` (proportions), ``log_theta`` (only for per-cell
    dispersion) and ``zi_logits`` (only for the zero-inflated likelihood).

    Parameters
    ----------
    n_latent
        Latent dimensions.
    n_genes
        Output genes.
    n_cat
        Categories of the covariate (batch).
    n_hidden, n_layers
        Units per hidden layer; hidden layers.
    dropout
        Dropout rate.
    per_cell_dispersion
        Decode a dispersion per cell and gene.
    zero_inflated
        Decode zero-inflation logits (ZINB).
    """

    def __init__(
        self,
        n_latent: int,
        n_genes: int,
        n_cat: int = 0,
        n_hidden: int = 128,
        n_layers: int = 1,
        dropout: float = 0.1,
        per_cell_dispersion: bool = False,
        zero_inflated: bool = False,
    ) -> None:
        super().__init__()
        self.body = FCLayers(n_latent, n_hidden, n_cat, n_layers, dropout)
        self.scale = cpu_matmul.Linear(n_hidden, n_genes)
        self.log_theta = cpu_matmul.Linear(n_hidden, n_genes) if per_cell_dispersion else None
        self.zi_logits = cpu_matmul.Linear(n_hidden, n_genes) if zero_inflated else None

    def forward(self, z: torch.Tensor, cat: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        h = self.body(z, cat)
        out = {"scale": torch.softmax(self.scale(h), dim=-1)}
        if self.log_theta is not None:
            out["log_theta"] = self.log_theta(h)
        if self.zi_logits is not None:
            out["zi_logits"] = self.zi_logits(h)
        return out
