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
    coarse_rhs
        With ``keep_coarse_rhs``: the first coarse level's FAS right-hand side
        at the final states, one entry per owned point (``None`` but at that
        level's C-points); the warm start of a ``skip_first_down`` solver.
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
    coarse_rhs: list[Any] | None = field(repr=False, default=None)

    @property
    def convergence_factors(self) -> list[float]:
        """Ratio of each residual to the one before (the first to the initial residual).

        ``nan`` where the previous residual is unknown or exactly zero.
        """
        previous = [self.initial_residual] + self.residuals[:-1]
        return [_ratio(r, p) for r, p in zip(self.residuals, previous)]

    @property
    def mean_factor(self) -> float:
        """Geometric mean of the convergence factors over the iterations with a nonzero residual.

        With ``r_0`` the initial residual (or the first one, when the first
        down-cycle was skipped) and ``r_j`` the last residual of the unbroken
        run of nonzero residuals from ``r_0`` on, this is ``(r_j / r_0)^(1/j)``:
        the product of the factors of those ``j`` iterations, to the power ``1/j``.
        ``nan`` when no such iteration exists (``j = 0``, or ``r_0 = 0``).
        """
        history = ([] if self.initial_residual is None else [self.initial_residual]) + list(self.residuals)
        nonzero = next((i for i, r in enumerate(history) if not r > 0), len(history))
        if nonzero < 2:
            return math.nan
        return (history[nonzero - 1] / history[0]) ** (1.0 / (nonzero - 1))

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
