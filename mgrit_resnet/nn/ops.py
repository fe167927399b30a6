"""The residual layers' operator ``z = W x + b`` and its products with ``J^T``, dense and convolutional."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def flipped_kernel(weight: torch.Tensor) -> torch.Tensor:
    """The kernel whose stride-1 convolution is the transpose of ``weight``'s (in and out swapped, flipped in space)."""
    return weight.transpose(0, 1).flip(2, 3)


class DenseOps:
    """``z = W x + b`` for inputs of shape ``(batch, width)`` and its products with ``J^T``."""

    @staticmethod
    def pre(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight, bias)

    @staticmethod
    def input_vjp(gz: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return gz.mm(weight)

    @staticmethod
    def param_vjp(gz: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return gz.t().mm(x), gz.sum(0)


class ConvOps:
    """3x3 convolution with padding 1 (``width`` channels in and out) and its products with ``J^T``.

    With ``fast_input_vjp`` the input product is the convolution with the
    transposed, flipped kernel: the same operator, about twice as fast on CPU
    as ``convolution_backward`` here, but not bitwise what autograd computes.
    The one-level path keeps autograd's kernel so that it stays bitwise equal.
    """

    def __init__(self, channels: int, fast_input_vjp: bool = False) -> None:
        self.channels = channels
        self.fast_input_vjp = fast_input_vjp

    @staticmethod
    def pre(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight, bias, padding=1)

    def _backward(self, gz, x, weight, mask):
        return torch.ops.aten.convolution_backward(gz, x, weight, [self.channels], [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)

    def input_vjp(self, gz: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.fast_input_vjp:
            return F.conv2d(gz, flipped_kernel(weight), padding=1)
        return self._backward(gz, x, weight, [True, False, False])[0]

    def param_vjp(self, gz: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, grad_weight, grad_bias = self._backward(gz, x, weight, [False, True, True])
        return grad_weight, grad_bias
