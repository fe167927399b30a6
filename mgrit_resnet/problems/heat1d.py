"""The 1D heat equation, backward Euler in time, finite differences in space."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from .._checks import check_float, check_int
from .base import UniformGrid, heat_from_config, heat_text


class Heat1D(UniformGrid):
    """``u_t = a u_xx`` on (0, 1), ``u = 0`` at both ends, ``u(x, 0) = sin(pi x) + sin(8 pi x) / 2``.

    Parameters
    ----------
    nx
        Number of interior grid points.
    diffusivity
        The coefficient ``a``.
    t_final, n_steps
        The fine time grid.

    Notes
    -----
    Each step solves ``(I - dt a L) u_new = u`` with a sparse LU factorisation,
    computed once per step length (one per level).
    """

    kind = "heat1d"

    def __init__(self, nx: int = 64, diffusivity: float = 1.0, t_final: float = 1.0, n_steps: int = 100) -> None:
        super().__init__(t_final, n_steps)
        self.nx = check_int("nx", nx, minimum=1)
        self.diffusivity = check_float("diffusivity", diffusivity, minimum=0.0)
        self.x = np.linspace(0.0, 1.0, self.nx + 2)[1:-1]
        h = 1.0 / (self.nx + 1)
        self.laplacian = sp.diags([1.0, -2.0, 1.0], [-1, 0, 1], shape=(self.nx, self.nx), format="csc") / h**2
        self._solvers: dict[int, spla.SuperLU] = {}

    @classmethod
    def from_config(cls, section: Any) -> Heat1D:
        """From a ``[problem]`` section with ``kind = "heat1d"`` (or a mapping with its keys); the scheme must be ``backward_euler``."""
        return heat_from_config(cls, section)

    def describe(self) -> str:
        """One line: ``nx = 32, diffusivity 1.0, backward_euler, T = 5.0, 100 steps``."""
        return heat_text(self)

    def initial_value(self) -> np.ndarray:
        """``sin(pi x) + sin(8 pi x) / 2`` at the interior grid points."""
        return np.sin(np.pi * self.x) + 0.5 * np.sin(8 * np.pi * self.x)

    def step(self, u: np.ndarray, start: int, stop: int, level: int) -> np.ndarray:
        """One backward Euler step over the interval ``start`` to ``stop``."""
        width = stop - start
        solver = self._solvers.get(width)
        if solver is None:
            dt = self.interval(start, stop)
            matrix = sp.identity(self.nx, format="csc") - (dt * self.diffusivity) * self.laplacian
            solver = self._solvers[width] = spla.splu(matrix.tocsc())
        return solver.solve(u)
