"""Run every case of ``mpi_cases`` on MPI.COMM_WORLD; rank 0 writes JSON to argv[1].

Also checks that bad input raises the same message on every rank.
"""

import json
import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mpi_cases import CASES, run_case  # noqa: E402

import mgrit_resnet as mr  # noqa: E402

comm = MPI.COMM_WORLD
mr.comm.install_abort_on_error(comm)


def encode(states):
    return [np.stack([np.real(s), np.imag(s)]).tolist() for s in states]


out = {"ranks": comm.Get_size(), "cases": {}, "errors": {}}
for name in CASES:
    solver, result = run_case(name, comm)
    states = solver.gather_states(result)
    if comm.Get_rank() == 0:
        out["cases"][name] = dict(result.to_json(), states=encode(states), steps_per_rank=result.steps_per_rank)

# Warm restarts from two unconverged iterations: every state, or only what restart_states keeps.
out["restart"] = {}
for name in ("heat_V3", "heat_F3_list", "dahlquist_complex_skip"):
    factory, options = CASES[name]
    options = {**options, "tol": 0.0, "max_iter": 2}
    solver = mr.MGRIT(factory(), comm=comm, **options)
    first = solver.solve()
    kept = solver.restart_states(first)
    runs = {"full": solver.solve(initial_guess=first.states), "kept": solver.solve(initial_guess=kept)}
    kept_points = comm.allgather([i for i, s in zip(first.owned, kept) if s is not None])
    if comm.Get_rank() == 0:
        out["restart"][name] = {key: dict(r.to_json(), states=encode(solver.gather_states(r))) for key, r in runs.items()}
        out["restart"][name]["kept_points"] = [i for part in kept_points for i in part]
    else:
        for r in runs.values():
            solver.gather_states(r)

bad_inputs = {
    "coarsening": dict(coarsening=1),
    "levels": dict(levels=0),
    "relax": dict(relax="FFC"),
    "cycle": dict(cycle="W"),
}
for key, options in bad_inputs.items():
    try:
        mr.MGRIT(mr.problems.Dahlquist(n_steps=20), comm=comm, **options)
        message = "no error"
    except ValueError as error:
        message = f"ValueError: {error}"
    out["errors"][key] = comm.allgather(message)
try:
    mr.MGRIT(mr.problems.Dahlquist(n_steps=comm.Get_size() - 2), comm=comm)
    message = "no error"
except ValueError as error:
    message = f"ValueError: {error}"
out["errors"]["ranks"] = comm.allgather(message)

if comm.Get_rank() == 0:
    Path(sys.argv[1]).write_text(json.dumps(out))
