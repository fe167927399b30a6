"""Torch-tensor states through the same solver and channels; rank 0 writes JSON to argv[1].

A heat-like linear problem whose states are float64 torch tensors: the solver,
the FAS updates and the buffer-based messages must handle them exactly as
NumPy arrays.
"""

import json
import sys
from pathlib import Path

import torch

import mgrit_resnet as mr
from mgrit_resnet.comm import install_abort_on_error, world

torch.set_num_threads(1)


class TorchLinear(mr.problems.UniformGrid):
    """``u' = A u`` with a fixed symmetric negative definite ``A``, explicit Euler."""

    def __init__(self, n_steps: int) -> None:
        super().__init__(t_final=1.0, n_steps=n_steps)
        generator = torch.Generator().manual_seed(0)
        b = torch.randn(5, 5, generator=generator, dtype=torch.float64)
        self.a = -(b @ b.T) / 10 - torch.eye(5, dtype=torch.float64)

    def initial_value(self) -> torch.Tensor:
        return torch.linspace(1.0, 2.0, 5, dtype=torch.float64)

    def step(self, u, start, stop, level):
        return u + self.interval(start, stop) * (self.a @ u)


comm = world()
install_abort_on_error(comm)
solver = mr.MGRIT(TorchLinear(n_steps=45), levels=3, coarsening=3, tol=1e-13, max_iter=30, comm=comm)
result = solver.solve()
states = solver.gather_states(result)
if comm is None or comm.Get_rank() == 0:
    assert all(isinstance(s, torch.Tensor) for s in states)
    out = dict(result.to_json(), states=[s.tolist() for s in states])
    Path(sys.argv[1]).write_text(json.dumps(out))
