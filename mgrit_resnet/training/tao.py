"""L-BFGS from PETSc TAO over the parameters spread across the layer-ranks.

The PETSc vector of unknowns is distributed like the network: each rank's
local part is its own residual layers' parameters, and rank 0 of the layer
group also holds the replicated ones (opening layer and classifier), which are
broadcast to the other ranks before every evaluation. TAO's ``lmvm`` solver
(limited-memory BFGS with a More-Thuente line search) drives the objective and
gradient that forward and adjoint MGRIT compute. Its quasi-Newton memory
carries over from one epoch to the next; a resumed run starts it afresh.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import comm as comm_module
from .checks import lbfgs_petsc

OPTIONS_PREFIX = "mgrit_"  # PETSc options of the L-BFGS solver, e.g. -mgrit_tao_lmvm_recycle 0, -mgrit_tao_ls_type armijo


class TaoLBFGS:
    """Minimise a full-batch objective with TAO's L-BFGS.

    Parameters
    ----------
    named_params
        This rank's parameters by name (residual layers start with ``layers.``).
    layer_comm
        The mpi4py communicator of the layer group, or ``None`` for one rank.
    """

    def __init__(self, named_params: list[tuple[str, torch.nn.Parameter]], layer_comm: Any) -> None:
        PETSc = lbfgs_petsc()
        self.backend = comm_module.backend_for(layer_comm)
        self.replicated = [p for name, p in named_params if not name.startswith("layers.")]
        self.owned = [p for name, p in named_params if name.startswith("layers.")]
        self.local = self.owned + (self.replicated if self.backend.rank == 0 else [])
        n_local = sum(p.numel() for p in self.local)
        comm = PETSc.COMM_SELF if layer_comm is None else PETSc.Comm(layer_comm)
        self.x = PETSc.Vec().createMPI((n_local, PETSc.DETERMINE), comm=comm)
        self.g = self.x.duplicate()
        self.tao = PETSc.TAO().create(comm=comm)
        self.tao.setType("lmvm")
        self.tao.setTolerances(gatol=0.0, grtol=0.0, gttol=0.0)
        # The epochs chunk one L-BFGS run on one full-batch objective: keep the
        # quasi-Newton pairs from one epoch's solve to the next (TAO would drop them).
        self.tao.setOptionsPrefix(OPTIONS_PREFIX)
        options = PETSc.Options()
        if not options.hasName(f"{OPTIONS_PREFIX}tao_lmvm_recycle"):
            options.setValue(f"{OPTIONS_PREFIX}tao_lmvm_recycle", True)
        self.tao.setFromOptions()
        self._closure: Callable[[], float] | None = None
        self.tao.setObjectiveGradient(self._objective_gradient, self.g)

    def run(self, closure: Callable[[], float], iterations: int) -> dict[str, Any]:
        """Up to ``iterations`` L-BFGS iterations from the current parameters; ``closure`` fills ``.grad`` and returns the loss."""
        self._closure = closure
        self._to_vec(self.local, self.x, grad=False)
        self.tao.setSolution(self.x)
        self.tao.setMaximumIterations(iterations)
        self.tao.solve()
        self._from_vec(self.tao.getSolution())
        return {
            "objective": self.tao.getObjectiveValue(),
            "iterations": self.tao.getIterationNumber(),
            "reason": self.tao.getConvergedReason(),
        }

    def _objective_gradient(self, tao: Any, x: Any, g: Any) -> float:
        self._from_vec(x)
        for p in self.local + self.replicated:
            p.grad = None
        loss = self._closure()
        self._to_vec(self.local, g, grad=True)
        return loss

    def _to_vec(self, params: list[torch.nn.Parameter], vec: Any, grad: bool) -> None:
        array = vec.getArray()
        offset = 0
        for p in params:
            value = p.grad if grad else p
            array[offset : offset + p.numel()] = value.detach().reshape(-1).cpu().double().numpy()
            offset += p.numel()

    def _from_vec(self, vec: Any) -> None:
        array = vec.getArray(readonly=True)
        offset = 0
        with torch.no_grad():
            for p in self.local:
                p.copy_(torch.from_numpy(array[offset : offset + p.numel()].copy()).view_as(p))
                offset += p.numel()
            if self.backend.size > 1:  # the replicated parameters live in rank 0's part
                flat = torch.cat([p.detach().reshape(-1) for p in self.replicated]).cpu()
                self.backend.bcast_buffer(flat, 0)
                offset = 0
                for p in self.replicated:
                    p.copy_(flat[offset : offset + p.numel()].view_as(p))
                    offset += p.numel()
