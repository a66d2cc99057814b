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
from attreg_sc.module import FastDropout

__all__ = ["encoder_prefix", "FirstColumns", "EncoderMeanRest"]

#: dropout layers whose mask the closed form draws with the same distribution
_SAME_DROPOUT = (nn.Dropout, FastDropout)


class FirstColumns(nn.Linear):
    """``x -> W[:, :n] x + b`` for the first ``n`` input columns of ``full`` (a view of
    its parameters, not a copy).

    Parameters
    ----------
    full
        The first layer over all inputs.
    n
        Input columns kept.
    """

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
    """``h -> mean_encoder(FCLayers after its first product)(h + W_c c)``.

    For a one-layer encoder (scARE's default: LayerNorm without affine parameters ->
    ReLU -> Dropout -> the mean's product) it also knows its input gradient in closed form
    (:meth:`reduced_gradient`, :mod:`attreg_sc.fast.closed_form_gradient`): the same values
    and parameter gradients as autograd's double backward, at a fraction of the work.

    Parameters
    ----------
    encoder
        A scvi-tools :class:`scvi.nn.Encoder`.
    n_x
        Columns of the attributed input.
    """

    def __init__(self, encoder: nn.Module, n_x: int) -> None:
        super().__init__()
        self.encoder, self.n_x = encoder, n_x

    def _single_block(self):
        """``(norm, dropout)`` when the part after the first product is exactly one
        LayerNorm -> ReLU -> (Dropout) block, else ``None``."""
        fc = self.encoder.encoder
        if len(fc.fc_layers) != 1:
            return None
        layers = [m for m in fc.fc_layers[0] if m is not None]
        if len(layers) not in (3, 4) or not isinstance(layers[1], nn.LayerNorm):
            return None
        norm, relu = layers[1], layers[2]
        dropout = layers[3] if len(layers) == 4 else None
        # nn.Dropout or a subclass that draws the same distribution (SCAREVAE's FastDropout);
        # the closed form draws its own mask of that distribution
        if type(relu) is not nn.ReLU or (
            dropout is not None and type(dropout) not in _SAME_DROPOUT
        ):
            return None
        if norm.normalized_shape != (norm.normalized_shape[0],):
            return None
        return norm, dropout

    def reduced_gradient(
        self,
        h: torch.Tensor,
        reducer: Any,
        *cat_list: torch.Tensor,
        create_graph: bool = False,
    ) -> torch.Tensor | None:
        """``dF/dh`` in closed form for a linear reducer (sum, mean, unit, random or
        per-unit directions) and a one-block encoder; ``None`` otherwise (then
        :func:`attreg.attr.gradients_at` uses autograd). The dropout mask is drawn as
        ``nn.Dropout`` draws it (same distribution)."""
        from attreg_sc.fast.closed_form_gradient import norm_relu_input_gradient

        block = self._single_block()
        if block is None:
            return None
        n_latent = self.encoder.mean_encoder.out_features
        if hasattr(reducer, "row_output_weights") and reducer.m > 1 and reducer.output is None:
            weights = reducer.row_output_weights(h.shape[0], n_latent, h.device)
        else:
            output_weights = getattr(reducer, "output_weights", None)
            weights = None if output_weights is None else output_weights(n_latent, h.device)
        if weights is None:
            return None
        norm, dropout = block
        fc = self.encoder.encoder
        h_full = h + _covariate_product(fc, self.n_x, _covariates(fc, cat_list))
        mean = self.encoder.mean_encoder
        c = weights.to(mean.weight) @ mean.weight
        gamma = norm.weight if norm.weight is not None else torch.ones_like(h_full[0])
        beta = norm.bias if norm.bias is not None else torch.zeros_like(h_full[0])
        mask = None
        if dropout is not None and dropout.training and dropout.p > 0:
            mask = (torch.rand_like(h_full) >= dropout.p).to(h.dtype).mul_(1.0 / (1.0 - dropout.p))
        return norm_relu_input_gradient(h_full, gamma, beta, c, mask, norm.eps)

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


def _devices(tensors) -> list:
    return sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})


def encoder_prefix(
    encoder: nn.Module, n_inputs: int, example: tuple[Any, ...]
) -> LinearPrefix | None:
    """The encoder's posterior mean as a ``LinearPrefix`` over its first ``n_inputs``
    input columns, or ``None`` when its structure is not the one this module knows.

    Parameters
    ----------
    encoder
        A scvi-tools :class:`scvi.nn.Encoder`.
    n_inputs
        Columns of the attributed input (the genes; covariates follow).
    example
        ``(x, *covariates)`` of a real call: the split is checked against the encoder
        itself on it (eval mode, the random state untouched) before it is used.
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
    # the check's forward samples z: on a copy of the random state, so that building the
    # prior (lazily, at a run's first step, also after a resume) draws nothing
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=_devices(example)):
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
