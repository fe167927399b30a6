"""A network of user blocks ``x_{n+1} = x_n + h f_n(x_n)`` as MGRIT problems: steps and adjoint steps by autograd.

The twins of :class:`~mgrit_resnet.nn.propagators.ForwardProblem` and
:class:`~mgrit_resnet.nn.propagators.AdjointProblem` for any residual branch
``f_n`` (an ``nn.Module``), with no hand-written derivative:

- a fine forward step records a small graph: the input ``x_n`` (detached,
  ``requires_grad``), ``f_n(x_n)`` and the step ``torch.add(x_n, f_n(x_n), alpha=h)``;
  each layer keeps the graph of its *last* fine evaluation (see the
  propagators' docstring for why that is the one the gradient needs).
  Coarse forward steps ``x + dT f_{n0}(x)`` run without a graph.
- a fine adjoint step into layer ``n`` differentiates the recorded *step*
  with the output gradient ``lambda``: that is, kernel for kernel and in the
  same order, what autograd does for the serial network (``lambda * h`` into
  ``f_n``'s backward, then ``lambda`` and the contributions of ``f_n`` summed
  in ``x_n``'s input buffer), so one level is bitwise serial autograd even for
  a block that reads its input more than once. A coarse adjoint step
  differentiates the recorded ``f_n`` with ``lambda * dT`` and adds ``lambda``.
- parameter gradients: with one level (every layer visited once) computed in
  the same backward call; with several levels, in the same call too during
  the fine sweep that the solver announces as its last (a fixed iteration
  count: one-shot), and otherwise taken once, from the ``lambda`` of the last
  fine visit, by :meth:`ModuleAdjoint.parameter_grads` (earlier fine visits
  skip the weight-gradient kernels).
- with several levels the recorded graphs run the blocks' stride-1 float32
  CPU convolutions with the input VJP of the built-in fast path
  (:mod:`~mgrit_resnet.nn.conv_vjp`); one level keeps autograd's own kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .conv_vjp import FastConvVJP, input_grad_only
from .partition import exchange_foreign, interval_means
from .user import flat_buffer, load_flat, module_nbytes, module_tensors


def trainable(block: nn.Module) -> list[nn.Parameter]:
    """The block's parameters that receive gradients, in ``parameters()`` order."""
    return [p for p in block.parameters() if p.requires_grad]


class ModuleForward:
    """Forward propagation through the blocks in ``blocks`` (layer index -> module).

    With ``record`` (a training call) every fine step keeps its graph for the
    adjoint; without it (``predict``) no step does. ``fast_vjp``: record the
    graphs under :class:`~mgrit_resnet.nn.conv_vjp.FastConvVJP`.
    """

    def __init__(
        self, x0: torch.Tensor, blocks: dict[int, nn.Module], h: float, depth: int, record: bool = True, fast_vjp: bool = False
    ) -> None:
        self.x0 = x0
        self.weights = blocks
        self.h = h
        self.n_steps = depth
        self.record = record
        self.fast_vjp = fast_vjp
        self.saved: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def initial_value(self) -> torch.Tensor:
        return self.x0

    def step(self, u: torch.Tensor, start: int, stop: int, level: int) -> torch.Tensor:
        block = self.weights[start]
        if level == 0 and self.record:
            with torch.enable_grad():
                x = u.detach().requires_grad_()
                if self.fast_vjp:
                    with FastConvVJP():
                        f = block(x)
                else:
                    f = block(x)
                out = torch.add(x, f, alpha=self.h)  # as ODEResNet, bitwise
            self.saved[start] = (x, f, out)
            return out.detach()
        block = self.weights.get((start, stop), block)  # the interval's mean block, with coarse_weights = "mean"
        with torch.no_grad():
            return torch.add(u, block(u), alpha=(stop - start) * self.h)


class ModuleAdjoint:
    """Adjoint propagation, backwards through the layers of a finished :class:`ModuleForward`.

    ``one_level``: compute the parameter gradients in every fine step (each
    layer is visited once); otherwise keep ``lambda`` and take them at the end.
    """

    def __init__(self, terminal: torch.Tensor, forward: ModuleForward, one_level: bool = True) -> None:
        self.terminal = terminal
        self.forward = forward
        self.n_steps = forward.n_steps
        self.one_level = one_level
        self.lam: dict[int, torch.Tensor] = {}
        self.grads: dict[int, tuple[torch.Tensor, ...]] = {}
        self._last_sweep = one_level

    def initial_value(self) -> torch.Tensor:
        return self.terminal

    def last_sweep(self) -> None:
        """Called by the solver before its last fine sweep: from now on each fine step also takes its layer's parameter gradients."""
        self._last_sweep = True
        self.lam.clear()  # a layer missed by the sweep then fails loudly instead of using a stale lambda

    def step(self, lam: torch.Tensor, start: int, stop: int, level: int) -> torch.Tensor:
        fwd = self.forward
        layer = fwd.n_steps - stop
        x, f, out = fwd.saved[layer]
        if level == 0:
            if self._last_sweep:
                params = trainable(fwd.weights[layer])
                got = torch.autograd.grad(out, (x, *params), lam, retain_graph=True, allow_unused=True)
                self.grads[layer] = tuple(_zeros_if_none(g, p) for g, p in zip(got[1:], params))
                return _zeros_if_none(got[0], x)
            self.lam[layer] = lam
            with input_grad_only():
                (gx,) = torch.autograd.grad(out, (x,), lam, retain_graph=True)
            return gx
        mean = fwd.weights.get((layer, layer + stop - start))
        with input_grad_only():
            if mean is None:
                (gx,) = torch.autograd.grad(f, (x,), lam * ((stop - start) * fwd.h), retain_graph=True, allow_unused=True)
            else:  # the adjoint of the mean block's coarse step, at the fine state
                with torch.enable_grad():
                    xm = x.detach().requires_grad_()
                    (gx,) = torch.autograd.grad(mean(xm), (xm,), lam * ((stop - start) * fwd.h), allow_unused=True)
        return lam.clone() if gx is None else lam + gx

    def parameter_grads(self, layer: int) -> tuple[torch.Tensor, ...]:
        """The gradients of ``layer``'s trainable parameters from the last fine-level adjoint step through it."""
        if layer in self.grads:
            return self.grads[layer]
        x, f, out = self.forward.saved[layer]
        params = trainable(self.forward.weights[layer])
        if not params:
            return ()
        got = torch.autograd.grad(out, params, self.lam[layer], retain_graph=True, allow_unused=True)
        return tuple(_zeros_if_none(g, p) for g, p in zip(got, params))


def _floating(module: nn.Module) -> list[torch.Tensor]:
    """The parameters and floating-point buffers of ``module``: what a mean block averages."""
    return [t for t in module_tensors(module) if t.is_floating_point()]


def _zeros_if_none(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad


class ModuleSteps:
    """User blocks as MGRIT problems: what travels, what is trained, the problem pair.

    Parameters
    ----------
    make
        ``make(layer) -> nn.Module``: the block of ``layer`` as every rank
        builds it (seeded, converted); rebuilds the blocks borrowed from other ranks.
    depth, t_final
        ``N`` and ``T``; every layer is a step of ``h = T / N``.
    """

    ops = None

    def __init__(self, make: Callable[[int], nn.Module], depth: int, t_final: float) -> None:
        self.make = make
        self.depth = depth
        self.h = t_final / depth
        self.fast_vjp = False  # set for multilevel solves, as the built-in kinds take their fast operators
        self.coarse_weights = "first"
        self.intervals: list[tuple[int, int]] = []
        self._borrowed: dict[int, nn.Module] = {}
        self._means: dict[tuple[int, int], nn.Module] = {}

    def own(self, layer: nn.Module) -> nn.Module:
        """What the forward steps use of one of this rank's layers: the block itself (its fine steps record graphs)."""
        return layer

    def parameters(self, layer: nn.Module) -> list[nn.Parameter]:
        """The parameters of a block whose gradients the adjoint returns, in the order of :meth:`ModuleAdjoint.parameter_grads`."""
        return trainable(layer)

    def fetch(self, backend: Any, plan: list[list[int]], layer_bounds: list[int], own: dict, device: torch.device) -> tuple[dict, int]:
        """Collective: ``own`` with the other ranks' blocks this rank's coarse steps use (``plan[rank]``), and the bytes sent.

        Every rank sends each of its blocks that another rank's plan names as
        one flat host buffer of its parameters and buffers; the receiver
        builds the block once with the same factory and loads every received
        buffer into it.
        """
        blocks = dict(own)

        def incoming(n: int) -> torch.Tensor:
            if n not in self._borrowed:
                self._borrowed[n] = self.make(n).requires_grad_(False)
            return torch.empty(module_nbytes(self._borrowed[n]), dtype=torch.uint8)

        def arrived(n: int, buffer: torch.Tensor) -> None:
            load_flat(self._borrowed[n], buffer)
            blocks[n] = self._borrowed[n]

        sent = exchange_foreign(backend, plan, layer_bounds, lambda n: flat_buffer(own[n]), incoming, arrived)
        if self.coarse_weights == "mean" and self.intervals:
            blocks.update(self._interval_means(backend, own))
        return blocks, sent

    def _interval_means(self, backend: Any, own: dict[int, nn.Module]) -> dict[tuple[int, int], nn.Module]:
        """Collective: ``(start, stop) ->`` a block holding the mean parameters and floating buffers of the interval's blocks.

        The sums are :func:`~mgrit_resnet.nn.partition.interval_means`' (in
        float64). The mean blocks are built once by the factory
        (of the interval's first layer) and refilled at every call.
        """
        if not _floating(next(iter(own.values()))):
            return {}  # blocks without parameters or buffers are all alike
        rows = torch.stack([torch.cat([t.detach().reshape(-1).double().cpu() for t in _floating(block)]) for block in own.values()])
        for (start, stop), mean in interval_means(backend, rows, min(own), self.intervals).items():
            if (start, stop) not in self._means:
                self._means[(start, stop)] = self.make(start).requires_grad_(False)
            offset = 0
            with torch.no_grad():
                for t in _floating(self._means[(start, stop)]):
                    t.copy_(mean[offset : offset + t.numel()].view(t.shape))
                    offset += t.numel()
        return dict(self._means)

    def forward_problem(self, x0: torch.Tensor, weights: dict, record: bool = True) -> ModuleForward:
        """Forward propagation of ``x0``; ``record``: keep each layer's graph for the adjoint."""
        return ModuleForward(x0, weights, self.h, self.depth, record, self.fast_vjp)

    def adjoint_problem(self, terminal: torch.Tensor, forward: ModuleForward, one_level: bool) -> ModuleAdjoint:
        """Adjoint propagation through ``forward``'s recorded graphs."""
        return ModuleAdjoint(terminal, forward, one_level)
