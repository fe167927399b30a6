"""The problem protocol: all the solver knows about what it solves."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from .._checks import check_float, check_int


@runtime_checkable
class Problem(Protocol):
    """A time-stepping problem on the uniform grid ``t_i = i * t_final / n_steps``.

    Attributes
    ----------
    n_steps
        Number of fine time steps; the grid has ``n_steps + 1`` points.
    """

    n_steps: int

    def initial_value(self) -> Any:
        """The state at point 0 (a NumPy array or a torch tensor)."""

    def step(self, u: Any, start: int, stop: int, level: int) -> Any:
        """Propagate ``u`` from fine point ``start`` to fine point ``stop`` on ``level``.

        Must return a new object and leave ``u`` unchanged.
        """


class UniformGrid:
    """Shared bookkeeping of problems on a uniform time grid."""

    def __init__(self, t_final: float, n_steps: int) -> None:
        self.t_final = check_float("t_final", t_final, minimum=0.0)
        if self.t_final == 0.0:
            raise ValueError(f"t_final must be a real number > 0; got {t_final!r}")
        self.n_steps = check_int("n_steps", n_steps, minimum=1)
        self.dt = self.t_final / self.n_steps

    @property
    def times(self) -> np.ndarray:
        """The ``n_steps + 1`` fine time points."""
        return np.linspace(0.0, self.t_final, self.n_steps + 1)

    def interval(self, start: int, stop: int) -> float:
        """Length of the interval between fine points ``start`` and ``stop``."""
        return (stop - start) * self.dt
