"""Importing petsc4py the one way the package does it."""

from __future__ import annotations

import sys
from typing import Any


def load(purpose: str) -> Any:
    """The ``PETSc`` module, initialised; an ImportError naming ``purpose`` when petsc4py is missing.

    A PETSc built without MPI refuses to start under mpiexec unless told that
    each rank uses it on its own; the option has no effect on a PETSc with MPI.
    """
    try:
        import petsc4py
    except ImportError as error:
        raise ImportError(f"{purpose} needs petsc4py; install the petsc extra: pip install mgrit_resnet[petsc] (or make petsc)") from error
    if "petsc4py.PETSc" not in sys.modules:
        petsc4py.init(["-mpiuni-allow-multiprocess-launch"])
    from petsc4py import PETSc

    PETSc.Options().hasName("mpiuni-allow-multiprocess-launch")  # mark it used: no warning at exit
    return PETSc


def has_mpi(PETSc: Any, mpi_size: int) -> bool:
    """Whether this PETSc spans the ``mpi_size`` ranks of the job (False for a sequential MPI-uni build under mpiexec)."""
    return mpi_size == 1 or PETSc.COMM_WORLD.getSize() == mpi_size
