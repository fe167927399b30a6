"""Solver cases run both in-process (serial oracle) and under mpiexec.

Each case is a name, a problem factory and MGRIT options. The MPI script
``tests/mpi/run_cases.py`` runs every case at the rank count it was started
with and writes residual histories and the gathered fine states to JSON.
"""

from __future__ import annotations

import mgrit_resnet as mr


def _dahlquist(**kw):
    return lambda: mr.problems.Dahlquist(**kw)


def _heat1d(**kw):
    return lambda: mr.problems.Heat1D(**kw)


def _heat2d(**kw):
    return lambda: mr.problems.Heat2D(**kw)


# Oscillatory Dahlquist: MGRIT converges slowly, so exactness after N_c (F) or
# N_c / 2 (FCF) iterations is not hidden by round-off. 37 steps, m = 3: 12 coarse
# intervals and one trailing F-point.
EXACT = {"problem": _dahlquist(z=3j, t_final=6.0, n_steps=37, scheme="trapezoid"), "n_coarse": 12}

CASES = {
    "one_level": (_heat1d(nx=8, t_final=1.0, n_steps=37), dict(levels=1, tol=0.0, max_iter=3)),
    "exact_F": (EXACT["problem"], dict(levels=2, coarsening=3, relax="F", tol=0.0, max_iter=30)),
    "exact_FCF": (EXACT["problem"], dict(levels=2, coarsening=3, relax="FCF", tol=0.0, max_iter=30)),
    "heat_V3": (_heat1d(nx=10, t_final=0.5, n_steps=50), dict(levels=3, coarsening=2, relax="FCF", tol=1e-11, max_iter=20)),
    "heat_F3_list": (
        _heat1d(nx=10, t_final=0.5, n_steps=37),
        dict(levels=3, coarsening=[2, 3], relax=["F", "FCFCF"], cycle="F", c_weight=0.8, tol=1e-11, max_iter=20),
    ),
    "heat_empty_coarse_ranks": (
        _heat1d(nx=6, t_final=0.5, n_steps=20),
        dict(levels=3, coarsening=4, relax="FCF", tol=1e-12, max_iter=20, initial_guess="sequential_coarse"),
    ),
    "heat2d_petsc": (_heat2d(nx=6, t_final=0.5, n_steps=45), dict(levels=2, coarsening=4, relax="FCF", tol=1e-10, max_iter=20)),
    "dahlquist_complex_skip": (
        _dahlquist(z=-1 + 2j, t_final=4.0, n_steps=41, scheme="trapezoid"),
        dict(levels=4, coarsening=2, relax="FCF", cycle="V", tol=1e-12, max_iter=25, skip_first_down=True),
    ),
    "dahlquist_fe_relative": (
        _dahlquist(z=-2.0, t_final=2.0, n_steps=63, scheme="forward_euler"),
        dict(levels=2, coarsening=4, relax="F", tol=1e-8, tol_kind="relative", max_iter=30, initial_guess="initial_value"),
    ),
}


def run_case(name: str, comm=None):
    """Solve case ``name``; return the solver and its result."""
    factory, options = CASES[name]
    solver = mr.MGRIT(factory(), comm=comm, **options)
    return solver, solver.solve()
