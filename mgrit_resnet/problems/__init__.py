"""Time-stepping problems behind one protocol, and the registry of the config's problem kinds.

``Heat2D`` needs petsc4py (the ``petsc`` extra) and is imported on first use:
neither ``import mgrit_resnet.problems`` nor iterating :data:`REGISTRY` imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..config import PROBLEM_KINDS
from .base import Problem as Problem
from .base import UniformGrid as UniformGrid
from .base import section_values
from .dahlquist import Dahlquist as Dahlquist
from .heat1d import Heat1D as Heat1D

__all__ = ["Problem", "UniformGrid", "Dahlquist", "Heat1D", "Heat2D"]


def __getattr__(name: str):
    if name == "Heat2D":
        from .heat2d import Heat2D

        return Heat2D
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Registry(Mapping[str, type]):
    """``{problem.kind: class}`` in the order of :data:`~mgrit_resnet.config.PROBLEM_KINDS`; a class is imported when looked up."""

    def __init__(self, loaders: Mapping[str, Callable[[], type]]) -> None:
        missing = [kind for kind in PROBLEM_KINDS if kind not in loaders]
        extra = [kind for kind in loaders if kind not in PROBLEM_KINDS]
        if missing or extra:
            raise ImportError(f"the problem registry must cover config.PROBLEM_KINDS exactly: missing {missing}, not in it {extra}")
        self._loaders = {kind: loaders[kind] for kind in PROBLEM_KINDS}

    def __getitem__(self, kind: str) -> type:
        loader = self._loaders.get(kind)
        if loader is None:
            raise KeyError(kind)
        return loader()

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaders)

    def __len__(self) -> int:
        return len(self._loaders)


#: The problem class of every ``problem.kind`` (``Heat2D`` imported on lookup).
REGISTRY: Mapping[str, type] = _Registry(
    {"dahlquist": lambda: Dahlquist, "heat1d": lambda: Heat1D, "heat2d": lambda: __getattr__("Heat2D")},
)


def from_config(section: Any) -> Problem:
    """Build the problem of a ``[problem]`` config section (see :mod:`mgrit_resnet.config`).

    The section's ``kind`` picks the class in :data:`REGISTRY`, which builds
    itself from the section (``Cls.from_config(section)``).
    """
    kind = section_values(section, keys=("kind",))["kind"]
    if kind not in REGISTRY:
        raise ValueError(f"problem.kind must be one of {', '.join(repr(k) for k in REGISTRY)}; got {kind!r}")
    return REGISTRY[kind].from_config(section)
