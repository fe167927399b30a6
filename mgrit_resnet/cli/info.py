"""The ``info`` verb: versions, ranks, threads and devices."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from .. import comm as comm_module
from ._common import world_size

HELP = "versions, ranks, threads and devices"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``info`` takes no options."""


def prepare(args: argparse.Namespace, comm: Any, rank: int) -> Callable[[], int]:
    """Nothing to check; the job gathers the versions and prints them on rank 0."""
    return lambda: _info(comm, rank)


def _info(comm: Any, rank: int) -> int:
    import platform

    import numpy
    import scipy

    rows = {"python": platform.python_version(), "numpy": numpy.__version__, "scipy": scipy.__version__}
    try:
        import torch

        rows["torch"] = torch.__version__
        rows["torch threads"] = str(torch.get_num_threads())
        rows["cuda devices"] = str(torch.cuda.device_count() if torch.cuda.is_available() else 0)
    except ImportError:
        rows["torch"] = "not installed"
    rows.update(comm_module.mpi_versions())
    try:
        import petsc4py

        rows["petsc4py"] = petsc4py.__version__
    except ImportError:
        rows["petsc4py"] = "not installed (make petsc, or pip install mgrit_resnet[petsc])"
    rows["ranks"] = str(world_size(comm))
    rows["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "unset")
    if rank == 0:
        width = max(len(k) for k in rows)
        print("\n".join(f"{k:<{width}}  {v}" for k, v in rows.items()))
    return 0
