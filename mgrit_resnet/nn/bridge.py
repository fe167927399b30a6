"""The solves of a layer-parallel network and the one autograd node that joins them.

:class:`LayerSolves` holds everything a forward and backward pass needs
besides the parameters: the forward and adjoint MGRIT solvers (and their
one-level twins, the exact layer-serial propagation), the layers' steps (the
built-in layers' :class:`~mgrit_resnet.nn.propagators.BuiltinSteps` or user
blocks' :class:`~mgrit_resnet.nn.module_steps.ModuleSteps`: both make the
forward and adjoint problems) and the backend. :class:`LayerFunction` is ``x_0 -> x_N`` by forward MGRIT;
its backward is the adjoint MGRIT solve, which also yields the owned layers'
parameter gradients.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import comm as comm_module
from ..mgrit import MGRIT, check_coarse_grid
from ..result import SolveResult
from .module_steps import ModuleSteps
from .ops import ConvOps, DenseOps
from .partition import foreign_layers, layer_partition
from .propagators import BuiltinSteps, coarse_intervals
from .spec import NetworkSpec
from .warm import WarmStart, warm_solve

#: Parts a batch is cut into when several ranks propagate it layer-serially: the parts follow one another through
#: the ranks, so that all ranks work at once on different parts. A fixed count: the parts are the same at every
#: rank count above one (one rank propagates the batch whole).
PIPELINE_PARTS = 8


@dataclass
class CallStats:
    """What the last forward and backward call did (on this rank; lists are per rank).

    ``grad_error_terms`` are the squared 2-norms ``(error, exact)`` whose
    ratio's root is ``grad_error``; ``stages`` holds a staged network's
    per-stage stats (``None`` for one stage).
    """

    forward: dict[str, Any] = field(default_factory=dict)
    adjoint: dict[str, Any] = field(default_factory=dict)
    weight_bytes: int = 0
    grad_error: float | None = None
    grad_error_terms: tuple[float, float] | None = None
    stages: list[CallStats] | None = None


@dataclass
class LayerSolves:
    """The solves of one :class:`~mgrit_resnet.nn.LayerParallel`, handed to the autograd node with every call.

    Attributes
    ----------
    depth
        The number of layers.
    backend
        This rank's backend; the adjoint solvers run on its reversed view.
    layer_bounds
        Rank ``p`` holds the layers ``[layer_bounds[p], layer_bounds[p + 1])``.
    forward, adjoint
        The solvers of a call: iterated to ``tol``, or a fixed number of iterations (one-shot).
    serial_forward, serial_adjoint
        One-level twins: exact layer-serial propagation, pipelined over the ranks.
    steps
        The layers as MGRIT problems (built-in: with operators whose one-level
        adjoint is autograd's kernels, bitwise; user blocks: autograd itself).
    foreign
        For every rank, the other ranks' layers its coarse forward steps use.
    track_grad_error
        Whether a backward also measures its error against the exact one.
    stats
        What the last call did.
    layer_serial
        Whether calls now solve with the one-level twins and no warm start (:meth:`exact_calls`).
    """

    depth: int
    backend: Any
    layer_bounds: list[int]
    forward: MGRIT
    adjoint: MGRIT
    serial_forward: MGRIT
    serial_adjoint: MGRIT
    steps: BuiltinSteps | ModuleSteps
    foreign: list[list[int]]
    track_grad_error: bool = False
    stats: CallStats = field(default_factory=CallStats)
    layer_serial: bool = False

    @classmethod
    def build(
        cls,
        spec: NetworkSpec | ModuleSteps,
        backend: Any,
        mgrit: Mapping[str, Any],
        fwd_iters: int | None = None,
        bwd_iters: int | None = None,
        track_grad_error: bool = False,
        coarse_weights: str = "first",
    ) -> LayerSolves:
        """The solves of ``spec`` (or of user blocks' steps) over the ranks of ``backend`` with the ``[mgrit]`` options ``mgrit``.

        ``fwd_iters`` / ``bwd_iters`` (one-shot) replace ``tol`` and ``max_iter`` with a fixed number of iterations.
        """
        depth = spec.depth
        fwd, adj, layer_bounds = layer_partition(depth, backend.size)
        reversed_backend = comm_module.ReversedBackend(backend)

        def solver(comm: Any, bounds: list[int], iters: int | None, **extra: Any) -> MGRIT:
            fixed = {} if iters is None else {"tol": 0.0, "max_iter": iters}
            return MGRIT.from_config(None, mgrit, comm=comm, n_steps=depth, partition=bounds, **fixed, **extra)

        forward = solver(backend, fwd, fwd_iters)
        adjoint = solver(reversed_backend, adj, bwd_iters)
        serial_forward = solver(backend, fwd, None, levels=1)
        serial_adjoint = solver(reversed_backend, adj, None, levels=1)
        hierarchy = forward.hierarchy
        intervals = coarse_intervals(hierarchy)
        # with the adjoint's, counted from layer N (not the forward's when N is not a multiple of a level's stride)
        intervals = sorted({*intervals, *((depth - stop, depth - start) for start, stop in intervals)})
        check_coarse_grid(mgrit, depth, "network.depth")
        # One level is layer-serial and kept bitwise equal to autograd; multilevel solves agree to the
        # solver tolerance anyway and take the faster adjoint kernels.
        if isinstance(spec, NetworkSpec):
            ops = spec.ops if hierarchy.n_levels == 1 else spec.fast_ops()
            steps = BuiltinSteps(spec, ops, coarse_weights, intervals)
        else:
            steps = spec
            steps.fast_vjp = hierarchy.n_levels > 1
            steps.coarse_weights, steps.intervals = coarse_weights, intervals
        return cls(
            depth, backend, layer_bounds, forward, adjoint, serial_forward, serial_adjoint, steps,
            foreign_layers(hierarchy, layer_bounds), track_grad_error,
        )  # fmt: skip

    @contextmanager
    def exact_calls(self) -> Iterator[None]:
        """Within it, calls solve with the one-level twins, measure no error and read or write no warm start."""
        saved = self.forward, self.adjoint, self.track_grad_error, self.layer_serial
        self.forward, self.adjoint, self.track_grad_error, self.layer_serial = self.serial_forward, self.serial_adjoint, False, True
        try:
            yield
        finally:
            self.forward, self.adjoint, self.track_grad_error, self.layer_serial = saved

    @property
    def ops(self) -> DenseOps | ConvOps | None:
        """The built-in layers' operators (``None`` for user blocks)."""
        return self.steps.ops

    @property
    def owned_layers(self) -> range:
        """The residual layers this rank holds."""
        rank = self.backend.rank
        return range(self.layer_bounds[rank], self.layer_bounds[rank + 1])

    def forward_solve(
        self, solver: MGRIT, x0: torch.Tensor, weights: dict, warm: WarmStart | None = None, record: bool = True
    ) -> tuple[Any, SolveResult]:
        """Propagate ``x0`` through the layers with ``solver``: the problem and the result.

        With ``record``, the problem keeps what the gradient needs. A ``warm``
        entry starts the solve from its forward states and takes the new ones.
        """
        problem = self.steps.forward_problem(x0, weights, record)
        return problem, warm_solve(solver, problem, warm, forward=True)

    def adjoint_solve(
        self, solver: MGRIT, forward: Any, grad_final: torch.Tensor, warm: WarmStart | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor], SolveResult]:
        """Propagate ``grad_final`` back through ``forward``'s layers.

        Returns ``lambda_0`` (on every rank), the owned layers' parameter
        gradients and the result. A ``warm`` entry starts the solve from its
        adjoint states and takes the new ones.
        """
        adjoint = self.steps.adjoint_problem(grad_final.detach().contiguous(), forward, solver.hierarchy.n_levels == 1)
        result = warm_solve(solver, adjoint, warm, forward=False)
        lam0 = self.broadcast(result.states[-1] if self.backend.rank == 0 else None, grad_final, 0)
        grads = [g for n in self.owned_layers for g in adjoint.parameter_grads(n)]
        return lam0, grads, result

    @torch.no_grad()
    def pipelined_forward(self, x0: torch.Tensor, weights: dict) -> torch.Tensor:
        """``x_N`` for ``x0`` by layer-serial propagation, on every rank (collective, no autograd).

        On several ranks the batch is cut into :data:`PIPELINE_PARTS` parts
        that follow one another through the ranks: while rank ``p`` steps part
        ``k`` through its layers, rank ``p + 1`` steps part ``k - 1``, so the
        ranks work at once and ``P`` ranks take about ``(K + P - 1) / (K P)`` of
        the one-rank time. ``weights`` are this rank's layers (:meth:`steps`'
        ``own``); the result is the one of :attr:`serial_forward` to rounding.
        """
        backend = self.backend
        if backend.size == 1:
            _, result = self.forward_solve(self.serial_forward, x0, weights, record=False)
            return result.states[-1]
        rank, last = backend.rank, backend.size - 1
        own = self.serial_forward.owned_points
        pipe = comm_module.Pipe(backend, x0[:1], x0[:1])
        finals = []
        for part in (p for p in x0.tensor_split(PIPELINE_PARTS) if len(p)):
            problem = self.steps.forward_problem(part, weights, record=False)
            state = part if own.start == 0 else pipe.recv(0, len(part))
            for j in range(max(own.start, 1), own.stop):
                state = problem.step(state, j - 1, j, 0)
            if rank < last:
                pipe.send(0, state)
            else:
                finals.append(state)
        pipe.close()
        return self.broadcast(torch.cat(finals) if rank == last else None, x0, last)

    def final_state(self, result: SolveResult, template: torch.Tensor) -> torch.Tensor:
        """``x_N``, owned by the last rank, on every rank."""
        last = self.backend.size - 1
        return self.broadcast(result.states[-1] if self.backend.rank == last else None, template, last)

    def broadcast(self, value: torch.Tensor | None, template: torch.Tensor, root: int) -> torch.Tensor:
        """``value`` of rank ``root`` on every rank (staged through host memory)."""
        backend = self.backend
        if backend.size == 1:
            return value
        if backend.rank == root:
            host = value.detach().cpu().contiguous()
        else:
            host = torch.empty(template.shape, dtype=template.dtype)
        backend.bcast_buffer(host, root)
        return host.to(template.device)

    def grad_error(self, problem: Any, grad_final: torch.Tensor, lam0: torch.Tensor, grads: list) -> tuple[float, float]:
        """Squared 2-norms of the error of an MGRIT vector-Jacobian product against the layer-serial one, and of the latter (collective).

        The relative error is the root of their ratio (:func:`relative_error`).
        """
        exact_problem, _ = self.forward_solve(self.serial_forward, problem.x0, problem.weights)
        exact_lam0, exact_grads, _ = self.adjoint_solve(self.serial_adjoint, exact_problem, grad_final)
        pairs = list(zip(grads, exact_grads))
        if self.backend.rank == 0:  # the input gradient is replicated: count it once
            pairs.append((lam0, exact_lam0))
        diff, norm = error_terms(pairs)
        return self.backend.allreduce_sum(diff), self.backend.allreduce_sum(norm)


def error_terms(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """Squared 2-norms, in float64, of ``value - exact`` and of ``exact``, summed over the pairs ``(value, exact)``."""
    diff = norm = 0.0
    for value, exact in pairs:
        diff += float((value - exact).double().pow(2).sum())
        norm += float(exact.double().pow(2).sum())
    return diff, norm


def relative_error(diff: float, norm: float) -> float:
    """``sqrt(diff / norm)`` of squared 2-norms; ``sqrt(diff)`` where the exact value is zero."""
    return math.sqrt(diff / norm) if norm > 0 else math.sqrt(diff)


def _summary(result: SolveResult) -> dict[str, Any]:
    return {
        "iterations": result.iterations,
        "residuals": list(result.residuals),
        "converged": result.converged,
        "steps_per_rank": list(result.steps_per_rank),
        "bytes_per_rank": list(result.bytes_per_rank),
        "wall_time": result.wall_time,
    }


class LayerFunction(torch.autograd.Function):
    """``x_0 -> x_N`` by forward MGRIT; its backward is the adjoint MGRIT solve.

    ``apply(x0, solves, weights, warm, record, *params)``: ``weights`` are the
    layers the forward steps use (this rank's and the borrowed ones: detached
    weights, or blocks), ``warm`` the warm-start entry of the batch or
    ``None``, ``record`` whether a backward will follow (user blocks then keep
    their graphs), and ``params`` this rank's layer parameters, whose
    gradients the backward returns.
    """

    @staticmethod
    def forward(ctx, x0, solves: LayerSolves, weights: dict, warm: Any, record: bool, *params):
        problem, result = solves.forward_solve(solves.forward, x0.detach(), weights, warm, record)
        solves.stats.forward = _summary(result)
        ctx.solves, ctx.problem, ctx.warm = solves, problem, warm
        return solves.final_state(result, x0)

    @staticmethod
    def backward(ctx, grad_final):
        solves, problem, warm = ctx.solves, ctx.problem, ctx.warm
        lam0, grads, result = solves.adjoint_solve(solves.adjoint, problem, grad_final, warm)
        solves.stats.adjoint = _summary(result)
        if solves.track_grad_error:
            terms = solves.grad_error(problem, grad_final, lam0, grads)
            solves.stats.grad_error_terms, solves.stats.grad_error = terms, relative_error(*terms)
        return (lam0, None, None, None, None, *grads)
