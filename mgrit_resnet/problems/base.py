"""The problem protocol: all the solver knows about what it solves."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from .._checks import check_float, check_int


@runtime_checkable
class Problem(Protocol):
    """A time-stepping problem on the uniform grid ``t_i = i * t_final / n_steps``.

    Attributes
    ----------
    n_steps
        Number of fine time steps; the grid has ``n_steps + 1`` points.

    Notes
    -----
    A problem may also define ``last_sweep()``: the solver calls it before a
    fine-level sweep that certainly ends the solve (the iteration limit is
    reached), after which every fine step is the last evaluation of its
    interval. The network's adjoint uses it to take parameter gradients in
    that sweep instead of in a pass of its own.
    """

    n_steps: int

    def initial_value(self) -> Any:
        """The state at point 0 (a NumPy array or a torch tensor)."""

    def step(self, u: Any, start: int, stop: int, level: int) -> Any:
        """Propagate ``u`` from fine point ``start`` to fine point ``stop`` on ``level``.

        Must return a new object and leave ``u`` unchanged.
        """


def section_values(section: Any, kind: str | None = None, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """The values of a ``[problem]`` section (anything with ``as_dict()``, or a mapping).

    ``keys`` must be among them; a ``kind`` among them must be ``kind`` (when given).
    """
    values = section.as_dict() if hasattr(section, "as_dict") else dict(section)
    missing = [key for key in keys if key not in values]
    if missing:
        raise ValueError(f"the [problem] section lacks {', '.join(f'problem.{key}' for key in missing)}")
    if kind is not None and values.get("kind", kind) != kind:
        raise ValueError(f"problem.kind = {values['kind']!r} is not {kind!r}")
    return values


class UniformGrid:
    """Shared bookkeeping of problems on a uniform time grid."""

    def __init__(self, t_final: float, n_steps: int) -> None:
        self.t_final = check_float("t_final", t_final, minimum=0.0)
        if self.t_final == 0.0:
            raise ValueError(f"t_final must be a real number > 0; got {t_final!r}")
        self.n_steps = check_int("n_steps", n_steps, minimum=1)
        self.dt = self.t_final / self.n_steps

    @property
    def times(self) -> np.ndarray:
        """The ``n_steps + 1`` fine time points."""
        return np.linspace(0.0, self.t_final, self.n_steps + 1)

    def interval(self, start: int, stop: int) -> float:
        """Length of the interval between fine points ``start`` and ``stop``."""
        return (stop - start) * self.dt


def heat_from_config(cls: Any, section: Any) -> Any:
    """A heat problem ``cls`` (with its ``kind``) from a ``[problem]`` section: backward Euler only."""
    p = section_values(section, cls.kind, ("nx", "diffusivity", "t_final", "n_steps"))
    scheme = p.get("scheme", "backward_euler")
    if scheme != "backward_euler":
        raise ValueError(f"problem.scheme must be 'backward_euler' for problem.kind = {cls.kind!r}; got {scheme!r}")
    return cls(nx=p["nx"], diffusivity=p["diffusivity"], t_final=p["t_final"], n_steps=p["n_steps"])


def heat_text(problem: Any) -> str:
    """One line for a heat problem: ``nx = 32, diffusivity 1.0, backward_euler, T = 5.0, 100 steps``."""
    return f"nx = {problem.nx}, diffusivity {problem.diffusivity}, backward_euler, T = {problem.t_final}, {problem.n_steps} steps"
