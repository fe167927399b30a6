"""The Dahlquist test equation ``u' = z u``."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .._checks import check_choice, check_finite
from ..config import SCHEMES
from .base import UniformGrid, section_values


class Dahlquist(UniformGrid):
    """``u' = z u``, ``u(0) = 1``, with a one-step scheme of amplification factor ``R(z dt)``.

    Parameters
    ----------
    z
        The eigenvalue; complex values are allowed, NaN and infinity are not.
    t_final, n_steps
        The fine grid.
    scheme
        ``"forward_euler"``, ``"backward_euler"`` or ``"trapezoid"``; coarse
        levels use the same scheme with the longer step.
    """

    kind = "dahlquist"

    def __init__(self, z: complex = -1.0, t_final: float = 5.0, n_steps: int = 100, scheme: str = "backward_euler") -> None:
        super().__init__(t_final, n_steps)
        self.z = _check_z("z", z)
        self.scheme = check_choice("scheme", scheme, SCHEMES)
        self._dtype = np.complex128 if isinstance(self.z, complex) else np.float64
        self._factors: dict[int, complex] = {}

    @classmethod
    def from_config(cls, section: Any) -> Dahlquist:
        """From a ``[problem]`` section with ``kind = "dahlquist"`` (or a mapping with its keys)."""
        p = section_values(section, cls.kind, ("z", "t_final", "n_steps", "scheme"))
        z = _check_z("problem.z", p["z"])  # named as the config names it; the other keys the config has checked
        return cls(z=z, t_final=p["t_final"], n_steps=p["n_steps"], scheme=p["scheme"])

    def describe(self) -> str:
        """One line: ``z = -1.0, backward_euler, T = 5.0, 100 steps``."""
        return f"z = {self.z}, {self.scheme}, T = {self.t_final}, {self.n_steps} steps"

    def amplification(self, dt: float) -> complex:
        """The scheme's factor ``R(z dt)``: one step multiplies the state by it."""
        x = self.z * dt
        if self.scheme == "forward_euler":
            return 1 + x
        if self.scheme == "backward_euler":
            return 1 / (1 - x)
        return (1 + x / 2) / (1 - x / 2)

    def initial_value(self) -> np.ndarray:
        """``u(0) = 1``, real or complex like ``z``."""
        return np.ones(1, dtype=self._dtype)

    def step(self, u: np.ndarray, start: int, stop: int, level: int) -> np.ndarray:
        """``u`` times the amplification factor of the interval ``start`` to ``stop`` (one step of the scheme)."""
        width = stop - start
        factor = self._factors.get(width)
        if factor is None:
            factor = self._factors[width] = self.amplification(self.interval(start, stop))
        return u * factor


def _check_z(name: str, z: Any) -> complex | float:
    """``z`` as a float when it is real, else as a complex; a clear error naming ``name`` for anything but a finite number."""
    if isinstance(z, bool) or not isinstance(z, numbers.Complex):
        raise TypeError(f"{name} must be a real or complex number; got {z!r}")
    check_finite(name, z)
    return complex(z) if complex(z).imag != 0 else float(complex(z).real)
