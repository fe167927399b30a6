"""The solver's schedule for P simulated ranks, every step and message charged to a virtual clock.

The real MGRIT code runs for P ranks as threads of one process
(:mod:`mgrit_resnet.comm.threads`) on a stand-in problem with the real grid and
scalar states; each step charges its measured cost (:class:`StepCosts`) and
each message and collective advances the clocks as
:class:`~mgrit_resnet.comm.clocked.ClockedBackend` does in a real run.
A network of stages (:class:`~mgrit_resnet.nn.StagedParallel`) is the same
schedule once per stage, its costs :class:`StagedCosts`
(:func:`simulate_staged_step`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
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


@dataclass
class StagedCosts:
    """Measured seconds of a one-shot training step of a network of stages (:class:`~mgrit_resnet.nn.StagedParallel`).

    Attributes
    ----------
    depths
        The layers of every stage.
    stages
        Every stage's :class:`StepCosts` (its own width and resolution): its
        steps by level, bookkeeping per step, state and layer sizes;
        ``per_layer`` is the parameter gradient of one of its layers (paid
        right after the stage's adjoint solve), ``layers`` its depth;
        ``replicated`` and ``replicated_bytes`` are unused (0).
    updates
        The optimiser update of one layer of every stage (paid at the end of the step).
    transition_forward, transition_backward
        Transition ``s`` (from stage ``s`` to ``s + 1``) and its gradient, on every rank.
    replicated
        The rest of the work every rank does: opening, closing, loss, their
        gradients, and the update of the replicated parameters.
    replicated_bytes
        Size of the replicated parameters (opening, transitions, closing).
    scale
        As :attr:`StepCosts.scale`, for all the parts.
    """

    depths: list[int]
    stages: list[StepCosts]
    updates: list[float]
    transition_forward: list[float] = field(default_factory=list)
    transition_backward: list[float] = field(default_factory=list)
    replicated: float = 0.0
    replicated_bytes: int = 0
    scale: float = 1.0

    @classmethod
    def one_stage(cls, depth: int, costs: StepCosts) -> StagedCosts:
        """The costs of a network of one stage that are those of the one-stage network of ``costs``.

        :func:`simulate_staged_step` then gives the figures of :func:`simulate_training_step`.
        """
        stage = replace(costs, replicated=0.0, replicated_bytes=0)
        return cls([depth], [stage], [0.0], replicated=costs.replicated, replicated_bytes=costs.replicated_bytes, scale=costs.scale)


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
    time, calls = _simulate_step(StagedCosts.one_stage(depth, costs), options, ranks, network, fwd_iters, bwd_iters, data_groups)
    return time, {"forward": calls["forward"][0], "adjoint": calls["adjoint"][0]}


def simulate_staged_step(
    options: dict[str, Any],
    ranks: int,
    costs: StagedCosts,
    network: tuple[float, float],
    fwd_iters: int,
    bwd_iters: int,
    data_groups: int = 1,
) -> tuple[float, dict[str, list[dict[int, int]]]]:
    """Predicted wall time of one warm-started one-shot training step of :class:`~mgrit_resnet.nn.StagedParallel`.

    The network's schedule: for stage ``s = 0, ..., S-1`` the schedule of
    :func:`simulate_training_step`'s forward half (the foreign coarse-level
    weights of the stage fetched, its forward solve over all ``ranks``, its
    final state broadcast from the last rank), then transition ``s`` on every
    rank; the replicated opening, closing and loss; for ``s = S-1, ..., 0``
    the stage's adjoint solve over the ranks in reverse order, its input
    gradient broadcast from rank 0, its owned layers' parameter gradients,
    then the gradient of transition ``s - 1`` on every rank; at the end the
    updates of every rank's own layers (and with ``data_groups``, one
    gradient allreduce of its layers of every stage and the replicated
    parameters). Each stage steps, and sends states, at its own costs and sizes.

    Returns
    -------
    The largest final clock, and each stage's steps per level (``calls["forward"][s]``), summed over ranks.
    """
    return _simulate_step(costs, options, ranks, network, fwd_iters, bwd_iters, data_groups)


def _simulate_step(
    costs: StagedCosts,
    options: dict[str, Any],
    ranks: int,
    network: tuple[float, float],
    fwd_iters: int,
    bwd_iters: int,
    data_groups: int,
) -> tuple[float, dict[str, list[dict[int, int]]]]:
    """The schedule of :func:`simulate_staged_step` (of one stage: :func:`simulate_training_step`'s, charge for charge)."""
    from ..nn.partition import WEIGHT_TAG, foreign_layers, layer_partition

    count = len(costs.stages)
    partitions = [layer_partition(depth, ranks) for depth in costs.depths]

    def sizes(stage: StepCosts) -> Any:
        return lambda buffer, tag: stage.weight_bytes if tag == WEIGHT_TAG else stage.state_bytes

    def program(backend: Any) -> tuple[float, list[dict[int, int]], list[dict[int, int]]]:
        rank = backend.rank
        clock = VirtualClock(*network, measure_cpu=False)
        clocked = [ClockedBackend(backend, clock, sizes(stage)) for stage in costs.stages]
        forwards, adjoints = [], []
        for s, (stage, depth, (fwd_bounds, _, layer_bounds)) in enumerate(zip(costs.stages, costs.depths, partitions)):
            forward = _StandIn(depth, clock, stage.forward, stage.overhead, 2 * ranks * s + rank)
            solver = MGRIT.from_config(forward, options, comm=clocked[s], partition=fwd_bounds, **_fixed(fwd_iters))
            _fetch_weights(clocked[s], foreign_layers(solver.hierarchy, layer_bounds), layer_bounds)
            solver.solve(initial_guess=_warm_states(solver))
            clocked[s].bcast_buffer(np.zeros(1), ranks - 1)
            if s < count - 1:
                clock.charge(costs.transition_forward[s])
            forwards.append(forward.calls)
        clock.charge(costs.replicated)
        owned = [layer_bounds[rank + 1] - layer_bounds[rank] for _, _, layer_bounds in partitions]
        for s in reversed(range(count)):
            stage, (_, adj_bounds, _) = costs.stages[s], partitions[s]
            adjoint = _StandIn(costs.depths[s], clock, stage.adjoint or stage.forward, stage.overhead, 2 * ranks * s + ranks + rank)
            solver = MGRIT.from_config(adjoint, options, comm=ReversedBackend(clocked[s]), partition=adj_bounds, **_fixed(bwd_iters))
            solver.solve(initial_guess=_warm_states(solver))
            clocked[s].bcast_buffer(np.zeros(1), 0)
            clock.charge(stage.per_layer * owned[s])
            if s > 0:
                clock.charge(costs.transition_backward[s - 1])
            adjoints.insert(0, adjoint.calls)
        if any(costs.updates):
            clock.charge(sum(update * n for update, n in zip(costs.updates, owned)))
        if data_groups > 1:
            gradient_bytes = sum(n * stage.weight_bytes for n, stage in zip(owned, costs.stages)) + costs.replicated_bytes
            clock.time += math.ceil(math.log2(data_groups)) * (network[0] + network[1] * gradient_bytes)
        return clock.time, forwards, adjoints

    results = ThreadWorld(ranks).run(program)
    calls = {
        "forward": [_sum_calls(r[1][s] for r in results) for s in range(count)],
        "adjoint": [_sum_calls(r[2][s] for r in results) for s in range(count)],
    }
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
