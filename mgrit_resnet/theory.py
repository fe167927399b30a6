"""Two-level MGRIT convergence theory for a scalar propagator.

With fine propagator ``lam`` (one step), coarse propagator ``mu`` (one step of
``m`` fine steps) and ``n_coarse`` coarse intervals, two-level MGRIT with
F(CF)^nu relaxation maps the C-point error (and, equally, the C-point residual)
by the lower-triangular Toeplitz matrix

    E = (lam^m - mu) lam^(m nu) (I - mu S)^(-1) S^(1 + nu),

``S`` the shift by one coarse interval (Dobrev, Kolev, Petersson and Schroder,
SISC 2017). Three measures of ``||E||_2`` are offered:

* :func:`two_level_norm`: the exact 2-norm of that matrix;
* :func:`two_level_bound` with ``kind="upper"``: the row-sum bound of Dobrev et
  al., ``|lam^m - mu| |lam|^(m nu) (1 - |mu|^(N_c - nu)) / (1 - |mu|)``;
* :func:`two_level_bound` with ``kind="tight"``: Southworth's tight estimate
  (SISC 2019), ``|lam^m - mu| |lam|^(m nu) / sqrt((1 - |mu|)^2 + pi^2 |mu| / N_c^2)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._checks import check_choice, check_int
from .config import parse_relax

BOUND_KINDS = ("tight", "upper")


def error_propagator(lam: complex, mu: complex, m: int, n_coarse: int, relax: str = "F") -> np.ndarray:
    """The ``n_coarse x n_coarse`` two-level error propagator on the C-points ``1..n_coarse``."""
    m = check_int("m", m, minimum=2)
    n_coarse = check_int("n_coarse", n_coarse, minimum=1)
    nu = parse_relax(relax)
    column = np.zeros(n_coarse, dtype=complex)
    lags = np.arange(1 + nu, n_coarse)
    column[1 + nu :] = (lam**m - mu) * lam ** (m * nu) * mu ** (lags - 1 - nu)
    index = np.subtract.outer(np.arange(n_coarse), np.arange(n_coarse))
    return np.where(index >= 0, column[np.clip(index, 0, None)], 0.0)


def two_level_norm(lam: complex, mu: complex, m: int, n_coarse: int, relax: str = "F") -> float:
    """Exact 2-norm of :func:`error_propagator`: the worst-case factor of one iteration."""
    return float(np.linalg.norm(error_propagator(lam, mu, m, n_coarse, relax), 2))


def two_level_bound(lam: complex, mu: complex, m: int, n_coarse: int, relax: str = "F", kind: str = "tight") -> float:
    """Closed-form two-level convergence factor for F(CF)^nu relaxation.

    Parameters
    ----------
    lam, mu
        Fine (one step) and coarse (one step of length ``m`` fine steps) propagators.
    m
        Coarsening factor.
    n_coarse
        Number of coarse intervals.
    relax
        ``"F"``, ``"FCF"``, ...
    kind
        ``"tight"`` (Southworth 2019) or ``"upper"`` (Dobrev et al. 2017).
    """
    m = check_int("m", m, minimum=2)
    n_coarse = check_int("n_coarse", n_coarse, minimum=1)
    kind = check_choice("kind", kind, BOUND_KINDS)
    nu = parse_relax(relax)
    a = abs(lam**m - mu) * abs(lam) ** (m * nu)
    b = abs(mu)
    if kind == "tight":
        return a / math.sqrt((1 - b) ** 2 + math.pi**2 * b / n_coarse**2)
    terms = max(n_coarse - nu, 0)
    if b == 1.0:
        return a * terms
    return a * (1 - b**terms) / (1 - b)


def predicted_factor(problem: Any, n_points: int, m: int, relax: str, kind: str = "tight") -> float | None:
    """Two-level factor for a problem with a scalar propagator ``problem.amplification(dt)``.

    Returns ``None`` when the problem has no scalar amplification factor.
    """
    amplification = getattr(problem, "amplification", None)
    if amplification is None:
        return None
    lam = amplification(problem.dt)
    mu = amplification(m * problem.dt)
    return two_level_bound(lam, mu, m, (n_points - 1) // m, relax, kind)


def solver_prediction(solver: Any, kind: str = "tight") -> float | None:
    """Two-level factor for an :class:`~mgrit_resnet.MGRIT` solver, where the theory applies.

    Defined for a hierarchy of exactly two levels on a problem with a scalar
    propagator; ``None`` otherwise. The relaxation is that of the fine level.
    """
    h = solver.hierarchy
    if h.n_levels != 2:
        return None
    return predicted_factor(solver.problem, h.n_points, h.factors[0], "F" + "CF" * solver.relax[0], kind)
