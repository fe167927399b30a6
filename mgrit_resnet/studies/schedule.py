"""The solver's schedule for P simulated ranks, every step and message charged to a virtual clock.

The real MGRIT code runs for P ranks as threads of one process
(:mod:`mgrit_resnet.comm.threads`) on a stand-in problem with the real grid and
scalar states; each step charges its measured cost (:class:`StepCosts`) and
each message and collective advances the clocks as
:class:`~mgrit_resnet.comm.clocked.ClockedBackend` does in a real run.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..comm import ReversedBackend
from ..comm.clocked import ClockedBackend, VirtualClock
from ..comm.threads import ThreadWorld
from ..mgrit import MGRIT, options_from_config


@dataclass
class StepCosts:
    """Measured seconds of the pieces of work one rank does.

    Attributes
    ----------
    forward
        One step into a point, by level (level 0 records what the gradient
        needs); levels beyond the list cost as the last entry.
    adjoint
        One adjoint step, by level (training only).
    overhead
        Solver bookkeeping per step.
    scale
        Factor the timed parts were scaled by so that they add up to the
        one-rank time (1 unless, timed alone, they added up to more).
    per_layer
        Parameter gradient and optimiser update of one owned layer (training).
    replicated
        Work every rank does once per training step: opening layer,
        classifier, loss and their gradients.
    state_bytes, weight_bytes
        Size of one state (a message) and of one layer's parameters.
    layers
        Layers ``per_layer`` is paid for on one rank (training).
    replicated_bytes
        Size of the replicated parameters (opening layer and classifier): with
        data groups, every rank sums them over the groups with its own layers' gradients.
    """

    forward: list[float]
    adjoint: list[float] = field(default_factory=list)
    overhead: float = 0.0
    per_layer: float = 0.0
    replicated: float = 0.0
    state_bytes: int = 8
    weight_bytes: int = 0
    layers: int = 0
    scale: float = 1.0
    replicated_bytes: int = 0


class _StandIn:
    """The real time grid with scalar states; every step charges its cost.

    The states never converge exactly, so a solve with ``tol = 0`` always does
    its ``max_iter`` iterations, as the real solve it stands for did.
    """

    def __init__(self, n_steps: int, clock: VirtualClock, costs: Sequence[float], overhead: float, seed: int) -> None:
        self.n_steps = n_steps
        self._clock = clock
        self._costs = [c + overhead for c in costs]
        self._rng = np.random.default_rng(seed)
        self.calls: dict[int, int] = {}

    def initial_value(self) -> np.ndarray:
        return np.ones(1)

    def step(self, u: np.ndarray, start: int, stop: int, level: int) -> np.ndarray:
        self._clock.charge(self._costs[min(level, len(self._costs) - 1)])
        self.calls[level] = self.calls.get(level, 0) + 1
        return 0.5 * u + self._rng.random(1)


def _fixed(iterations: int) -> dict[str, Any]:
    """Solver options that make a solve do exactly ``iterations`` iterations."""
    return {"tol": 0.0, "tol_kind": "absolute", "max_iter": iterations}


def _warm_states(solver: MGRIT) -> list[np.ndarray]:
    return [np.ones(1)] * len(solver.owned_points)


def simulate_solve(
    n_steps: int,
    options: dict[str, Any],
    ranks: int,
    costs: StepCosts,
    network: tuple[float, float],
    iterations: int,
    warm: bool = False,
) -> tuple[float, dict[int, int]]:
    """Predicted wall time of ``iterations`` MGRIT iterations on ``ranks`` ranks.

    Parameters
    ----------
    n_steps
        Fine time steps of the problem.
    options
        The ``[mgrit]`` options (a section, or a mapping of some of its keys:
        levels, coarsening, relax, cycle, ...); ``tol``, ``tol_kind`` and
        ``max_iter`` are replaced.
    ranks
        Number of ranks.
    costs
        Measured costs (``forward`` and ``overhead`` are used).
    network
        ``(alpha, beta)``: seconds per message and per byte.
    iterations
        MGRIT iterations to do.
    warm
        Start from given states (one-shot warm starts) rather than the initial guess.

    Returns
    -------
    The largest final clock, and the number of steps per level summed over ranks.
    """

    def program(backend: Any) -> tuple[float, dict[int, int]]:
        clock = VirtualClock(*network, measure_cpu=False)
        clocked = ClockedBackend(backend, clock, lambda buffer, tag: costs.state_bytes)
        problem = _StandIn(n_steps, clock, costs.forward, costs.overhead, backend.rank)
        solver = MGRIT.from_config(problem, options, comm=clocked, **_fixed(iterations))
        solver.solve(initial_guess=_warm_states(solver) if warm else None)
        return clock.time, problem.calls

    results = ThreadWorld(ranks).run(program)
    return max(t for t, _ in results), _sum_calls(calls for _, calls in results)


def _sum_calls(parts: Any) -> dict[int, int]:
    return dict(sum((Counter(calls) for calls in parts), Counter()))


def simulate_training_step(
    depth: int,
    options: dict[str, Any],
    ranks: int,
    costs: StepCosts,
    network: tuple[float, float],
    fwd_iters: int,
    bwd_iters: int,
    data_groups: int = 1,
) -> tuple[float, dict[str, dict[int, int]]]:
    """Predicted wall time of one warm-started one-shot training step of :class:`~mgrit_resnet.nn.LayerParallel`.

    The schedule is the network's: foreign coarse-level weights fetched, the
    forward solve on the forward partition, the final state broadcast from
    the last rank, the replicated classifier and loss, the adjoint solve
    over the ranks in reverse order on the mirrored partition, ``lambda_0``
    broadcast from rank 0, then the owned layers' gradients and updates.

    With ``data_groups = D`` (``train.data_parallel``), ``ranks`` is the number
    of layer-ranks of one group and ``costs`` those of a group's share of the
    batch; the ``D`` groups run the same schedule at once, and then every
    rank sums its gradients (its layers' and the replicated ones) with its
    counterparts in the other groups: an allreduce of
    ``ceil(log2 D) (alpha + beta bytes)``, as :class:`~mgrit_resnet.comm.clocked.ClockedBackend` charges one.

    Returns
    -------
    The largest final clock, and the steps per level of both solves summed over ranks.
    """
    from ..nn.partition import WEIGHT_TAG, foreign_layers, layer_partition

    fwd_bounds, adj_bounds, layer_bounds = layer_partition(depth, ranks)

    def sizes(buffer: Any, tag: int) -> int:
        return costs.weight_bytes if tag == WEIGHT_TAG else costs.state_bytes

    def program(backend: Any) -> tuple[float, dict[int, int], dict[int, int]]:
        rank = backend.rank
        clock = VirtualClock(*network, measure_cpu=False)
        clocked = ClockedBackend(backend, clock, sizes)
        forward = _StandIn(depth, clock, costs.forward, costs.overhead, rank)
        solver = MGRIT.from_config(forward, options, comm=clocked, partition=fwd_bounds, **_fixed(fwd_iters))
        _fetch_weights(clocked, foreign_layers(solver.hierarchy, layer_bounds), layer_bounds)
        solver.solve(initial_guess=_warm_states(solver))
        clocked.bcast_buffer(np.zeros(1), ranks - 1)
        clock.charge(costs.replicated)
        adjoint = _StandIn(depth, clock, costs.adjoint or costs.forward, costs.overhead, ranks + rank)
        solver = MGRIT.from_config(adjoint, options, comm=ReversedBackend(clocked), partition=adj_bounds, **_fixed(bwd_iters))
        solver.solve(initial_guess=_warm_states(solver))
        clocked.bcast_buffer(np.zeros(1), 0)
        owned = layer_bounds[rank + 1] - layer_bounds[rank]
        clock.charge(costs.per_layer * owned)
        if data_groups > 1:
            gradient_bytes = owned * costs.weight_bytes + costs.replicated_bytes
            clock.time += math.ceil(math.log2(data_groups)) * (network[0] + network[1] * gradient_bytes)
        return clock.time, forward.calls, adjoint.calls

    results = ThreadWorld(ranks).run(program)
    calls = {"forward": _sum_calls(r[1] for r in results), "adjoint": _sum_calls(r[2] for r in results)}
    return max(r[0] for r in results), calls


def _fetch_weights(backend: ClockedBackend, plan: list[list[int]], layer_bounds: list[int]) -> None:
    """The network's exchange of the layers other ranks' coarse steps use (one message per layer)."""
    from ..nn.partition import WEIGHT_TAG, owner_of_layer

    if backend.size == 1 or not any(plan):
        return
    me, mine = backend.rank, range(layer_bounds[backend.rank], layer_bounds[backend.rank + 1])
    sends = [backend.isend(np.zeros(1), rank, WEIGHT_TAG) for rank, layers in enumerate(plan) for n in layers if n in mine and rank != me]
    for n in plan[me]:
        backend.irecv(np.zeros(1), owner_of_layer(n, layer_bounds), WEIGHT_TAG).Wait()
    for request in sends:
        request.Wait()


def solver_options(cfg: Any) -> dict[str, Any]:
    """The ``[mgrit]`` options of a simulated one-shot solve (``tol`` and ``max_iter`` are the simulation's)."""
    options = options_from_config(cfg.mgrit)
    for key in ("tol", "max_iter"):
        options.pop(key, None)
    return options
