"""Activations with a hand-written derivative that is bitwise the one autograd uses.

The layer-parallel adjoint applies ``backward`` step by step; the serial twin
runs ``apply`` through autograd. Both end in the same ATen kernels (or, for
``smooth_relu``, the same custom :class:`torch.autograd.Function`), so with
one level the two gradients agree to the last bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import ACTIVATION_NAMES

ETA = 0.1
"""Half-width of the quadratic blend of ``smooth_relu``."""


def smooth_relu(z: torch.Tensor) -> torch.Tensor:
    """``z^2/(4 eta) + z/2 + eta/4`` for ``|z| < eta``, else ``max(0, z)`` (differentiable once)."""
    return _SmoothReLU.apply(z)


def _smooth_relu_value(z: torch.Tensor) -> torch.Tensor:
    quadratic = z * z / (4 * ETA) + z / 2 + ETA / 4
    return torch.where(z.abs() < ETA, quadratic, torch.relu(z))


def _smooth_relu_derivative_times(g: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    slope = torch.where(z.abs() < ETA, z / (2 * ETA) + 0.5, (z > 0).to(z.dtype))
    return g * slope


class _SmoothReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return _smooth_relu_value(z)

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        return _smooth_relu_derivative_times(g, z)


@dataclass(frozen=True)
class Activation:
    """An activation and the vector-Jacobian product the adjoint needs.

    ``forward(z)`` returns ``(sigma(z), saved)``; ``backward(g, saved)`` returns
    ``sigma'(z) * g``. ``apply`` is the autograd version the serial network uses.
    """

    name: str
    apply: Callable[[torch.Tensor], torch.Tensor]
    saves_input: bool
    _backward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.apply(z)
        return a, (z if self.saves_input else a)

    def backward(self, g: torch.Tensor, saved: torch.Tensor) -> torch.Tensor:
        return self._backward(g, saved)


#: The activations by ``network.activation`` name: ``tanh``, ``relu`` and ``smooth_relu``.
ACTIVATIONS: dict[str, Activation] = {
    "tanh": Activation("tanh", torch.tanh, False, lambda g, a: torch.ops.aten.tanh_backward(g, a)),
    "relu": Activation("relu", torch.relu, False, lambda g, a: torch.ops.aten.threshold_backward(g, a, 0)),
    "smooth_relu": Activation("smooth_relu", smooth_relu, True, _smooth_relu_derivative_times),
}
assert tuple(ACTIVATIONS) == ACTIVATION_NAMES, "every activation the config offers has one implementation here"
