"""The multigrid hierarchy of time points and who owns which of them.

Everything here is a pure function of integers: the number of fine points,
the coarsening factors, the number of levels, the number of ranks and a rank.
Point ``j`` of level ``l`` is fine point ``j * stride(l)``. A rank owns a
contiguous block of fine points and, on every level, exactly the points whose
fine index lies in that block, so a C-point on level ``l`` and its copy on
level ``l + 1`` always live on the same rank and the correction needs no
message. Ranks may own no point of a coarse level.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from ._checks import check_int, per_level


@dataclass(frozen=True)
class Hierarchy:
    """Time points per level, C/F splitting and block ownership.

    Parameters
    ----------
    n_points
        Number of fine time points (time steps + 1).
    factors
        Coarsening factor between level ``l`` and ``l + 1``; its length is
        the number of levels minus one.
    n_ranks
        Number of ranks the fine points are split over.
    bounds
        Optional block boundaries ``0 = b_0 < b_1 < ... < b_P = n_points``:
        rank ``p`` owns fine points ``[b_p, b_{p+1})``. The default is the
        balanced split ``b_p = p * n_points // P``.
    """

    n_points: int
    factors: tuple[int, ...]
    n_ranks: int = 1
    bounds: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        check_int("n_points", self.n_points, minimum=2)
        for factor in self.factors:
            check_int("coarsening", factor, minimum=2)
        _check_ranks(self.n_ranks, self.n_points)
        if self.bounds is not None:
            b = self.bounds
            if len(b) != self.n_ranks + 1 or b[0] != 0 or b[-1] != self.n_points or any(x >= y for x, y in zip(b, b[1:])):
                raise ValueError(
                    f"bounds must be {self.n_ranks + 1} increasing fine indices from 0 to {self.n_points} "
                    f"(every rank at least one point); got {list(b)}"
                )

    @classmethod
    def build(
        cls,
        n_points: int,
        levels: int,
        coarsening: int | Sequence[int],
        min_coarse: int = 2,
        n_ranks: int = 1,
        bounds: Sequence[int] | None = None,
    ) -> Hierarchy:
        """Coarsen until ``levels`` levels exist or the next one would be too small.

        Parameters
        ----------
        n_points
            Number of fine time points.
        levels
            Maximum number of levels (1 means a sequential solve).
        coarsening
            One factor for all levels, or a list with one factor per level
            (at least ``levels - 1`` entries).
        min_coarse
            No level with fewer points than this is created.
        n_ranks
            Number of ranks; must not exceed ``n_points``.
        bounds
            Optional block boundaries (see :class:`Hierarchy`).
        """
        n_points = check_int("n_points", n_points, minimum=2)
        levels = check_int("levels", levels, minimum=1)
        min_coarse = check_int("min_coarse", min_coarse, minimum=2)
        factors = [check_int("coarsening", f, minimum=2) for f in per_level("coarsening", coarsening, levels - 1)]
        _check_ranks(n_ranks, n_points)
        kept: list[int] = []
        points = n_points
        for factor in factors:
            coarse_points = (points - 1) // factor + 1
            if coarse_points < min_coarse:
                break
            kept.append(factor)
            points = coarse_points
        return cls(n_points, tuple(kept), n_ranks, None if bounds is None else tuple(int(b) for b in bounds))

    @property
    def n_levels(self) -> int:
        """Number of levels, the fine one included."""
        return len(self.factors) + 1

    def stride(self, level: int) -> int:
        """Distance, in fine points, between neighbouring points of ``level``."""
        stride = 1
        for factor in self.factors[:level]:
            stride *= factor
        return stride

    def points(self, level: int) -> int:
        """Number of points on ``level``."""
        return (self.n_points - 1) // self.stride(level) + 1

    def points_per_level(self) -> list[int]:
        """Number of time points on each level, finest first."""
        return [self.points(level) for level in range(self.n_levels)]

    def factor(self, level: int) -> int:
        """Coarsening factor of ``level``; 1 on the coarsest level (every point is a C-point)."""
        return self.factors[level] if level < len(self.factors) else 1

    def is_c_point(self, level: int, index: int) -> bool:
        """Whether point ``index`` of ``level`` (not the coarsest) is a C-point, i.e. also a point of ``level + 1``."""
        return index % self.factor(level) == 0

    def fine_block(self, rank: int) -> range:
        """The fine points of ``rank``: a contiguous block."""
        check_int("rank", rank, minimum=0, maximum=self.n_ranks - 1)
        if self.bounds is not None:
            return range(self.bounds[rank], self.bounds[rank + 1])
        return range(rank * self.n_points // self.n_ranks, (rank + 1) * self.n_points // self.n_ranks)

    def owned(self, level: int, rank: int) -> range:
        """Level-``level`` indices owned by ``rank`` (possibly empty)."""
        block = self.fine_block(rank)
        stride = self.stride(level)
        return range(-(-block.start // stride), -(-block.stop // stride))

    def owner(self, level: int, index: int) -> int:
        """The rank that owns point ``index`` of ``level``."""
        check_int("index", index, minimum=0, maximum=self.points(level) - 1)
        fine = index * self.stride(level)
        if self.bounds is not None:
            return bisect.bisect_right(self.bounds, fine) - 1
        return ((fine + 1) * self.n_ranks - 1) // self.n_points

    def left(self, level: int, rank: int) -> int | None:
        """Owner of the point just before ``rank``'s first point on ``level``."""
        first = self.owned(level, rank).start
        if first == 0 or not self.owned(level, rank):
            return None
        return self.owner(level, first - 1)

    def right(self, level: int, rank: int) -> int | None:
        """Owner of the point just after ``rank``'s last point on ``level``."""
        own = self.owned(level, rank)
        if not own or own.stop >= self.points(level):
            return None
        return self.owner(level, own.stop)


def _check_ranks(n_ranks: int, n_points: int) -> None:
    check_int("ranks", n_ranks, minimum=1)
    if n_ranks > n_points:
        raise ValueError(
            f"ranks must be between 1 and the number of time points ({n_points}): every rank needs at least one point; got {n_ranks}"
        )
