"""Predicted wall time of MGRIT solves and one-shot training steps at any rank count.

The model runs the solver's own code for P simulated ranks (threads of one
process, :mod:`mgrit_resnet.comm.threads`) on a stand-in problem that has the real
grid but scalar states. Every step charges its measured cost to the rank's
:class:`~mgrit_resnet.comm.clocked.VirtualClock`, and every message and collective
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

A network of stages (:class:`~mgrit_resnet.nn.StagedParallel`) runs one MGRIT
solve per stage over all ranks. Its model calibrates every stage at its own
width and resolution, and every transition (:class:`StagedCosts`), and
simulates the network's schedule (:func:`simulate_staged_step`): the stages'
forward solves in order, each followed by the broadcast of its final state and
the replicated transition; the closing and loss; the adjoint solves in reverse
order, each followed by the broadcast of its input gradient, its layers'
gradients and the transition's gradient; the updates. The stages'
solves do not overlap, so the step is close to the sum of every stage's
solves plus the replicated work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .calibrate import Calibration as Calibration
from .calibrate import calibrate_solve as calibrate_solve
from .calibrate import calibrate_training as calibrate_training
from .calibrate import cpu_seconds as cpu_seconds
from .calibrate import training_batch as training_batch
from .calibrate import training_step as training_step
from .schedule import StagedCosts as StagedCosts
from .schedule import StepCosts as StepCosts
from .schedule import simulate_solve as simulate_solve
from .schedule import simulate_staged_step as simulate_staged_step
from .schedule import simulate_training_step as simulate_training_step
from .schedule import solver_options as solver_options

#: A network assumed when none is given: 2 microseconds per message, 10 GB/s.
CLUSTER_NETWORK = (2e-6, 1e-10)


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


def check_training_ranks(cfg: Any, ranks: int) -> None:
    """Raise ``ValueError`` saying why ``ranks`` ranks cannot run a one-shot training step of ``cfg``, if they cannot.

    The checks of :func:`mgrit_resnet.training.check` for ``cfg`` under
    ``train.strategy = 'one_shot'``, the step this model predicts (for a
    network of stages, ``network.depths``, every stage's).
    """
    from ..training.checks import check

    check(cfg if cfg.train.strategy == "one_shot" else cfg.with_overrides({"train.strategy": "one_shot"}), ranks)


def check_stage_depths(depths: Sequence[int], ranks: int) -> None:
    """Raise ``ValueError`` unless every stage has a layer on every one of ``ranks`` layer-ranks (``depth >= 2 ranks - 1``).

    :func:`check_training_ranks` checks ``network.depths``; this checks the
    stages a builder returned (``network.kind = "module"``), which the config does not know.
    """
    for s, depth in enumerate(depths):
        if depth < 2 * ranks - 1:
            raise ValueError(
                f"stages[{s}] has {depth} layers < 2 * ranks - 1 = {2 * ranks - 1}: some rank would hold no layer of it "
                f"(allowed: at most {(depth + 1) // 2} layer-ranks)"
            )


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
        (with ``train.data_parallel = D``, ``P`` ranks are ``D`` groups of ``P / D``;
        a network of stages is every stage's solves over all ranks in turn,
        :func:`simulate_staged_step`);
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
                groups, costs = cfg.train.data_parallel, calibration.costs
                fwd, bwd = calibration.iterations
                options = solver_options(cfg)
                if isinstance(costs, StagedCosts):
                    check_stage_depths(costs.depths, p // groups)
                    elapsed, _ = simulate_staged_step(options, p // groups, costs, network, fwd, bwd, groups)
                else:
                    elapsed, _ = simulate_training_step(cfg.network.depth, options, p // groups, costs, network, fwd, bwd, groups)
            else:
                elapsed, _ = simulate_solve(
                    cfg.problem.n_steps, solver_options(cfg), p, calibration.costs, network, calibration.iterations[0]
                )
            rows.append(ScalingRow(p, elapsed, calibration.serial_time))
        except ValueError as error:
            rows.append(ScalingRow(p, None, calibration.serial_time, note=str(error)))
        if progress is not None:
            progress(p)
    return calibration, rows


def format_stages(costs: StagedCosts) -> str:
    """One line per stage of a staged calibration: its layers, fine step costs and state size; then the transitions."""
    lines = []
    for s, (depth, stage) in enumerate(zip(costs.depths, costs.stages)):
        adjoint = stage.adjoint or stage.forward
        lines.append(
            f"stage {s}: {depth} layers, fine step {stage.forward[0] * 1e6:.1f} us forward / {adjoint[0] * 1e6:.1f} us adjoint, "
            f"state {stage.state_bytes / 1024:.1f} KiB"
        )
    if costs.transition_forward:
        each = ", ".join(f"{f * 1e3:.3f} / {b * 1e3:.3f}" for f, b in zip(costs.transition_forward, costs.transition_backward))
        lines.append(f"transitions (forward / backward, ms): {each}; opening, closing and loss {costs.replicated * 1e3:.3f} ms")
    return "\n".join(lines)


def format_table(rows: Sequence[ScalingRow]) -> str:
    """``P  time  speedup  efficiency`` as aligned text."""
    lines = [f"{'P':>6}  {'time [s]':>11}  {'speedup':>8}  {'efficiency':>10}"]
    for row in rows:
        if row.time is None:
            lines.append(f"{row.ranks:>6}  {'-':>11}  {'-':>8}  {'-':>10}  {row.note}")
        else:
            lines.append(f"{row.ranks:>6}  {row.time:11.4e}  {row.speedup:8.2f}  {row.efficiency:10.3f}")
    return "\n".join(lines)
