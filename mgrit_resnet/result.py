"""What a solve returns: data, not log lines."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SolveResult:
    """The outcome of :meth:`mgrit_resnet.MGRIT.solve` on one rank.

    Attributes
    ----------
    residuals
        ``residuals[k-1]`` is the fine-level C-point residual 2-norm after
        iteration ``k``; exact zeros are kept.
    initial_residual
        Residual of the initial guess, or ``None`` when the first down-cycle
        was skipped (the guess is then never relaxed on the fine level).
    iterations
        Number of MGRIT iterations done.
    converged
        Whether the last residual met the tolerance.
    points_per_level
        Number of time points on each level, finest first.
    ranks
        Number of ranks that took part.
    steps_per_rank
        Propagator calls made by each rank.
    bytes_per_rank
        Bytes each rank sent.
    wall_time
        Seconds from start to end of the solve (slowest rank).
    states
        This rank's fine-level states, in the order of ``owned``.
    owned
        Fine time-point indices held by this rank.
    """

    residuals: list[float]
    initial_residual: float | None
    iterations: int
    converged: bool
    points_per_level: list[int]
    ranks: int
    steps_per_rank: list[int]
    bytes_per_rank: list[int]
    wall_time: float
    states: list[Any] = field(repr=False, default_factory=list)
    owned: range = range(0)

    @property
    def convergence_factors(self) -> list[float]:
        """Ratio of each residual to the one before (the first to the initial residual).

        ``nan`` where the previous residual is unknown or exactly zero.
        """
        previous = [self.initial_residual] + self.residuals[:-1]
        return [_ratio(r, p) for r, p in zip(self.residuals, previous)]

    def to_json(self) -> dict:
        """The ``solve --json`` document (``nan`` written as ``null``)."""
        return {
            "residuals": list(self.residuals),
            "initial_residual": self.initial_residual,
            "iterations": self.iterations,
            "converged": self.converged,
            "convergence_factors": [None if math.isnan(f) else f for f in self.convergence_factors],
            "ranks": self.ranks,
            "points_per_level": list(self.points_per_level),
            "steps_per_rank": list(self.steps_per_rank),
            "bytes_per_rank": list(self.bytes_per_rank),
            "wall_time": self.wall_time,
        }


def _ratio(value: float, previous: float | None) -> float:
    if previous is None or previous == 0.0:
        return math.nan
    return value / previous
