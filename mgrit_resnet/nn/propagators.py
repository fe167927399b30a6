"""The network's forward and adjoint propagation as MGRIT problems.

Coarse steps use the weights of their interval's first layer, or with
``coarse_weights = "mean"`` the mean weights of the interval's layers: for
layers whose weights vary from one to the next, the mean step
``x + dT sigma(mean(W) x + mean(b))`` is the sum of the interval's steps to
first order in the activation, the first layer's step is not, so each MGRIT
iteration reduces the error much further. The adjoint's coarse steps take the
same mean weight, with the activation's derivative stored at the interval's
first fine state (nothing is recomputed).

Forward: point ``n`` holds the state ``x_n``; the step from fine point ``a`` to
``b`` (``b - a = 1`` on the fine level, the level's stride on coarser ones)
is the residual layer ``a`` with step size ``(b - a) h``.

Adjoint: run backwards in layer-time, so point ``t`` holds ``lambda_{N - t}``
and the step into point ``t`` applies the transposed Jacobian of layer
``N - t`` at its stored forward state, with step size ``(b - a) h``: on
coarse levels that is exactly the adjoint of the forward coarse step of the
same interval, linearised at the fine state.

Both record what the gradient needs from the *last* fine-level evaluation of
every layer (MGRIT ends each iteration with an F-relaxation and the
C-point probe, which between them evaluate every layer at its final input):
the forward keeps each layer's input and activation, the adjoint each layer's
``sigma'(z) * h * lambda`` (on more than one level ``sigma'(z) * lambda``, the
step size applied to the gradients), from which the parameter gradients follow
without another sweep. In a sweep the solver announces as its last (a fixed
iteration count: one-shot) each fine adjoint step takes its layer's parameter
gradients at once instead.
"""

from __future__ import annotations

from typing import Any

import torch

from .activations import Activation
from .partition import fetch_foreign_weights, interval_means


class ForwardProblem:
    """Forward propagation through the layers in ``weights`` (layer index -> (W, b))."""

    def __init__(
        self, x0: torch.Tensor, weights: dict[int, tuple[torch.Tensor, torch.Tensor]], h: float, depth: int, ops: Any, act: Activation
    ):
        self.x0 = x0
        self.weights = weights
        self.h = h
        self.n_steps = depth
        self.ops = ops
        self.act = act
        self.saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def initial_value(self) -> torch.Tensor:
        return self.x0

    def step(self, u: torch.Tensor, start: int, stop: int, level: int) -> torch.Tensor:
        weight, bias = self.weights[start] if level == 0 else self.weights.get((start, stop)) or self.weights[start]
        a, saved = self.act.forward(self.ops.pre(u, weight, bias))
        if level == 0:
            self.saved[start] = (u, saved)
            return torch.add(u, a, alpha=self.h)  # as layers.residual_step, bitwise
        return torch.add(u, a, alpha=(stop - start) * self.h)


class AdjointProblem:
    """Adjoint propagation, backwards through the layers of a finished :class:`ForwardProblem`.

    With ``bitwise`` each step makes autograd's operations in autograd's order
    (``sigma'(z) * (h * lambda)``, then ``J^T``), so that the one-level solve
    equals autograd to the last bit. Without it the step size is applied once,
    in the final addition: one elementwise product fewer per step (a few per
    cent of an adjoint step); the same values up to rounding.
    """

    def __init__(self, terminal: torch.Tensor, forward: ForwardProblem, bitwise: bool = True):
        self.terminal = terminal
        self.forward = forward
        self.n_steps = forward.n_steps
        self.bitwise = bitwise
        self.gz: dict[int, torch.Tensor] = {}
        self.grads: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._last_sweep = False

    def initial_value(self) -> torch.Tensor:
        return self.terminal

    def last_sweep(self) -> None:
        """Called by the solver before its last fine sweep: from now on each fine step also takes its layer's parameter gradients.

        They are then made while the step's operands are fresh in cache, on
        each rank before the solve's closing reduction rather than after it,
        and no ``sigma'(z) * lambda`` is kept for later.
        """
        self._last_sweep = True
        self.gz.clear()  # a layer missed by the sweep then fails loudly instead of using a stale product

    def step(self, lam: torch.Tensor, start: int, stop: int, level: int) -> torch.Tensor:
        fwd = self.forward
        layer = fwd.n_steps - stop
        x, saved = fwd.saved[layer]
        weight = (fwd.weights[layer] if level == 0 else fwd.weights.get((layer, layer + stop - start)) or fwd.weights[layer])[0]
        h = fwd.h if level == 0 else (stop - start) * fwd.h
        if self.bitwise:
            gz = fwd.act.backward(lam * h, saved)
            out = lam + fwd.ops.input_vjp(gz, x, weight)
        else:
            gz = fwd.act.backward(lam, saved)
            out = torch.add(lam, fwd.ops.input_vjp(gz, x, weight), alpha=h)
        if level == 0:
            if self._last_sweep:
                self.grads[layer] = self._parameter_grads(gz, layer)
            else:
                self.gz[layer] = gz
        return out

    def parameter_grads(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(dL/dW, dL/db)`` of ``layer`` from the last fine-level adjoint step through it."""
        if layer in self.grads:
            return self.grads[layer]
        return self._parameter_grads(self.gz[layer], layer)

    def _parameter_grads(self, gz: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        fwd = self.forward
        grad_weight, grad_bias = fwd.ops.param_vjp(gz, fwd.saved[layer][0], fwd.weights[layer][0])
        if not self.bitwise:  # the products lack the step size (see the class)
            grad_weight, grad_bias = grad_weight.mul_(fwd.h), grad_bias.mul_(fwd.h)
        return grad_weight, grad_bias


def coarse_intervals(hierarchy: Any) -> list[tuple[int, int]]:
    """The fine-layer intervals ``[start, stop)`` of every coarse step of ``hierarchy``."""
    return [
        ((j - 1) * hierarchy.stride(level), j * hierarchy.stride(level))
        for level in range(1, hierarchy.n_levels)
        for j in range(1, hierarchy.points(level))
    ]


class BuiltinSteps:
    """The built-in layers (``x + h sigma(W x + b)``) as MGRIT problems: what travels, what is trained, the problem pair.

    :class:`~mgrit_resnet.nn.bridge.LayerSolves` drives every network through
    one such object; :class:`~mgrit_resnet.nn.module_steps.ModuleSteps` is the
    general (user block) twin.
    """

    def __init__(self, spec: Any, ops: Any, coarse_weights: str = "first", intervals: list[tuple[int, int]] | None = None) -> None:
        self.spec = spec
        self.ops = ops
        self.coarse_weights = coarse_weights
        self.intervals = intervals or []

    def own(self, layer: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """What the forward steps use of one of this rank's layers: its weights, detached."""
        return layer.weight.detach(), layer.bias.detach()

    def parameters(self, layer: Any) -> list[torch.Tensor]:
        """The parameters of a layer whose gradients the adjoint returns, in the order of :meth:`AdjointProblem.parameter_grads`."""
        return [layer.weight, layer.bias]

    def fetch(self, backend: Any, plan: list[list[int]], layer_bounds: list[int], own: dict, device: torch.device) -> tuple[dict, int]:
        """Collective: ``own`` with the other ranks' layers this rank's coarse steps use, and the bytes sent.

        With ``coarse_weights = "mean"`` also, keyed ``(start, stop)``, the mean
        weights of every coarse interval's layers (one sum over all ranks).
        """
        weights, sent = fetch_foreign_weights(backend, plan, layer_bounds, own, device)
        if self.coarse_weights == "mean" and self.intervals:
            weight = next(iter(own.values()))[0]
            layers = list(own.values())  # in layer order, from this rank's first layer
            rows = torch.cat([torch.stack([w for w, _ in layers]).flatten(1), torch.stack([b for _, b in layers]).flatten(1)], 1).cpu()
            for interval, mean in interval_means(backend, rows, min(own), self.intervals).items():
                mean = mean.to(weight.device)
                weights[interval] = (mean[: weight.numel()].view(weight.shape), mean[weight.numel() :])
        return weights, sent

    def forward_problem(self, x0: torch.Tensor, weights: dict, record: bool = True) -> ForwardProblem:
        """Forward propagation of ``x0`` (it always keeps what the adjoint needs: one state and activation per layer)."""
        spec = self.spec
        return ForwardProblem(x0, weights, spec.h, spec.depth, self.ops, spec.act)

    def adjoint_problem(self, terminal: torch.Tensor, forward: ForwardProblem, one_level: bool) -> AdjointProblem:
        """Adjoint propagation through ``forward``'s layers (bitwise autograd's on one level)."""
        return AdjointProblem(terminal, forward, bitwise=one_level)
