"""Measured two-level convergence against two-level MGRIT theory.

Dahlquist ``u' = -u`` on [0, 40], N = 2048 fine steps, constant initial
guess: the initial C-point residual is smooth, the regime in which the
worst-case (tight) bound is attained. The first measured factor must agree with
Southworth's tight bound within 5%, and no factor may exceed the exact 2-norm
of the two-level error propagator (Dobrev et al. 2017).
"""

import math

import numpy as np
import pytest

import mgrit_resnet as mr
from mgrit_resnet import theory

N_STEPS, T_FINAL = 2048, 40.0


@pytest.mark.parametrize("scheme", ["backward_euler", "forward_euler"])
@pytest.mark.parametrize("m", [2, 4, 8, 16])
@pytest.mark.parametrize("relax", ["F", "FCF"])
def test_measured_factor_matches_two_level_theory(scheme, m, relax):
    problem = mr.problems.Dahlquist(z=-1.0, t_final=T_FINAL, n_steps=N_STEPS, scheme=scheme)
    result = mr.MGRIT(problem, levels=2, coarsening=m, relax=relax, tol=0.0, max_iter=4, initial_guess="initial_value").solve()
    predicted = theory.predicted_factor(problem, N_STEPS + 1, m, relax)
    measured = result.convergence_factors
    assert abs(measured[0] - predicted) <= 0.05 * predicted, (measured[0], predicted)
    lam, mu = problem.amplification(problem.dt), problem.amplification(m * problem.dt)
    worst = theory.two_level_norm(lam, mu, m, N_STEPS // m, relax)
    assert max(measured) <= worst * (1 + 1e-9)


def test_fcf_beats_f_and_factors_grow_with_coarsening():
    def first_factor(m, relax):
        problem = mr.problems.Dahlquist(z=-1.0, t_final=T_FINAL, n_steps=N_STEPS)
        result = mr.MGRIT(problem, levels=2, coarsening=m, relax=relax, max_iter=1, initial_guess="initial_value").solve()
        return result.convergence_factors[0]

    f = [first_factor(m, "F") for m in (2, 4, 8)]
    fcf = [first_factor(m, "FCF") for m in (2, 4, 8)]
    assert f[0] < f[1] < f[2]
    assert all(b < a for a, b in zip(f, fcf))


def test_propagator_matches_closed_forms():
    lam, mu, m = 0.99, 0.99**4 * 1.01, 4
    for relax in ("F", "FCF", "FCFCF"):
        for n_coarse in (8, 64, 512):
            exact = theory.two_level_norm(lam, mu, m, n_coarse, relax)
            assert exact <= theory.two_level_bound(lam, mu, m, n_coarse, relax, kind="upper") * (1 + 1e-12)
        tight = theory.two_level_bound(lam, mu, m, 512, relax)
        assert exact == pytest.approx(tight, rel=0.01)


def test_propagator_is_nilpotent_with_the_exactness_index():
    lam, mu, m, n_coarse = 0.9 + 0.3j, 0.5 - 0.2j, 3, 12
    for relax, nu in (("F", 0), ("FCF", 1)):
        e = theory.error_propagator(lam, mu, m, n_coarse, relax)
        k = math.ceil(n_coarse / (1 + nu))
        assert np.count_nonzero(np.linalg.matrix_power(e, k)) == 0
        assert np.count_nonzero(np.linalg.matrix_power(e, k - 1)) > 0


def test_predicted_factor_needs_a_scalar_propagator():
    assert theory.predicted_factor(mr.problems.Heat1D(nx=4), 101, 2, "F") is None


def test_bound_arguments_are_checked():
    with pytest.raises(ValueError, match="kind must be one of 'tight', 'upper'"):
        theory.two_level_bound(0.9, 0.8, 2, 10, kind="loose")
    with pytest.raises(ValueError, match="relax must be 'F', 'FCF'"):
        theory.two_level_bound(0.9, 0.8, 2, 10, relax="C")
    with pytest.raises(ValueError, match="m must be an integer >= 2"):
        theory.two_level_norm(0.9, 0.8, 1, 10)
