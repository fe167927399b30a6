"""The 2D heat equation, backward Euler in time, finite differences in space, PETSc solves."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from .. import _petsc
from .._checks import check_float, check_int
from .base import UniformGrid, heat_from_config, heat_text

PETSc = _petsc.load("Heat2D")


class Heat2D(UniformGrid):
    """``u_t = a (u_xx + u_yy)`` on the unit square, ``u = 0`` on the boundary.

    The initial value is ``sin(pi x) sin(pi y) + sin(4 pi x) sin(3 pi y) / 2``
    on the ``nx`` by ``nx`` interior points, flattened row-major (``x`` is the
    first index): the state is a float64 array of length ``nx * nx``.

    Parameters
    ----------
    nx
        Number of interior grid points in each direction.
    diffusivity
        The coefficient ``a``.
    t_final, n_steps
        The fine time grid.
    ksp_rtol
        Relative residual tolerance of the linear solves.

    Notes
    -----
    Each step solves ``(I - dt a L) u_new = u``, with ``L`` the 5-point
    Laplacian, by conjugate gradients with an incomplete Cholesky
    preconditioner; one PETSc KSP is set up per step length (one per level).
    All PETSc objects live on ``PETSc.COMM_SELF``: parallelism is in time only.
    """

    kind = "heat2d"

    def __init__(self, nx: int = 32, diffusivity: float = 1.0, t_final: float = 1.0, n_steps: int = 100, ksp_rtol: float = 1e-12) -> None:
        super().__init__(t_final, n_steps)
        self.nx = check_int("nx", nx, minimum=1)
        self.diffusivity = check_float("diffusivity", diffusivity, minimum=0.0)
        self.ksp_rtol = check_float("ksp_rtol", ksp_rtol, minimum=0.0)
        if not 0.0 < self.ksp_rtol < 1.0:
            raise ValueError(f"ksp_rtol must be a real number between 0 and 1 (exclusive); got {ksp_rtol!r}")
        self.x = np.linspace(0.0, 1.0, self.nx + 2)[1:-1]
        h = 1.0 / (self.nx + 1)
        second = sp.diags([1.0, -2.0, 1.0], [-1, 0, 1], shape=(self.nx, self.nx)) / h**2
        eye = sp.identity(self.nx)
        csr = (sp.kron(second, eye) + sp.kron(eye, second)).tocsr()
        csr.sort_indices()
        n = self.nx * self.nx
        self.laplacian = PETSc.Mat().createAIJ(
            size=(n, n),
            csr=(csr.indptr.astype(PETSc.IntType), csr.indices.astype(PETSc.IntType), csr.data),
            comm=PETSc.COMM_SELF,
        )
        self.laplacian.assemble()
        self._rhs, self._solution = self.laplacian.createVecs()
        self._solvers: dict[int, PETSc.KSP] = {}

    @classmethod
    def from_config(cls, section: Any) -> Heat2D:
        """From a ``[problem]`` section with ``kind = "heat2d"`` (or a mapping with its keys); the scheme must be ``backward_euler``."""
        return heat_from_config(cls, section)

    def describe(self) -> str:
        """One line: ``nx = 32, diffusivity 1.0, backward_euler, T = 5.0, 100 steps``."""
        return heat_text(self)

    def initial_value(self) -> np.ndarray:
        """``sin(pi x) sin(pi y) + sin(4 pi x) sin(3 pi y) / 2`` at the interior grid points, flattened."""
        x, y = np.meshgrid(self.x, self.x, indexing="ij")
        u = np.sin(np.pi * x) * np.sin(np.pi * y) + 0.5 * np.sin(4 * np.pi * x) * np.sin(3 * np.pi * y)
        return u.ravel()

    def step(self, u: np.ndarray, start: int, stop: int, level: int) -> np.ndarray:
        """One backward Euler step over the interval ``start`` to ``stop`` (a KSP solve)."""
        width = stop - start
        ksp = self._solvers.get(width)
        if ksp is None:
            ksp = self._solvers[width] = self._make_solver(self.interval(start, stop))
        self._rhs.array[:] = u
        ksp.solve(self._rhs, self._solution)
        reason = ksp.getConvergedReason()
        if reason <= 0:
            raise RuntimeError(
                f"Heat2D: the PETSc KSP solve for a step of length {width} (level {level}) did not converge "
                f"(reason {reason}, {ksp.getIterationNumber()} iterations, residual norm {ksp.getResidualNorm():.3e})"
            )
        return self._solution.array.copy()

    def _make_solver(self, dt: float) -> PETSc.KSP:
        """A CG + ICC solver for ``I - dt a L``."""
        matrix = self.laplacian.duplicate(copy=True)
        matrix.scale(-dt * self.diffusivity)
        matrix.shift(1.0)
        ksp = PETSc.KSP().create(comm=PETSc.COMM_SELF)
        ksp.setOperators(matrix)
        ksp.setType(PETSc.KSP.Type.CG)
        ksp.getPC().setType(PETSc.PC.Type.ICC)
        ksp.setTolerances(rtol=self.ksp_rtol, max_it=10_000)
        ksp.setUp()
        return ksp
