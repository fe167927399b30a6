"""A script of the Python API that never installs the abort hook; ``one``: rank 1 raises between building the solver and
solve() (the others wait inside the solve); ``all``: every rank raises at once."""

import sys

import mgrit_resnet as mr
from mgrit_resnet.comm import world

comm = world()
solver = mr.MGRIT(mr.problems.Heat1D(nx=4, n_steps=40), levels=2, coarsening=2, comm=comm)
rank = 0 if comm is None else comm.Get_rank()  # one rank: nothing to hang, the traceback as usual
if sys.argv[1] == "all" or rank == 1:
    raise RuntimeError(f"deliberate failure on rank {rank}")
solver.solve()
