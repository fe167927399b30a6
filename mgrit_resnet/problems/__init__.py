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


def from_config(section) -> Problem:
    """Build the problem of a ``[problem]`` config section (see :mod:`mgrit_resnet.config`)."""
    p = section.as_dict() if hasattr(section, "as_dict") else dict(section)
    kind = p["kind"]
    if kind == "dahlquist":
        return Dahlquist(z=p["z"], t_final=p["t_final"], n_steps=p["n_steps"], scheme=p["scheme"])
    if p["scheme"] != "backward_euler":
        raise ValueError(f"problem.scheme must be 'backward_euler' for problem.kind = {kind!r}; got {p['scheme']!r}")
    heat = Heat1D if kind == "heat1d" else __getattr__("Heat2D")
    return heat(nx=p["nx"], diffusivity=p["diffusivity"], t_final=p["t_final"], n_steps=p["n_steps"])
