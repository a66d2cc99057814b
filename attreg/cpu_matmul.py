"""Matrix products on the CPU through oneDNN: the wide first and last layers, faster.

The products that dominate an attribution-regularized step are wide: ``batch x genes x
hidden`` (the first layer, its weight gradient, the input gradient ``(dF/dh) W`` of a
prior and the two products of its backward). PyTorch's CPU builds compute float32
products with Intel MKL, which on AMD processors takes a slower code path: on the
project's AMD EPYC (Zen 5) machine a ``1024 x 128 x 3346`` product takes 4.4-5.9 ms with
``torch.mm`` and 1.9-2.5 ms with the oneDNN library that ships inside the same PyTorch
build (``benchmarks/bench_matmul.py``); TensorFlow uses oneDNN, which is most of why its
steps were faster. :func:`matmul` and :func:`linear` compute the same float32 products
(full precision, no down-conversion) with oneDNN and are differentiable to any order;
:class:`Linear` is an ``nn.Linear`` that uses them.

The backend is chosen once per process: ``"auto"`` (default) uses oneDNN for float32 CPU
tensors when this PyTorch build has it and a self-check on a small product agrees with
``torch.mm``; ``"torch"`` always uses PyTorch's own product. Set it with
:func:`set_cpu_matmul` or the environment variable ``ATTREG_CPU_MATMUL``. Other devices
and dtypes, small products and ``torch.func`` transforms always use PyTorch's product.

Examples
--------
>>> import torch, attreg
>>> a, b = torch.randn(64, 32, requires_grad=True), torch.randn(32, 300)
>>> torch.allclose(attreg.cpu_matmul.matmul(a, b), a @ b, atol=1e-5)
True
>>> attreg.cpu_matmul.matmul(a, b).sum().backward(); a.grad.shape
torch.Size([64, 32])
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from attreg.fast_paths import fast_paths_enabled

__all__ = ["Linear", "cpu_matmul_backend", "linear", "linear_mul", "matmul", "set_cpu_matmul"]

logger = logging.getLogger(__name__)

_BACKENDS = ("auto", "onednn", "torch")
_requested: str = os.environ.get("ATTREG_CPU_MATMUL", "auto")
_resolved: str | None = None
# below this many multiply-adds the call overhead outweighs the faster kernel
MIN_MACS = 1 << 20


def set_cpu_matmul(backend: str = "auto") -> str:
    """Choose how :func:`matmul` / :func:`linear` compute float32 CPU products.

    Parameters
    ----------
    backend
        ``"auto"`` (oneDNN where available and self-checked), ``"onednn"`` (the same,
        but an error where oneDNN is unavailable) or ``"torch"`` (PyTorch's product).

    Returns
    -------
    str
        The backend now in use: ``"onednn"`` or ``"torch"``.
    """
    global _requested, _resolved
    if backend not in _BACKENDS:
        raise ValueError(f"unknown CPU matmul backend {backend!r}; use one of {_BACKENDS}.")
    _requested, _resolved = backend, None
    return cpu_matmul_backend()


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _onednn_works() -> bool:
    if not torch.backends.mkldnn.is_available() or not torch.backends.mkldnn.enabled:
        return False
    try:
        g = torch.Generator().manual_seed(0)
        a, w = torch.randn(33, 70, generator=g), torch.randn(50, 70, generator=g)
        bias = torch.randn(50, generator=g)
        ok = torch.allclose(_onednn_linear(a, w, bias), torch.addmm(bias, a, w.t()), atol=1e-4)
        # strided (transposed) operands, as the backward passes them
        ok &= torch.allclose(_onednn_linear(a.t(), a.t(), None), a.t() @ a, atol=1e-3)
        return bool(ok)
    except (RuntimeError, AttributeError, NotImplementedError) as err:
        logger.debug("oneDNN linear unavailable: %s", err)
        return False


def cpu_matmul_backend() -> str:
    """The backend in use for float32 CPU products: ``"onednn"`` or ``"torch"``."""
    global _resolved
    if _resolved is None:
        if _requested not in _BACKENDS:
            raise ValueError(
                f"ATTREG_CPU_MATMUL={_requested!r} is not a backend; use one of {_BACKENDS}."
            )
        works = _requested != "torch" and _onednn_works()
        if _requested == "onednn" and not works:
            raise RuntimeError(
                "ATTREG_CPU_MATMUL / set_cpu_matmul asked for 'onednn', but this PyTorch "
                "build has no working oneDNN linear; use 'auto' or 'torch'."
            )
        _resolved = "onednn" if works else "torch"
        logger.debug("attreg CPU matmul backend: %s", _resolved)
    return _resolved


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if not fast_paths_enabled():
        return False
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if weight.device.type != "cpu" or weight.ndim != 2 or x.ndim < 1:
        return False
    if x.is_sparse or weight.is_sparse or x.layout != torch.strided:
        return False
    if torch.compiler.is_compiling():  # torch.compile chooses its own kernels
        return False
    if torch._C._functorch.is_functorch_wrapped_tensor(x) or (
        torch._C._functorch.is_functorch_wrapped_tensor(weight)
    ):
        return False
    if x.numel() * weight.shape[0] < MIN_MACS:
        return False
    return cpu_matmul_backend() == "onednn"


def _dense(t: torch.Tensor) -> bool:
    """Row-major, or column-major (the transpose of a row-major matrix)."""
    return t.is_contiguous() or (t.ndim == 2 and t.t().is_contiguous())


class _OneDNNLinear(torch.autograd.Function):
    """``x @ weight.T + bias`` by oneDNN; the backward uses :func:`linear` again, so the
    result is differentiable to any order (``create_graph=True`` works)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = linear(grad, weight.t())
        if ctx.needs_input_grad[1]:
            gw = linear(grad.t(), x.t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum(0)
        return gx, gw, gb


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``torch.nn.functional.linear`` (``x @ weight.T + bias``), by oneDNN on the CPU.

    Parameters
    ----------
    x
        ``(..., in_features)``.
    weight
        ``(out_features, in_features)``; any strides (a transposed view is fine).
    bias
        ``(out_features,)`` or ``None``.
    """
    _check_linear_shapes(x, weight, bias)
    if not _use_onednn(x, weight) or (bias is not None and bias.dtype != torch.float32):
        return torch.nn.functional.linear(x, weight, bias)
    if bias is not None and not bias.is_contiguous():
        bias = bias.contiguous()
    # broadcast (stride-0) views, e.g. the gradient of a .sum(), are materialized
    if 0 in x.stride():
        x = x.contiguous()
    if 0 in weight.stride():
        weight = weight.contiguous()
    # oneDNN is fast on row- or column-major operands only; any other strides (a slice
    # of an interleaved buffer, say) take its reference kernel, 100x slower
    if not _dense(weight) or (x.ndim == 2 and not _dense(x)):
        return torch.nn.functional.linear(x, weight, bias)
    if x.ndim == 2:
        transposed = x.stride(0) == 1 and x.stride(1) != 1
        if transposed and bias is None and x.shape[0] > weight.shape[0]:
            # a large transposed x (as in a weight gradient): oneDNN is fast when the
            # large strided operand is the weight, so compute (weight @ x.T).T instead
            return _OneDNNLinear.apply(weight, x, None).t()
        return _OneDNNLinear.apply(x, weight, bias)
    flat = x.reshape(-1, x.shape[-1])
    flat = _OneDNNLinear.apply(flat if flat.is_contiguous() else flat.contiguous(), weight, bias)
    return flat.reshape(*x.shape[:-1], weight.shape[0])


def _check_linear_shapes(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """A shape error in PyTorch's words, before oneDNN reports "could not create a
    primitive descriptor"."""
    if weight.ndim != 2 or x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise RuntimeError(
            f"linear: inputs of shape {tuple(x.shape)} and weight of shape "
            f"{tuple(weight.shape)} cannot be multiplied: the weight must be "
            f"(out_features, {x.shape[-1] if x.ndim else '?'})."
        )
    if bias is not None and tuple(bias.shape) not in ((weight.shape[0],), ()):
        raise RuntimeError(
            f"linear: bias of shape {tuple(bias.shape)} does not match the "
            f"{weight.shape[0]} output features."
        )


class _OneDNNLinearMul(torch.autograd.Function):
    """``(x @ weight.T) * other`` with the product's output multiplied in place by oneDNN
    (one kernel: the product is never written out on its own). The backward is made of
    :func:`linear` and products, so it is differentiable again."""

    @staticmethod
    def forward(ctx, x, weight, other):
        ctx.save_for_backward(x, weight, other)
        if x.dtype == torch.float32:
            return torch.ops.mkldnn._linear_pointwise.binary(x, other, weight, None, "mul")
        return torch.nn.functional.linear(x, weight) * other  # (tests run it in float64)

    @staticmethod
    def backward(ctx, grad):
        x, weight, other = ctx.saved_tensors
        g_prod = grad * other
        gx = linear(g_prod, weight.t()) if ctx.needs_input_grad[0] else None
        gw = linear(g_prod.t(), x.t()) if ctx.needs_input_grad[1] else None
        go = grad * linear(x, weight) if ctx.needs_input_grad[2] else None
        return gx, gw, go


def linear_mul(x: torch.Tensor, weight: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``linear(x, weight) * other`` for a 2-D ``x`` and ``other`` of the output's shape.

    On the oneDNN path the multiplication is fused into the product (saves writing and
    re-reading the ``rows x out_features`` product, e.g. ``(dF/dh) W`` before it is
    multiplied by ``x - x'``); elsewhere it is the plain composition. Differentiable to
    any order.

    Examples
    --------
    >>> x, w, o = torch.randn(64, 32), torch.randn(300, 32), torch.randn(64, 300)
    >>> torch.allclose(linear_mul(x, w, o), (x @ w.T) * o, atol=1e-4)
    True
    """
    _check_linear_shapes(x, weight, None)
    fused = (
        x.ndim == 2
        and other.shape == (x.shape[0], weight.shape[0])
        and other.dtype == torch.float32
        and other.device.type == "cpu"
        and other.is_contiguous()
        and x.is_contiguous()
        and _dense(weight)
        and _use_onednn(x, weight)
    )
    if not fused:
        return linear(x, weight) * other
    return _OneDNNLinearMul.apply(x, weight, other)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for ``a`` of shape ``(..., k)`` and a matrix ``b`` of shape ``(k, n)``."""
    if b.ndim != 2:
        return a @ b
    if a.ndim < 1 or a.shape[-1] != b.shape[0]:
        raise RuntimeError(
            f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be multiplied "
            f"({a.shape[-1] if a.ndim else '?'} != {b.shape[0]})."
        )
    return linear(a, b.t())


class Linear(nn.Linear):
    """``nn.Linear`` whose forward uses :func:`linear` (same parameters and state dict).

    Examples
    --------
    >>> layer = Linear(300, 16)
    >>> layer(torch.randn(8, 300)).shape
    torch.Size([8, 16])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
