"""scvi-tools' latent encoder as an :class:`attreg.LinearPrefix`: the fast EG/IG path.

scvi-tools' :class:`scvi.nn.Encoder` computes the posterior mean as
``mean_encoder(FCLayers(x, *covariates))``, whose first layer is
``Linear(concat(x, one-hot covariates))``. Splitting that product as
``W_x x + b`` (the prefix, over the attributed input) plus ``W_c c`` (the covariates,
added in the rest) makes the encoder a ``LinearPrefix``: EG interpolates the hidden
activations instead of the genes, and the prefix's activations on the minibatch come
from the model's own forward pass (its first layer's output minus ``W_c c``), so the
prior needs no first-layer product of its own (see :mod:`attreg.attr.linear_prefix`).
Same function, same attributions (tested); the split applies to encoders without
BatchNorm whose first layer is an ``nn.Linear``; others keep the generic path.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attreg import cpu_matmul
from attreg.attr.linear_prefix import LinearPrefix

__all__ = ["encoder_prefix", "FirstColumns", "EncoderMeanRest"]


class FirstColumns(nn.Linear):
    """``x -> W[:, :n] x + b`` for the first ``n`` input columns of ``full`` (a view of
    its parameters, not a copy)."""

    def __init__(self, full: nn.Linear, n: int) -> None:
        nn.Module.__init__(self)
        self.full = full
        self.in_features, self.out_features = n, full.out_features

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        return self.full.weight[:, : self.in_features]

    @property
    def bias(self) -> torch.Tensor | None:  # type: ignore[override]
        return self.full.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cpu_matmul.linear(x, self.weight, self.bias)


def _covariates(fc, cat_list: tuple) -> list[torch.Tensor]:
    """The one-hot covariates FCLayers concatenates (its own rules: ``n_cat > 1`` only)."""
    out = []
    for n_cat, cat in zip(fc.n_cat_list, cat_list, strict=False):
        if n_cat > 1:
            one_hot = (
                nn.functional.one_hot(cat.squeeze(-1).long(), n_cat)
                if cat.size(1) != n_cat
                else cat
            )
            out.append(one_hot.to(fc.fc_layers[0][0].weight.dtype))
    return out


def covariate_part(encoder: nn.Module, n_x: int, *cat_list: torch.Tensor) -> torch.Tensor | float:
    """``W_c c``: the first layer's product with the covariates (0 without covariates)."""
    return _covariate_product(encoder.encoder, n_x, _covariates(encoder.encoder, cat_list))


def _covariate_product(fc, n_x: int, covs: list[torch.Tensor]) -> torch.Tensor | float:
    if not covs:
        return 0.0
    return torch.cat(covs, dim=-1) @ fc.fc_layers[0][0].weight[:, n_x:].t()


class EncoderMeanRest(nn.Module):
    """``h -> mean_encoder(FCLayers after its first product)(h + W_c c)``."""

    def __init__(self, encoder: nn.Module, n_x: int) -> None:
        super().__init__()
        self.encoder, self.n_x = encoder, n_x

    def forward(self, h: torch.Tensor, *cat_list: torch.Tensor) -> torch.Tensor:
        fc = self.encoder.encoder
        covs = _covariates(fc, cat_list)  # one-hot once: the product and the later layers
        x = h + _covariate_product(fc, self.n_x, covs)
        for i, layers in enumerate(fc.fc_layers):
            for j, layer in enumerate(layers):
                if layer is None or (i == 0 and j == 0):
                    continue
                if isinstance(layer, nn.Linear) and fc.inject_into_layer(i):
                    x = torch.cat((x, *covs), dim=-1)
                x = layer(x)
        return self.encoder.mean_encoder(x)


def encoder_prefix(
    encoder: nn.Module, n_inputs: int, example: tuple[Any, ...]
) -> LinearPrefix | None:
    """The encoder's posterior mean as a ``LinearPrefix`` over its first ``n_inputs``
    input columns, or ``None`` when its structure is not the one this module knows.

    ``example`` is ``(x, *covariates)`` of a real call: the split is checked against the
    encoder itself on it (eval mode) before it is used.
    """
    from scvi.nn import Encoder, FCLayers

    if type(encoder) is not Encoder or type(encoder.encoder) is not FCLayers:
        return None
    fc = encoder.encoder
    first = fc.fc_layers[0][0]
    if not isinstance(first, nn.Linear) or any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fc.modules()
    ):
        return None
    n_cov = sum(n for n in fc.n_cat_list if n > 1)
    if first.in_features != n_inputs + n_cov:
        return None
    prefix = LinearPrefix(FirstColumns(first, n_inputs), EncoderMeanRest(encoder, n_inputs))
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            x, *rest = (t[:8] for t in example)
            out = encoder(x, *rest)
            reference = (
                out[0].loc if isinstance(out[0], torch.distributions.Distribution) else out[0]
            )
            split = prefix(x, *rest)
    finally:
        encoder.train(was_training)
    if not torch.allclose(split, reference, rtol=1e-4, atol=1e-5):
        return None
    return prefix
