"""The 2D heat problem (PETSc linear solves) on its own and under MGRIT."""

import numpy as np
import pytest
from numpy.testing import assert_allclose

pytest.importorskip("petsc4py")

import mgrit_resnet as mr  # noqa: E402

pytestmark = pytest.mark.petsc


def dense_laplacian(nx: int) -> np.ndarray:
    h = 1.0 / (nx + 1)
    second = (np.diag(-2.0 * np.ones(nx)) + np.diag(np.ones(nx - 1), 1) + np.diag(np.ones(nx - 1), -1)) / h**2
    eye = np.eye(nx)
    return np.kron(second, eye) + np.kron(eye, second)


def sequential(problem):
    states = [problem.initial_value()]
    for j in range(1, problem.n_steps + 1):
        states.append(problem.step(states[-1], j - 1, j, 0))
    return np.array(states)


@pytest.mark.parametrize("width", [1, 4])
def test_step_matches_dense_backward_euler(width):
    problem = mr.problems.Heat2D(nx=6, diffusivity=0.7, t_final=0.5, n_steps=20)
    u = problem.initial_value()
    dt = width * problem.dt
    expected = np.linalg.solve(np.eye(36) - dt * 0.7 * dense_laplacian(6), u)
    assert_allclose(problem.step(u, 4, 4 + width, 0), expected, rtol=1e-10)


def test_initial_value_is_row_major():
    problem = mr.problems.Heat2D(nx=5)
    x = problem.x
    u = problem.initial_value().reshape(5, 5)
    i, j = 1, 3
    expected = np.sin(np.pi * x[i]) * np.sin(np.pi * x[j]) + 0.5 * np.sin(4 * np.pi * x[i]) * np.sin(3 * np.pi * x[j])
    assert u[i, j] == pytest.approx(expected)


def test_step_leaves_input_unchanged():
    problem = mr.problems.Heat2D(nx=7, n_steps=10)
    u = problem.initial_value()
    before = u.copy()
    out = problem.step(u, 0, 1, 0)
    again = problem.step(u, 0, 1, 0)
    assert_allclose(u, before, rtol=0, atol=0)
    assert out.dtype == np.float64 and out.shape == (49,)
    assert out is not u and not np.shares_memory(out, again)
    assert_allclose(out, again, rtol=0, atol=0)


def test_mgrit_converges_to_sequential_solution():
    problem = mr.problems.Heat2D(nx=8, t_final=0.5, n_steps=64)
    solver = mr.MGRIT(problem, levels=2, coarsening=4, relax="FCF", tol=1e-9, max_iter=30)
    result = solver.solve()
    assert result.converged
    # Measured: at most about 0.07 per iteration (heat equation, backward Euler, m = 4, FCF).
    assert max(result.convergence_factors) < 0.15
    # Every fine state, relative to the solution's size: the state at t = 0.5 has decayed
    # to 5e-5 and the absolute tol 1e-9 does not pin it down to 1e-8 of its own size.
    expected = sequential(problem)
    assert_allclose(np.array(result.states), expected, rtol=1e-8, atol=1e-8 * np.abs(expected).max())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"nx": 0}, "nx"), ({"diffusivity": -1.0}, "diffusivity"), ({"ksp_rtol": 0.0}, "ksp_rtol"), ({"n_steps": 0}, "n_steps")],
)
def test_bad_input_names_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        mr.problems.Heat2D(**kwargs)
