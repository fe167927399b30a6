"""Predicted wall time of MGRIT solves and one-shot training steps at any rank count.

The model runs the solver's own code for P simulated ranks (threads of one
process, :mod:`mgrit_resnet.simulate`) on a stand-in problem that has the real
grid but scalar states. Every step charges its measured cost to the rank's
:class:`~mgrit_resnet.vclock.VirtualClock`, and every message and collective
advances the clocks as the virtual clock does in a real run
(``alpha + beta * bytes`` with the real state size). So the prediction follows
the solver's actual per-rank schedule of steps and messages on every level,
including the sequential coarsest solve and the chains of F-intervals that
cross ranks, without running P processes. The largest final clock is the
predicted wall time with one core per rank.

The costs come from a 1-rank calibration (:func:`calibrate_solve`,
:func:`calibrate_training`): each step kind is timed on its own (fine and
coarse, forward and adjoint), as are the per-layer gradient and optimiser work
and the replicated opening and classifier; the solver's bookkeeping per step
is what remains of the measured 1-rank time. Times are thread CPU time, so a
busy machine slows the calibration less than it slows wall clocks.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..comm import ReversedBackend
from ..comm.clocked import ClockedBackend, VirtualClock
from ..comm.threads import ThreadWorld
from ..mgrit import MGRIT

#: A network assumed when none is given: 2 microseconds per message, 10 GB/s.
CLUSTER_NETWORK = (2e-6, 1e-10)


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
class Calibration:
    """What a 1-rank calibration measured: costs, the serial reference and the 1-rank time."""

    costs: StepCosts
    serial_time: float
    one_rank_time: float
    iterations: tuple[int, int]
    what: str

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "costs": asdict(self.costs)}


@dataclass
class ScalingRow:
    """One rank count of a prediction (``time`` is ``None`` where the run is not possible)."""

    ranks: int
    time: float | None
    serial_time: float
    note: str = ""

    @property
    def speedup(self) -> float | None:
        return None if self.time is None else self.serial_time / self.time

    @property
    def efficiency(self) -> float | None:
        return None if self.time is None else self.serial_time / self.time / self.ranks

    def as_dict(self) -> dict[str, Any]:
        return {"ranks": self.ranks, "time": self.time, "speedup": self.speedup, "efficiency": self.efficiency, "note": self.note}


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


def _fixed(options: dict[str, Any], iterations: int) -> dict[str, Any]:
    return {**options, "tol": 0.0, "tol_kind": "absolute", "max_iter": iterations}


def _warm_states(solver: MGRIT, rank: int) -> list[np.ndarray]:
    return [np.ones(1)] * len(solver.hierarchy.owned(0, rank))


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
        MGRIT options (levels, coarsening, relax, cycle, ...); ``tol`` and
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
        solver = MGRIT(problem, comm=clocked, **_fixed(options, iterations))
        solver.solve(initial_guess=_warm_states(solver, backend.rank) if warm else None)
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
    ``ceil(log2 D) (alpha + beta bytes)``, as :class:`~mgrit_resnet.vclock.ClockedBackend` charges one.

    Returns
    -------
    The largest final clock, and the steps per level of both solves summed over ranks.
    """
    from ..nn.parallel import WEIGHT_TAG, foreign_layers, layer_partition

    fwd_bounds, adj_bounds, layer_bounds = layer_partition(depth, ranks)

    def sizes(buffer: Any, tag: int) -> int:
        return costs.weight_bytes if tag == WEIGHT_TAG else costs.state_bytes

    def program(backend: Any) -> tuple[float, dict[int, int], dict[int, int]]:
        rank = backend.rank
        clock = VirtualClock(*network, measure_cpu=False)
        clocked = ClockedBackend(backend, clock, sizes)
        forward = _StandIn(depth, clock, costs.forward, costs.overhead, rank)
        solver = MGRIT(forward, comm=clocked, partition=fwd_bounds, **_fixed(options, fwd_iters))
        _fetch_weights(clocked, foreign_layers(solver.hierarchy, layer_bounds), layer_bounds)
        solver.solve(initial_guess=_warm_states(solver, rank))
        clocked.bcast_buffer(np.zeros(1), ranks - 1)
        clock.charge(costs.replicated)
        adjoint = _StandIn(depth, clock, costs.adjoint or costs.forward, costs.overhead, ranks + rank)
        reversed_backend = ReversedBackend(clocked)
        solver = MGRIT(adjoint, comm=reversed_backend, partition=adj_bounds, **_fixed(options, bwd_iters))
        solver.solve(initial_guess=_warm_states(solver, reversed_backend.rank))
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
    from ..nn.parallel import WEIGHT_TAG, owner_of_layer

    if backend.size == 1 or not any(plan):
        return
    me, mine = backend.rank, range(layer_bounds[backend.rank], layer_bounds[backend.rank + 1])
    sends = [backend.isend(np.zeros(1), rank, WEIGHT_TAG) for rank, layers in enumerate(plan) for n in layers if n in mine and rank != me]
    for n in plan[me]:
        backend.irecv(np.zeros(1), owner_of_layer(n, layer_bounds), WEIGHT_TAG).Wait()
    for request in sends:
        request.Wait()


# ---------------------------------------------------------------------- calibration
def cpu_seconds(work: Callable[[], Any], repeats: int = 5) -> float:
    """Median thread CPU time of ``work()`` over ``repeats`` runs (after one untimed run)."""
    work()
    times = []
    for _ in range(repeats):
        start = time.thread_time()
        work()
        times.append(time.thread_time() - start)
    return statistics.median(times)


def _fit_to_whole(measured: float, costs: StepCosts, calls: Sequence[tuple[dict[int, int], str]]) -> None:
    """Make ``costs`` add up to the ``measured`` one-rank time.

    What the timed parts leave unexplained is the solver's bookkeeping, spread
    evenly over the steps.  When the parts explain more than the whole (each
    is timed alone, at another moment, on a machine whose speed drifts), every
    part is scaled down by the same factor instead: the whole is the better
    measure of one rank's speed, and the schedule depends on the parts' ratios.
    """
    steps = sum(n for counts, _ in calls for n in counts.values())

    def cost(kind: str, level: int) -> float:
        per_level = getattr(costs, kind) or costs.forward
        return per_level[min(level, len(per_level) - 1)]

    charged = sum(n * cost(kind, level) for counts, kind in calls for level, n in counts.items())
    fixed = costs.replicated + costs.per_layer * costs.layers
    excess = measured - fixed - charged
    if excess >= 0 or charged + fixed <= 0:
        costs.overhead = excess / steps if steps and excess > 0 else 0.0
        return
    scale = measured / (charged + fixed)
    costs.forward = [c * scale for c in costs.forward]
    costs.adjoint = [c * scale for c in costs.adjoint]
    costs.per_layer *= scale
    costs.replicated *= scale
    costs.overhead = 0.0
    costs.scale = scale


def calibrate_solve(cfg: Any, repeats: int = 3) -> Calibration:
    """Measure step costs of ``cfg.problem`` per level on one rank, the serial solve and the MGRIT solve."""
    from .. import problems

    options = cfg.mgrit.as_dict()
    problem = problems.from_config(cfg.problem)
    solver = MGRIT(problem, **options)
    result = solver.solve()
    hierarchy = solver.hierarchy
    u0 = problem.initial_value()
    per_level = []
    for level in range(hierarchy.n_levels):
        stride = hierarchy.stride(level)
        count = max(problem.n_steps // stride, 1)

        def sweep(level: int = level, stride: int = stride, count: int = count) -> None:
            u = u0
            for j in range(count):
                u = problem.step(u, j * stride, (j + 1) * stride, level)

        per_level.append(cpu_seconds(sweep, repeats) / count)
    state_bytes = int(np.asarray(u0).nbytes)
    mgrit_time = cpu_seconds(lambda: MGRIT(problem, **options).solve(), repeats)
    serial_time = cpu_seconds(lambda: MGRIT(problem, **{**options, "levels": 1}).solve(), repeats)
    costs = StepCosts(forward=per_level, state_bytes=state_bytes)
    _, calls = simulate_solve(problem.n_steps, options, 1, costs, (0.0, 0.0), result.iterations)
    _fit_to_whole(mgrit_time, costs, [(calls, "forward")])
    return Calibration(costs, serial_time, mgrit_time, (result.iterations, 0), f"MGRIT solve of {cfg.problem.kind}")


def training_batch(cfg: Any, seed: int = 0) -> tuple[Any, Any]:
    """A random batch of ``train.batch_size`` inputs of the network's shape, with labels."""
    import torch

    from ..nn.layers import NetworkSpec

    spec = NetworkSpec.from_config(cfg.network)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(cfg.train.batch_size, *spec.input_shape(), generator=generator, dtype=spec.torch_dtype)
    y = torch.randint(spec.n_classes, (cfg.train.batch_size,), generator=generator)
    return x, y


def training_step(model: Any, optimizer: Any, x: Any, y: Any, key: Any = 0) -> float:
    """One step: zero the gradients, forward, cross-entropy, backward, optimiser step; returns the loss."""
    import torch

    from ..nn import LayerParallel

    optimizer.zero_grad(set_to_none=True)
    logits = model(x, key=key) if isinstance(model, LayerParallel) else model(x)
    loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def calibrate_training(cfg: Any, repeats: int = 5, seed: int = 0) -> Calibration:
    """Measure, on one rank, the costs of a one-shot training step of ``cfg`` (``train.fwd_iters`` / ``bwd_iters``).

    The serial reference takes the whole batch; with ``train.data_parallel = D``
    the layer-parallel parts take one group's share (the largest, ``ceil(batch / D)``).
    """
    import torch

    from ..nn import LayerParallel, ODEResNet
    from ..nn.layers import classify, open_state
    from ..nn.propagators import AdjointProblem, ForwardProblem
    from ..training.optim import make_optimizer

    t = cfg.train
    x, y = training_batch(cfg, seed)
    serial = ODEResNet.from_config(cfg.network, seed=seed)
    serial_optimizer = make_optimizer(t, list(serial.parameters()))
    serial_time = cpu_seconds(lambda: training_step(serial, serial_optimizer, x, y), repeats)
    share = -(-len(y) // t.data_parallel)
    x, y = x[:share], y[:share]

    par = LayerParallel.from_config(cfg.network, cfg.mgrit, seed=seed, fwd_iters=t.fwd_iters, bwd_iters=t.bwd_iters, warm_start=True)
    optimizer = make_optimizer(t, list(par.parameters()))
    for _ in range(2):  # the warm start in place
        training_step(par, optimizer, x, y)
    one_rank_time = cpu_seconds(lambda: training_step(par, optimizer, x, y), repeats)  # a group of one rank

    spec, depth = par.spec, par.spec.depth
    hierarchy = par._forward_solver.hierarchy
    stride = hierarchy.stride(1) if hierarchy.n_levels > 1 else 1
    weights = {n: (par.layers[str(n)].weight.detach(), par.layers[str(n)].bias.detach()) for n in range(depth)}
    with torch.no_grad():
        x0 = open_state(spec, par.opening, x)
        problem = ForwardProblem(x0, weights, spec.h, depth, par._ops, spec.act)
        lam = torch.randn_like(x0)
        adjoint = AdjointProblem(lam, problem)

        def sweep(step: Callable, state: Any, level: int, width: int) -> Callable[[], None]:
            def run() -> None:
                u = state
                for j in range(depth // width):
                    u = step(u, j * width, (j + 1) * width, level)

            return run

        count = {0: depth, 1: depth // stride}
        forward = [cpu_seconds(sweep(problem.step, x0, 0, 1), repeats) / count[0]]
        adjoint_costs = [cpu_seconds(sweep(adjoint.step, lam, 0, 1), repeats) / count[0]]
        if hierarchy.n_levels > 1:
            forward.append(cpu_seconds(sweep(problem.step, x0, 1, stride), repeats) / count[1])
            adjoint_costs.append(cpu_seconds(sweep(adjoint.step, lam, 1, stride), repeats) / count[1])
        grads = cpu_seconds(lambda: [adjoint.parameter_grads(n) for n in range(depth)], repeats) / depth

    def replicated_work() -> None:
        state = open_state(spec, par.opening, x)
        loss = torch.nn.functional.cross_entropy(classify(spec, par.classifier, state), y)
        loss.backward()

    replicated = cpu_seconds(replicated_work, repeats)
    update = cpu_seconds(optimizer.step, repeats) / depth
    weight_bytes = sum(p.numel() * p.element_size() for p in par.layers["0"].parameters())
    costs = StepCosts(
        forward=forward,
        adjoint=adjoint_costs,
        per_layer=grads + update,
        replicated=replicated,
        state_bytes=x0.numel() * x0.element_size(),
        weight_bytes=weight_bytes,
        layers=depth,
        replicated_bytes=sum(p.numel() * p.element_size() for m in (par.opening, par.classifier) for p in m.parameters()),
    )
    options = _solver_options(cfg)
    _, calls = simulate_training_step(depth, options, 1, costs, (0.0, 0.0), t.fwd_iters, t.bwd_iters)
    _fit_to_whole(one_rank_time, costs, [(calls["forward"], "forward"), (calls["adjoint"], "adjoint")])
    return Calibration(costs, serial_time, one_rank_time, (t.fwd_iters, t.bwd_iters), "one-shot training step")


def _solver_options(cfg: Any) -> dict[str, Any]:
    options = cfg.mgrit.as_dict()
    for key in ("tol", "max_iter"):
        options.pop(key, None)
    return options


# ---------------------------------------------------------------------- prediction
def check_training_ranks(cfg: Any, ranks: int) -> None:
    """Raise ``ValueError`` saying why ``ranks`` ranks cannot run a training step of ``cfg``, if they cannot."""
    depth, groups = cfg.network.depth, cfg.train.data_parallel
    if ranks % groups:
        raise ValueError(f"train.data_parallel = {groups} does not divide the ranks")
    if depth < 2 * (ranks // groups) - 1:
        per_group = "" if groups == 1 else " per data group"
        raise ValueError(f"network.depth = {depth} < 2 * ranks{per_group} - 1: some rank would hold no layer")


def predict(
    cfg: Any,
    ranks: Sequence[int],
    of: str = "train",
    network: tuple[float, float] = CLUSTER_NETWORK,
    calibration: Calibration | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[Calibration, list[ScalingRow]]:
    """Predicted wall time at every rank count in ``ranks``.

    Parameters
    ----------
    cfg
        A loaded config.
    ranks
        Rank counts to predict.
    of
        ``"train"``: one one-shot training step of ``[network]`` with
        ``train.fwd_iters`` / ``bwd_iters`` and the ``[mgrit]`` hierarchy
        (with ``train.data_parallel = D``, ``P`` ranks are ``D`` groups of ``P / D``);
        ``"solve"``: the MGRIT solve of ``[problem]`` (its iteration count
        measured on one rank: it is the same at every rank count).
    network
        ``(alpha, beta)``, seconds per message and per byte.
    calibration
        Reuse an earlier calibration of the same config.
    progress
        Called with each rank count once it is done.
    """
    if of not in ("train", "solve"):
        raise ValueError(f"of must be 'train' or 'solve'; got {of!r}")
    if calibration is None:
        calibration = calibrate_training(cfg) if of == "train" else calibrate_solve(cfg)
    rows = []
    for p in ranks:
        try:
            if of == "train":
                check_training_ranks(cfg, p)
                depth, groups = cfg.network.depth, cfg.train.data_parallel
                fwd, bwd = calibration.iterations
                options = _solver_options(cfg)
                elapsed, _ = simulate_training_step(depth, options, p // groups, calibration.costs, network, fwd, bwd, groups)
            else:
                elapsed, _ = simulate_solve(
                    cfg.problem.n_steps, _solver_options(cfg), p, calibration.costs, network, calibration.iterations[0]
                )
            rows.append(ScalingRow(p, elapsed, calibration.serial_time))
        except ValueError as error:
            rows.append(ScalingRow(p, None, calibration.serial_time, note=str(error)))
        if progress is not None:
            progress(p)
    return calibration, rows


def format_table(rows: Sequence[ScalingRow]) -> str:
    """``P  time  speedup  efficiency`` as aligned text."""
    lines = [f"{'P':>6}  {'time [s]':>11}  {'speedup':>8}  {'efficiency':>10}"]
    for row in rows:
        if row.time is None:
            lines.append(f"{row.ranks:>6}  {'-':>11}  {'-':>8}  {'-':>10}  {row.note}")
        else:
            lines.append(f"{row.ranks:>6}  {row.time:11.4e}  {row.speedup:8.2f}  {row.efficiency:10.3f}")
    return "\n".join(lines)
