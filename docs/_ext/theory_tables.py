"""``.. two-level-table::``: two-level MGRIT on the Dahlquist problem, predicted and measured, computed at build time.

For each coarsening factor ``m`` and relaxation the table gives the coarse
step :math:`z m \\delta t`, the fine and coarse amplification factors, the
exact 2-norm of the error propagator and the two closed-form bounds of
:mod:`mgrit_resnet.theory`, and the largest convergence factor that
:class:`mgrit_resnet.MGRIT` measures on the same problem. The bounds assume a
stable coarse step; where :math:`|\\mu| > 1` the row says so in their place
(``UNSTABLE``) instead of printing numbers that mean nothing.
"""

from __future__ import annotations

import math

from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

import mgrit_resnet as mr

#: What the bound columns hold for an unstable coarse step (|mu| > 1).
UNSTABLE = r"none: unstable coarse step, :math:`|\mu| > 1`"


def _numbers(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def measured_factor(problem: mr.problems.Dahlquist, m: int, relax: str, iterations: int) -> float:
    """Largest ratio of successive residuals over ``iterations`` two-level V-cycles (zero initial guess)."""
    result = mr.MGRIT(problem, levels=2, coarsening=m, relax=relax, tol=0.0, max_iter=iterations).solve()
    factors = [f for f in result.convergence_factors if not math.isnan(f) and f > 0]
    return max(factors) if factors else 0.0


def table_rst(z: float, scheme: str, t_final: float, n_steps: int, coarsening: list[int], relax: list[str], iterations: int) -> str:
    """The list-table, one row per (coarsening factor, relaxation)."""
    problem = mr.problems.Dahlquist(z=z, t_final=t_final, n_steps=n_steps, scheme=scheme)
    lines = [".. list-table::", "   :header-rows: 1", ""]
    header = [":math:`m`", "relax", r":math:`z m \delta t`", r":math:`|\lambda|`", r":math:`|\mu|`"]
    header += [r"exact :math:`\|E\|_2`", "tight", "upper", "measured (max)"]
    lines += ["   * - " + header[0]] + [f"     - {h}" for h in header[1:]]
    for m in coarsening:
        lam, mu = problem.amplification(problem.dt), problem.amplification(m * problem.dt)
        n_coarse = n_steps // m
        for r in relax:
            row = [
                str(m),
                f"``{r}``",
                f"{(z * m * problem.dt).real:.4g}",
                f"{abs(lam):.4f}",
                f"{abs(mu):.4f}",
                _g(mr.theory.two_level_norm(lam, mu, m, n_coarse, r)),
                *_bounds(lam, mu, m, n_coarse, r),
                _g(measured_factor(problem, m, r, iterations)),
            ]
            lines += ["   * - " + row[0]] + [f"     - {c}" for c in row[1:]]
    return "\n".join(lines) + "\n"


def _bounds(lam: complex, mu: complex, m: int, n_coarse: int, relax: str) -> list[str]:
    """The tight and upper bound cells; :data:`UNSTABLE` in both where the coarse step amplifies (``|mu| > 1``)."""
    if abs(mu) > 1:
        return [UNSTABLE, UNSTABLE]
    return [_g(mr.theory.two_level_bound(lam, mu, m, n_coarse, relax, kind)) for kind in ("tight", "upper")]


def _g(x: float) -> str:
    return f"{x:.4f}" if 1e-3 <= abs(x) < 1e4 else f"{x:.3e}"


class TwoLevelTable(SphinxDirective):
    option_spec = {
        "z": float,
        "scheme": directives.unchanged_required,
        "t-final": float,
        "n-steps": directives.positive_int,
        "coarsening": directives.unchanged_required,
        "relax": directives.unchanged_required,
        "iterations": directives.positive_int,
    }

    def run(self):
        o = self.options
        text = table_rst(
            z=o.get("z", -1.0),
            scheme=o.get("scheme", "backward_euler"),
            t_final=o.get("t-final", 5.0),
            n_steps=o.get("n-steps", 100),
            coarsening=[int(m) for m in _numbers(o.get("coarsening", "2"))],
            relax=_numbers(o.get("relax", "F")),
            iterations=o.get("iterations", 10),
        )
        return self.parse_text_to_nodes(text)


def setup(app: Sphinx) -> dict:
    app.add_directive("two-level-table", TwoLevelTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
