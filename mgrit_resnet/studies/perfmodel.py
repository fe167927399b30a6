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
from .schedule import StepCosts as StepCosts
from .schedule import simulate_solve as simulate_solve
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
    ``train.strategy = 'one_shot'``, the step this model predicts.
    """
    from ..training.checks import check

    check(cfg if cfg.train.strategy == "one_shot" else cfg.with_overrides({"train.strategy": "one_shot"}), ranks)


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
                options = solver_options(cfg)
                elapsed, _ = simulate_training_step(depth, options, p // groups, calibration.costs, network, fwd, bwd, groups)
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


def format_table(rows: Sequence[ScalingRow]) -> str:
    """``P  time  speedup  efficiency`` as aligned text."""
    lines = [f"{'P':>6}  {'time [s]':>11}  {'speedup':>8}  {'efficiency':>10}"]
    for row in rows:
        if row.time is None:
            lines.append(f"{row.ranks:>6}  {'-':>11}  {'-':>8}  {'-':>10}  {row.note}")
        else:
            lines.append(f"{row.ranks:>6}  {row.time:11.4e}  {row.speedup:8.2f}  {row.efficiency:10.3f}")
    return "\n".join(lines)
