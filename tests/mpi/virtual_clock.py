"""Virtual clock under MPI: a synthetic schedule with known costs, and solves that keep their numbers.

Writes a JSON report (rank 0) to the path given as the only argument.
"""

import json
import sys
import time

import numpy as np

import mgrit_resnet as mr
from mgrit_resnet import comm as comm_module
from mgrit_resnet.comm.clocked import ClockedBackend, VirtualClock, virtual_time

ALPHA, BETA, NBYTES = 0.25, 1e-6, 8000


def burn(seconds: float) -> None:
    """Spend ``seconds`` of this thread's CPU time."""
    end = time.thread_time() + seconds
    x = 0.0
    while time.thread_time() < end:
        x += 1.0


def synthetic(backend) -> dict:
    """Rank 0 works 0.10 s and sends 8000 bytes to rank 1; rank 1 works 0.02 s, receives, works 0.05 s; then an allreduce."""
    clock = VirtualClock(ALPHA, BETA)
    clocked = ClockedBackend(backend, clock)
    buffer = np.zeros(NBYTES // 8)
    if backend.rank == 0:
        burn(0.10)
        clocked.isend(buffer, 1, 5).Wait()
    elif backend.rank == 1:
        burn(0.02)
        request = clocked.irecv(buffer, 0, 5)
        time.sleep(0.3)  # waiting is not work: neither this sleep nor MPI's polling counts
        request.Wait()
        burn(0.05)
    before = clock.now()
    clocked.allreduce_sum(1.0)
    return {"before": backend.allgather(before), "after": backend.allgather(clock.now()), "virtual_time": virtual_time(clocked)}


def main(path: str) -> None:
    world = comm_module.world()
    backend = comm_module.backend_for(world)
    report = {"ranks": backend.size}
    if backend.size == 2:
        report["synthetic"] = synthetic(backend)
    problem = mr.problems.Heat1D(nx=16, n_steps=48)
    plain = mr.MGRIT(problem, levels=3, coarsening=3, tol=1e-10, comm=world).solve()
    clocked = ClockedBackend(backend, VirtualClock(1e-5, 1e-9))
    timed = mr.MGRIT(problem, levels=3, coarsening=3, tol=1e-10, comm=clocked).solve()
    report["plain"] = plain.residuals
    report["clocked"] = timed.residuals
    report["bytes"] = [plain.bytes_per_rank, timed.bytes_per_rank]
    report["clock"] = virtual_time(clocked)
    if backend.rank == 0:
        with open(path, "w") as f:
            json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1])
