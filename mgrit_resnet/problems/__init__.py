"""Time-stepping problems behind one protocol.

``Heat2D`` needs petsc4py (the ``petsc`` extra) and is imported on first use.
"""

from .base import Problem as Problem
from .base import UniformGrid as UniformGrid
from .dahlquist import Dahlquist as Dahlquist
from .heat1d import Heat1D as Heat1D

__all__ = ["Problem", "UniformGrid", "Dahlquist", "Heat1D", "Heat2D"]


def __getattr__(name: str):
    if name == "Heat2D":
        from .heat2d import Heat2D

        return Heat2D
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
