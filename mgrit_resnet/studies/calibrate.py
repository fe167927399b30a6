"""One-rank calibration of the performance model: the measured cost of every kind of step.

Each step kind is timed on its own (fine and coarse, forward and adjoint), as
are the per-layer gradient and optimiser work and the replicated opening and
classifier; the solver's bookkeeping per step is what remains of the measured
one-rank time. Times are thread CPU time, so a busy machine slows the
calibration less than it slows wall clocks.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..mgrit import MGRIT
from .schedule import StagedCosts, StepCosts, simulate_solve, simulate_staged_step, simulate_training_step, solver_options


@dataclass
class Calibration:
    """What a 1-rank calibration measured: costs, the serial reference and the 1-rank time."""

    costs: StepCosts | StagedCosts
    serial_time: float
    one_rank_time: float
    iterations: tuple[int, int]
    what: str

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "costs": asdict(self.costs)}


def cpu_seconds(work: Callable[[], Any], repeats: int = 5) -> float:
    """Median thread CPU time of ``work()`` over ``repeats`` runs (after one untimed run)."""
    work()
    times = []
    for _ in range(repeats):
        start = time.thread_time()
        work()
        times.append(time.thread_time() - start)
    return statistics.median(times)


def _charged(costs: StepCosts, calls: Sequence[tuple[dict[int, int], str]]) -> float:
    """Seconds the steps ``calls`` (per level, of a kind) cost at ``costs``, without bookkeeping."""

    def cost(kind: str, level: int) -> float:
        per_level = getattr(costs, kind) or costs.forward
        return per_level[min(level, len(per_level) - 1)]

    return sum(n * cost(kind, level) for counts, kind in calls for level, n in counts.items())


def _fit_to_whole(measured: float, costs: StepCosts, calls: Sequence[tuple[dict[int, int], str]]) -> None:
    """Make ``costs`` add up to the ``measured`` one-rank time.

    What the timed parts leave unexplained is the solver's bookkeeping, spread
    evenly over the steps.  When the parts explain more than the whole (each
    is timed alone, at another moment, on a machine whose speed drifts), every
    part is scaled down by the same factor instead: the whole is the better
    measure of one rank's speed, and the schedule depends on the parts' ratios.
    """
    steps = sum(n for counts, _ in calls for n in counts.values())
    charged = _charged(costs, calls)
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


def _fit_staged(measured: float, costs: StagedCosts, calls: dict[str, list[dict[int, int]]]) -> None:
    """:func:`_fit_to_whole` for a network of stages: ``calls`` are :func:`~.schedule.simulate_staged_step`'s on one rank.

    The bookkeeping per step is the same in every stage (the solver's, not the layers').
    """
    per_stage = [[(calls["forward"][s], "forward"), (calls["adjoint"][s], "adjoint")] for s in range(len(costs.stages))]
    steps = sum(n for stage in per_stage for counts, _ in stage for n in counts.values())
    charged = sum(_charged(stage, stage_calls) for stage, stage_calls in zip(costs.stages, per_stage))
    fixed = (
        costs.replicated
        + sum(costs.transition_forward)
        + sum(costs.transition_backward)
        + sum((stage.per_layer + update) * stage.layers for stage, update in zip(costs.stages, costs.updates))
    )
    excess = measured - fixed - charged
    if excess >= 0 or charged + fixed <= 0:
        for stage in costs.stages:
            stage.overhead = excess / steps if steps and excess > 0 else 0.0
        return
    scale = measured / (charged + fixed)
    for stage in costs.stages:
        stage.forward = [c * scale for c in stage.forward]
        stage.adjoint = [c * scale for c in stage.adjoint]
        stage.per_layer *= scale
        stage.overhead = 0.0
        stage.scale = scale
    costs.updates = [u * scale for u in costs.updates]
    costs.transition_forward = [c * scale for c in costs.transition_forward]
    costs.transition_backward = [c * scale for c in costs.transition_backward]
    costs.replicated *= scale
    costs.scale = scale


def calibrate_solve(cfg: Any, repeats: int = 3) -> Calibration:
    """Measure step costs of ``cfg.problem`` per level on one rank, the serial solve and the MGRIT solve."""
    from .. import problems

    problem = problems.from_config(cfg.problem)
    solver = MGRIT.from_config(problem, cfg.mgrit)
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
    mgrit_time = cpu_seconds(lambda: MGRIT.from_config(problem, cfg.mgrit).solve(), repeats)
    serial_time = cpu_seconds(lambda: MGRIT.from_config(problem, cfg.mgrit, levels=1).solve(), repeats)
    costs = StepCosts(forward=per_level, state_bytes=state_bytes)
    _, calls = simulate_solve(problem.n_steps, cfg.mgrit, 1, costs, (0.0, 0.0), result.iterations)
    _fit_to_whole(mgrit_time, costs, [(calls, "forward")])
    return Calibration(costs, serial_time, mgrit_time, (result.iterations, 0), f"MGRIT solve of {cfg.problem.kind}")


def training_batch(cfg: Any, seed: int = 0) -> tuple[Any, Any]:
    """A batch of ``train.batch_size`` inputs of the network's shape, with labels.

    Random for the built-in kinds; for a user network (``network.kind = "module"``),
    whose input shape only its data set knows, the data set's first training samples.
    """
    import torch

    from ..nn.spec import DTYPES, NetworkSpec

    if cfg.network.kind == "module":
        from ..training.data import load_dataset

        data = load_dataset(cfg.data, cfg.network)
        rows = min(cfg.train.batch_size, data.n_train)
        return data.train_x[:rows].to(getattr(torch, cfg.network.dtype)), data.train_y[:rows]
    generator = torch.Generator().manual_seed(seed)
    if cfg.network.depths:  # a network of stages: the input of its opening
        from ..training.checks import input_shape

        shape, dtype = input_shape(cfg.network.as_dict()), DTYPES[cfg.network.dtype]
        x = torch.randn(cfg.train.batch_size, *shape, generator=generator, dtype=dtype)
        return x, torch.randint(cfg.network.n_classes, (cfg.train.batch_size,), generator=generator)
    spec = NetworkSpec.from_config(cfg.network)
    x = torch.randn(cfg.train.batch_size, *spec.input_shape(), generator=generator, dtype=spec.torch_dtype)
    y = torch.randint(spec.n_classes, (cfg.train.batch_size,), generator=generator)
    return x, y


def training_step(model: Any, optimizer: Any, x: Any, y: Any, key: Any = 0) -> float:
    """One step: zero the gradients, the training loop's gradient (:func:`~mgrit_resnet.training.models.loss_backward`), optimiser step.

    Returns the loss.
    """
    from ..training.models import loss_backward

    optimizer.zero_grad(set_to_none=True)
    loss, _ = loss_backward(model, x, y, key=key)
    optimizer.step()
    return loss


def calibrate_training(cfg: Any, repeats: int = 5, seed: int = 0) -> Calibration:
    """Measure, on one rank, the costs of a one-shot training step of ``cfg`` (``train.fwd_iters`` / ``bwd_iters``).

    The serial reference takes the whole batch; with ``train.data_parallel = D``
    the layer-parallel parts take one group's share (the largest, ``ceil(batch / D)``).
    A network of stages (``network.depths``, or a builder that returns stages)
    is calibrated stage by stage: :class:`~.schedule.StagedCosts` (see :func:`calibrate_staged`).
    """
    import torch

    from ..nn import LayerParallel, StagedResNet, serial_from_config
    from ..training.adaptive import require_fixed_counts
    from ..training.optim import make_optimizer

    t = cfg.train
    require_fixed_counts(t, "predicting a one-shot step")
    x, y = training_batch(cfg, seed)
    serial = serial_from_config(cfg.network, seed=seed)  # an ODEResNet, or a StagedResNet for a network of stages
    serial_optimizer = make_optimizer(t, list(serial.parameters()))
    serial_time = cpu_seconds(lambda: training_step(serial, serial_optimizer, x, y), repeats)
    share = -(-len(y) // t.data_parallel)
    x, y = x[:share], y[:share]
    if isinstance(serial, StagedResNet):
        return calibrate_staged(cfg, x, y, serial_time, repeats, seed)

    par = LayerParallel.from_config(cfg.network, cfg.mgrit, seed=seed, fwd_iters=t.fwd_iters, bwd_iters=t.bwd_iters, warm_start=True)
    optimizer = make_optimizer(t, list(par.parameters()))
    for _ in range(2):  # the warm start in place
        training_step(par, optimizer, x, y)
    one_rank_time = cpu_seconds(lambda: training_step(par, optimizer, x, y), repeats)  # a group of one rank

    depth = par.depth
    with torch.no_grad():
        x0 = par.open(x)
    layers = _layer_costs(par, x0, repeats)

    def replicated_work() -> None:
        loss = torch.nn.functional.cross_entropy(par.close(par.open(x)), y)
        loss.backward()

    replicated = cpu_seconds(replicated_work, repeats)
    update = cpu_seconds(optimizer.step, repeats) / depth
    costs = StepCosts(
        forward=layers.forward,
        adjoint=layers.adjoint,
        per_layer=layers.per_layer + update,
        replicated=replicated,
        state_bytes=layers.state_bytes,
        weight_bytes=layers.weight_bytes,
        layers=depth,
        replicated_bytes=sum(p.numel() * p.element_size() for name, p in par.named_parameters() if not name.startswith("layers.")),
    )
    options = solver_options(cfg)
    _, calls = simulate_training_step(depth, options, 1, costs, (0.0, 0.0), t.fwd_iters, t.bwd_iters)
    _fit_to_whole(one_rank_time, costs, [(calls["forward"], "forward"), (calls["adjoint"], "adjoint")])
    return Calibration(costs, serial_time, one_rank_time, (t.fwd_iters, t.bwd_iters), "one-shot training step")


def _layer_costs(net: Any, x0: Any, repeats: int) -> StepCosts:
    """The step costs of the layers of ``net`` (a :class:`~mgrit_resnet.nn.LayerParallel` on one rank, or a stage) from the state ``x0``.

    ``forward`` and ``adjoint`` by level (the fine level and the first coarse
    one), ``per_layer`` the parameter gradient of one layer, the state's and
    one layer's sizes; no update, no replicated work.
    """
    import torch

    depth, steps = net.depth, net.steps
    hierarchy = net.hierarchy
    stride = hierarchy.stride(1) if hierarchy.n_levels > 1 else 1
    weights = {n: steps.own(net.layers[str(n)]) for n in range(depth)}  # one rank holds every layer
    with torch.no_grad():
        problem = steps.forward_problem(x0, weights)
        lam = torch.randn_like(x0)
        adjoint = steps.adjoint_problem(lam, problem, one_level=hierarchy.n_levels == 1)

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
    layer = net.layers["0"]
    return StepCosts(
        forward=forward,
        adjoint=adjoint_costs,
        per_layer=grads,
        state_bytes=x0.numel() * x0.element_size(),
        weight_bytes=sum(t.numel() * t.element_size() for t in [*layer.parameters(), *layer.buffers()]),
        layers=depth,
    )


def calibrate_staged(cfg: Any, x: Any, y: Any, serial_time: float, repeats: int = 5, seed: int = 0) -> Calibration:
    """Measure, on one rank, the costs of a one-shot training step of the network of stages of ``cfg`` on the batch ``x``, ``y``.

    Every stage's steps at its own width and resolution (from its real input
    state), its layers' gradients and updates; every transition forward and
    backward; the opening, closing and loss with their gradients and the
    replicated parameters' update. The parts are fitted to the measured
    one-rank step as for one stage (:func:`_fit_to_whole`): what they leave
    unexplained is bookkeeping, spread evenly over every stage's steps.
    """
    import torch

    from ..nn import parallel_from_config
    from ..training.optim import make_optimizer

    t = cfg.train
    par = parallel_from_config(cfg.network, cfg.mgrit, seed=seed, fwd_iters=t.fwd_iters, bwd_iters=t.bwd_iters, warm_start=True)
    optimizer = make_optimizer(t, list(par.parameters()))
    for _ in range(2):  # the warm start in place (and gradients for the updates below)
        training_step(par, optimizer, x, y)
    one_rank_time = cpu_seconds(lambda: training_step(par, optimizer, x, y), repeats)  # a group of one rank

    x = x.to(device=par.device, dtype=par.dtype)
    inputs, outputs = [], []  # every stage's input and final state
    with torch.no_grad():
        state = par.opening(x)
        for s, stage in enumerate(par.stages):
            inputs.append(state)
            state = stage.propagate_exact(state)
            outputs.append(state)
            if s < len(par.transitions):
                state = par.transitions[s](state)
    stages = [_layer_costs(stage, x0, repeats) for stage, x0 in zip(par.stages, inputs)]
    updates = []
    for stage in par.stages:
        stage_optimizer = make_optimizer(t, list(stage.parameters()))
        updates.append(cpu_seconds(stage_optimizer.step, repeats) / stage.depth)

    forward, backward = [], []
    for s, transition in enumerate(par.transitions):
        z = outputs[s].detach().requires_grad_()
        with torch.no_grad():
            g = torch.randn_like(transition(z))
        once = cpu_seconds(lambda transition=transition, z=z: transition(z), repeats)
        both = cpu_seconds(lambda transition=transition, z=z, g=g: transition(z).backward(g), repeats)
        forward.append(once)
        backward.append(max(both - once, 0.0))

    final = outputs[-1].detach().requires_grad_()
    with torch.no_grad():
        lam0 = torch.randn_like(inputs[0])

    def ends_work() -> None:
        torch.nn.functional.cross_entropy(par.closing(final), y).backward()
        opened = par.opening(x)
        if opened.requires_grad:  # not an identity (or parameter-free) opening
            opened.backward(lam0)

    replicated_parameters = [p for name, p in par.named_parameters() if not name.startswith("stages.")]
    replicated = cpu_seconds(ends_work, repeats)
    if replicated_parameters:
        replicated += cpu_seconds(make_optimizer(t, replicated_parameters).step, repeats)
    costs = StagedCosts(
        depths=list(par.depths),
        stages=stages,
        updates=updates,
        transition_forward=forward,
        transition_backward=backward,
        replicated=replicated,
        replicated_bytes=sum(p.numel() * p.element_size() for p in replicated_parameters),
    )
    _, calls = simulate_staged_step(solver_options(cfg), 1, costs, (0.0, 0.0), t.fwd_iters, t.bwd_iters)
    _fit_staged(one_rank_time, costs, calls)
    shape = "/".join(map(str, costs.depths))
    what = f"one-shot training step of {len(costs.depths)} stages ({shape} layers)"
    return Calibration(costs, serial_time, one_rank_time, (t.fwd_iters, t.bwd_iters), what)
