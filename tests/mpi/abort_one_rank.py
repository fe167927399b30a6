"""Rank 1 raises while the others wait for its messages inside a solve."""

import mgrit_resnet as mr
from mgrit_resnet.comm import install_abort_on_error, world

comm = world()
install_abort_on_error(comm)
solver = mr.MGRIT(mr.problems.Heat1D(nx=4, n_steps=40), levels=1, comm=comm)
if comm.Get_rank() == 1:
    raise RuntimeError("deliberate failure on rank 1")
solver.solve()
