"""
Dahlquist: MGRIT against the two-level theory
=============================================

Two-level MGRIT on the Dahlquist equation :math:`u' = z u` has a closed-form
error propagator (:doc:`../theory/convergence`). This tutorial solves the
problem of ``examples/dahlquist.toml`` (:math:`z = -1`, backward Euler,
:math:`T = 40`, :math:`N = 2048`) for several coarsening factors and puts the
measured residual histories beside what :mod:`mgrit_resnet.theory` predicts,
the same numbers ``mgrit-resnet solve`` prints.
"""

import math

import matplotlib.pyplot as plt

import mgrit_resnet as mr

problem = mr.problems.Dahlquist(z=-1.0, t_final=40.0, n_steps=2048, scheme="backward_euler")

# %%
# One solve per coarsening factor, FCF-relaxation, to a tight tolerance. The
# solver returns its whole residual history; ``convergence_factors`` are the
# ratios of successive residuals.

results = {}
for m in (2, 4, 8, 16):
    solver = mr.MGRIT(problem, levels=2, coarsening=m, relax="FCF", tol=1e-13, max_iter=30, initial_guess="initial_value")
    results[m] = solver.solve()

# %%
# The theory: for each :math:`m`, the fine and coarse amplification factors
# :math:`\lambda = R(z\,\delta t)`, :math:`\mu = R(z\,m\,\delta t)`, the exact
# norm of the error propagator, and Southworth's tight estimate (what
# :func:`~mgrit_resnet.theory.predicted_factor` returns).

print(f"{'m':>3} {'iterations':>10} {'measured max':>13} {'exact ||E||':>12} {'tight':>8}")
predicted = {}
for m, result in results.items():
    lam, mu = problem.amplification(problem.dt), problem.amplification(m * problem.dt)
    exact = mr.theory.two_level_norm(lam, mu, m, problem.n_steps // m, "FCF")
    predicted[m] = mr.theory.predicted_factor(problem, problem.n_steps + 1, m, "FCF")
    measured = max(f for f in result.convergence_factors if not math.isnan(f) and f > 0)
    print(f"{m:>3} {result.iterations:>10} {measured:>13.4f} {exact:>12.4f} {predicted[m]:>8.4f}")

# %%
# Every measured factor stays at or below the exact norm of :math:`E`, the
# worst case of one iteration, and the tight estimate is close to that norm.
# Plotted, the measured histories (markers) follow the predicted slopes
# (dashed lines, :math:`r_0\,\rho^k`):

fig, ax = plt.subplots(figsize=(7, 4.2))
for m, result in results.items():
    history = [result.initial_residual, *result.residuals]
    (line,) = ax.semilogy(range(len(history)), history, "o-", ms=4, label=f"m = {m}")
    k = range(len(history))
    ax.semilogy(k, [history[0] * predicted[m] ** i for i in k], "--", color=line.get_color(), lw=1)
ax.set_xlabel("iteration")
ax.set_ylabel("fine C-point residual")
ax.set_title("two-level MGRIT, Dahlquist z = -1, backward Euler, N = 2048")
ax.legend()
ax.grid(True, which="major", alpha=0.3)
plt.show()

# %%
# Larger coarsening factors make the coarse grid cheaper (:math:`N/m` steps)
# but a worse approximation of :math:`m` fine steps, so the factor grows with
# :math:`m`. For backward Euler with :math:`z < 0` the coarse step is stable
# for every :math:`m`; :doc:`../theory/convergence` shows what happens to
# forward Euler, where it is not.
