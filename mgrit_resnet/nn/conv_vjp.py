"""The fast input VJP of the built-in conv layers, for the convolutions inside user blocks.

On CPU, in float32, the backward-data kernel of a small convolution costs up
to twice its forward kernel. The input VJP of a stride-1 convolution is itself
a stride-1 convolution (kernel transposed and flipped, padding ``k - 1 - p``),
so the forward kernel can compute it: the built-in conv layers do this in
multilevel solves (:class:`~mgrit_resnet.nn.ops.ConvOps` with
``fast_input_vjp``). :class:`FastConvVJP` gives the same to every
``torch.conv2d`` call a user block makes while a fine step records its graph:
a qualifying call runs as :class:`FlippedConv2d`, whose forward is the same
kernel (bitwise the same output) and whose backward takes the input gradient
from the forward kernel and the parameter gradients from
``convolution_backward``. The input gradient equals autograd's to round-off,
not bitwise, so one-level solves (kept bitwise serial) do not use it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .ops import flipped_kernel

_CONV2D = {torch.conv2d, F.conv2d}
_FAST_DTYPES = (torch.float32,)
_wanted = threading.local()  # per thread: the threads backend runs one rank per thread


@contextmanager
def input_grad_only() -> Iterator[None]:
    """Backward passes inside it take no parameter gradients in :class:`FlippedConv2d` (the caller asks for the input's alone).

    A custom autograd function learns only whether its inputs *require*
    gradients, not whether this backward call wants them; without this the
    weight-gradient kernel would run in every adjoint step.
    """
    previous = getattr(_wanted, "input_only", False)
    _wanted.input_only = True
    try:
        yield
    finally:
        _wanted.input_only = previous


def _pair(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int):
        return value, value
    if isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return value[0], value[1]
    return None


def _qualifying_padding(x: Any, weight: Any, bias: Any, stride: Any, padding: Any, dilation: Any, groups: Any) -> tuple[int, int] | None:
    """The padding of a convolution whose input VJP the flipped kernel computes (or ``None``)."""
    if not (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor) and x.dim() == 4 and weight.dim() == 4):
        return None
    if x.device.type != "cpu" or x.dtype not in _FAST_DTYPES or weight.dtype != x.dtype or groups != 1:
        return None
    if _pair(stride) != (1, 1) or _pair(dilation) != (1, 1) or (bias is not None and not isinstance(bias, torch.Tensor)):
        return None
    pad = _pair(padding)
    kernel = weight.shape[2:]
    if pad is None or not all(0 <= p <= k - 1 for p, k in zip(pad, kernel)):
        return None
    return pad


class FlippedConv2d(torch.autograd.Function):
    """``conv2d(x, weight, bias, padding=pad)`` (stride 1, no dilation, one group) with the input VJP by the forward kernel."""

    @staticmethod
    def forward(ctx, x, weight, bias, pad):
        ctx.save_for_backward(x, weight)
        ctx.pad, ctx.has_bias = pad, bias is not None
        return F.conv2d(x, weight, bias, 1, pad)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            back_pad = tuple(k - 1 - p for p, k in zip(ctx.pad, weight.shape[2:]))
            grad_x = F.conv2d(grad, flipped_kernel(weight), None, 1, back_pad)
        if getattr(_wanted, "input_only", False):
            return grad_x, None, None, None
        if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
            mask = [False, ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
            bias_sizes = [weight.shape[0]] if ctx.has_bias else None
            _, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
                grad, x, weight, bias_sizes, [1, 1], list(ctx.pad), [1, 1], False, [0, 0], 1, mask
            )
        return grad_x, grad_weight, grad_bias, None


class FastConvVJP(TorchFunctionMode):
    """Context manager: qualifying ``conv2d`` calls inside it run as :class:`FlippedConv2d`; every other call as it is."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _CONV2D:
            names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
            defaults = (None, None, None, 1, 0, 1, 1)
            values = dict(zip(names, defaults))
            values.update(zip(names, args))
            values.update(kwargs)
            pad = _qualifying_padding(*(values[n] for n in names))
            if pad is not None:
                return FlippedConv2d.apply(values["input"], values["weight"], values["bias"], pad)
        return func(*args, **kwargs)
