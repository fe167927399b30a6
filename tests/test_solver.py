"""Serial behaviour of the MGRIT solver, and one solver reused for many problems (ranks as threads)."""

import math

import numpy as np
import pytest

import mgrit_resnet as mr
from mgrit_resnet.comm.counting import CountingBackend
from mgrit_resnet.comm.threads import ThreadWorld


def heat(n_steps=64, nx=12):
    return mr.problems.Heat1D(nx=nx, t_final=0.5, n_steps=n_steps)


def sequential(problem):
    states = [problem.initial_value()]
    for i in range(problem.n_steps):
        states.append(problem.step(states[-1], i, i + 1, 0))
    return states


@pytest.mark.parametrize("cycle", ["V", "F"])
@pytest.mark.parametrize("levels", [2, 3, 5])
def test_converges_to_the_sequential_solution(cycle, levels):
    problem = heat(n_steps=81)
    result = mr.MGRIT(problem, levels=levels, coarsening=3, cycle=cycle, tol=1e-12, max_iter=30).solve()
    assert result.converged and result.residuals[-1] <= 1e-12
    np.testing.assert_allclose(np.array(result.states), np.array(sequential(problem)), rtol=0, atol=1e-11)


def test_f_cycle_equals_v_cycle_on_two_levels_and_helps_on_more():
    def run(levels, cycle):
        return mr.MGRIT(heat(n_steps=256), levels=levels, coarsening=2, cycle=cycle, tol=1e-10, max_iter=40).solve()

    assert run(2, "F").residuals == run(2, "V").residuals
    f_cycle, v_cycle = run(5, "F"), run(5, "V")
    assert all(f < v / 2 for f, v in zip(f_cycle.residuals[:4], v_cycle.residuals[:4]))


def test_two_level_exactness_serial():
    """The residual is exactly zero after ceil(N_c / (1 + nu)) iterations, and not before (N_c = 10)."""
    problem = mr.problems.Dahlquist(z=3j, t_final=6.0, n_steps=40, scheme="backward_euler")
    for relax, expected in (("F", 10), ("FCF", 5), ("FCFCF", 4)):
        result = mr.MGRIT(problem, levels=2, coarsening=4, relax=relax, tol=0.0, max_iter=20).solve()
        assert result.converged and result.iterations == expected
        assert result.residuals[-1] == 0.0
        assert min(result.residuals[:-1]) > 1e-6 * result.initial_residual


def test_warm_start_from_a_converged_solution_needs_no_iteration():
    problem = heat()
    solver = mr.MGRIT(problem, levels=3, tol=1e-10)
    first = solver.solve()
    again = solver.solve(initial_guess=first.states)
    assert again.iterations == 0 and again.converged and again.residuals == []
    assert again.initial_residual <= 1e-10


def test_restart_states_keep_what_a_warm_start_reads():
    problem = mr.problems.Heat1D(nx=8, t_final=1.0, n_steps=48)
    options = dict(levels=3, coarsening=4, relax="FCF", tol=0.0, max_iter=1)
    first = mr.MGRIT(problem, **options).solve()
    kept = mr.MGRIT(problem, **options).restart_states(first)
    assert [i for i, s in enumerate(kept) if s is not None] == list(range(0, 49, 4))
    full = mr.MGRIT(problem, **options).solve(initial_guess=first.states)
    restarted = mr.MGRIT(problem, **options).solve(initial_guess=kept)
    assert restarted.residuals == full.residuals and restarted.initial_residual == full.initial_residual
    np.testing.assert_array_equal(np.array(restarted.states), np.array(full.states))
    # Taken as it is, a warm start reads its F-points too: all are kept.
    as_is = mr.MGRIT(problem, **options, relax_warm_start=False)
    assert all(s is not None for s in as_is.restart_states(first))


def test_warm_start_must_match_the_owned_points():
    with pytest.raises(ValueError, match=r"initial_guess must hold one state per owned point \(65 on rank 0\); got 3"):
        mr.MGRIT(heat()).solve(initial_guess=[np.zeros(12)] * 3)


def test_initial_guesses_and_skip_first_down():
    problem = heat(n_steps=128)
    options = dict(levels=3, coarsening=4, tol=1e-10, max_iter=30)
    zero = mr.MGRIT(problem, **options).solve()
    value = mr.MGRIT(problem, initial_guess="initial_value", **options).solve()
    coarse = mr.MGRIT(problem, initial_guess="sequential_coarse", **options).solve()
    skip = mr.MGRIT(problem, skip_first_down=True, **options).solve()
    assert coarse.initial_residual < min(value.initial_residual, zero.initial_residual) / 5
    assert skip.initial_residual is None and math.isnan(skip.convergence_factors[0])
    # Skipping the first down-cycle makes iteration 1 the sequential-coarse pass.
    assert skip.residuals[0] == pytest.approx(coarse.initial_residual, rel=1e-14)
    assert skip.iterations == coarse.iterations + 1
    for result in (zero, value, coarse, skip):
        assert result.converged


def test_one_coarse_pass_with_a_lagged_right_hand_side_is_parareal_with_the_last_solves_fine_values():
    """``U_c = G(U_{c-1}) + F(V_{c-1}) - G(V_{c-1})`` with ``V`` the last solve's states: written out here by hand."""
    old, new = (mr.problems.Dahlquist(z=z, t_final=4.0, n_steps=48, scheme="backward_euler") for z in (-1.0 + 2j, -1.1 + 2.1j))
    options = dict(levels=3, coarsening=4, relax="F", skip_first_down=True, max_iter=1, tol=0.0)
    first = mr.MGRIT(old, **options).solve(keep_coarse_rhs=True)
    assert [i for i, g in enumerate(first.coarse_rhs) if g is not None] == list(range(4, 49, 4))
    for c in range(4, 49, 4):  # the right-hand side: m fine steps from V_{c-4} against one coarse step of the first coarse level
        v = first.states[c - 4]
        fine = v
        for i in range(c - 4, c):
            fine = old.step(fine, i, i + 1, 0)
        assert first.coarse_rhs[c] == pytest.approx(fine - old.step(v, c - 4, c, 1), rel=1e-12)
    second = mr.MGRIT(new, **options).solve([None] * 49, coarse_rhs=first.coarse_rhs, keep_coarse_rhs=True)
    expected = [new.initial_value()]
    for c in range(4, 49, 4):
        expected.append(new.step(expected[-1], c - 4, c, 1) + first.coarse_rhs[c])
    np.testing.assert_allclose([second.states[c] for c in range(0, 49, 4)], expected, rtol=1e-12)
    for i in range(49):  # the F-points follow the new C-points
        if i % 4:
            assert second.states[i] == pytest.approx(new.step(second.states[i - 1], i - 1, i, 0), rel=1e-13)
    for c in range(4, 49, 4):  # its own right-hand side, taken from the chain without a coarse step: the same numbers
        v = second.states[c - 4]
        assert second.coarse_rhs[c] == pytest.approx(new.step(second.states[c - 1], c - 1, c, 0) - new.step(v, c - 4, c, 1), rel=1e-12)
    assert second.steps_per_rank == [12 + 36 + 12], "the chain's 12 coarse steps, 36 F-point steps and 12 probes: none redone"


def test_a_second_iteration_after_the_lagged_pass_is_parareal_and_makes_no_coarse_step_twice():
    """Two levels, F-relaxation: ``U^2_c = G(U^2_{c-1}) + F(U^1_{c-1}) - G(U^1_{c-1})`` after the lagged pass ``U^1``, by hand.

    The second iteration's FAS right-hand side comes from the chain the pass left
    (``G(U^1_{c-1}) = U^1_c - g_c``), so no coarse step of the pass is made again.
    """
    old, new = (mr.problems.Dahlquist(z=z, t_final=4.0, n_steps=48, scheme="backward_euler") for z in (-1.0 + 2j, -1.1 + 2.1j))
    options = dict(levels=2, coarsening=4, relax="F", skip_first_down=True, tol=0.0)
    first = mr.MGRIT(old, max_iter=1, **options).solve(keep_coarse_rhs=True)
    result = mr.MGRIT(new, max_iter=2, **options).solve([None] * 49, coarse_rhs=first.coarse_rhs, keep_coarse_rhs=True)

    def fine(u, c):  # m fine steps from the C-point before c
        for i in range(c - 4, c):
            u = new.step(u, i, i + 1, 0)
        return u

    def coarse(u, c):
        return new.step(u, c - 4, c, 1)

    u1 = [new.initial_value()]
    for c in range(4, 49, 4):
        u1.append(coarse(u1[-1], c) + first.coarse_rhs[c])
    u2 = [new.initial_value()]
    for k, c in enumerate(range(4, 49, 4)):
        u2.append(coarse(u2[-1], c) + fine(u1[k], c) - coarse(u1[k], c))
    np.testing.assert_allclose([result.states[c] for c in range(0, 49, 4)], u2, rtol=1e-12)
    for c in range(4, 49, 4):  # the kept right-hand side at the final states, again from the chain
        v = result.states[c - 4]
        assert result.coarse_rhs[c] == pytest.approx(fine(v, c) - coarse(v, c), rel=1e-11)
    per_iteration = 36 + 12  # the F-points and the probes
    assert result.steps_per_rank == [12 + per_iteration + 12 + per_iteration], "the pass's and the cycle's 12 coarse steps, none redone"
    assert len(result.residuals) == 2 and result.residuals[1] < result.residuals[0]


@pytest.mark.parametrize("lagged", [False, True])
@pytest.mark.parametrize("levels", [2, 3])
def test_iterations_after_a_coarse_pass_converge_to_the_sequential_solution(levels, lagged):
    """Every cycle after the pass (its right-hand side from the chain on two levels, by restriction on more) converges."""
    problem = heat(n_steps=96)
    options = dict(levels=levels, coarsening=4, relax="F", skip_first_down=True)
    rhs = mr.MGRIT(problem, max_iter=1, tol=0.0, **options).solve(keep_coarse_rhs=True).coarse_rhs if lagged else None
    result = mr.MGRIT(problem, tol=1e-11, max_iter=40, **options).solve([None] * 97 if lagged else None, coarse_rhs=rhs)
    assert result.converged and result.iterations >= 3
    np.testing.assert_allclose(np.array(result.states), np.array(sequential(problem)), rtol=0, atol=1e-10)


def test_a_lagged_coarse_pass_keeps_a_converged_warm_start_converged():
    problem = heat(n_steps=96)
    converged = mr.MGRIT(problem, levels=3, coarsening=4, skip_first_down=True, tol=1e-12, max_iter=40).solve(keep_coarse_rhs=True)
    one_pass = mr.MGRIT(problem, levels=3, coarsening=4, relax="F", skip_first_down=True, max_iter=1, tol=0.0)
    lagged = one_pass.solve(one_pass.restart_states(converged), coarse_rhs=converged.coarse_rhs)
    plain = one_pass.solve(one_pass.restart_states(converged))
    exact = np.array(sequential(problem))
    assert np.abs(np.array(lagged.states) - exact).max() <= 1e-10
    assert np.abs(np.array(plain.states) - exact).max() > 1e-4, "the plain pass moves to the coarse propagator's solution"
    assert all(s is None for s in one_pass.restart_states(converged)), "the pass reads no fine state: none is kept"
    assert mr.MGRIT(problem, levels=3, max_iter=1).solve(keep_coarse_rhs=True).coarse_rhs is None, "only with skip_first_down"
    with pytest.raises(ValueError, match=r"coarse_rhs needs one entry per owned point \(97 on rank 0\); got 3"):
        one_pass.solve(coarse_rhs=[None] * 3)


def test_skip_first_down_relaxes_the_f_points_of_a_warm_start_taken_as_it_is():
    problem = heat(n_steps=48)
    options = dict(levels=2, coarsening=4, relax="F", skip_first_down=True, max_iter=1, tol=0.0, relax_warm_start=False)
    stale = [np.full(12, 7.0)] * 49
    result = mr.MGRIT(problem, **options).solve(stale)
    for i in range(1, 49):
        if i % 4:
            np.testing.assert_allclose(result.states[i], problem.step(result.states[i - 1], i - 1, i, 0), rtol=1e-13)


def test_relative_tolerance_and_max_iter():
    problem = heat()
    rel = mr.MGRIT(problem, tol=1e-6, tol_kind="relative", max_iter=50).solve()
    assert rel.residuals[-1] <= 1e-6 * rel.initial_residual < rel.residuals[-2]
    capped = mr.MGRIT(problem, tol=0.0, max_iter=3).solve()
    assert capped.iterations == 3 and not capped.converged and len(capped.residuals) == 3
    none = mr.MGRIT(problem, max_iter=0).solve()
    assert none.iterations == 0 and none.residuals == [] and none.initial_residual > 0


def test_weighted_c_relaxation_changes_the_iteration():
    problem = heat()
    plain = mr.MGRIT(problem, tol=0.0, max_iter=4).solve()
    weighted = mr.MGRIT(problem, c_weight=1.3, tol=0.0, max_iter=4).solve()
    assert plain.residuals != weighted.residuals
    assert weighted.residuals[-1] < weighted.residuals[0]


def test_complex_dahlquist_and_trapezoid():
    problem = mr.problems.Dahlquist(z=-0.5 + 4j, t_final=3.0, n_steps=96, scheme="trapezoid")
    result = mr.MGRIT(problem, levels=3, coarsening=4, tol=1e-12, max_iter=40).solve()
    assert result.converged
    assert result.states[-1].dtype == np.complex128
    assert result.states[-1][0] == pytest.approx(problem.amplification(problem.dt) ** 96, rel=1e-10)


def test_result_records_work_and_json():
    problem = heat(n_steps=64)
    result = mr.MGRIT(problem, levels=2, coarsening=4, relax="F", tol=1e-10).solve()
    data = result.to_json()
    assert data["points_per_level"] == [65, 17] and data["ranks"] == 1
    assert data["bytes_per_rank"] == [0]
    # Per iteration: 48 F-steps, 16 probe steps, 16 coarse right-hand-side steps, 16 coarse solve steps.
    assert data["steps_per_rank"] == [(48 + 16) * (result.iterations + 1) + 32 * result.iterations]
    assert len(data["convergence_factors"]) == len(data["residuals"]) == data["iterations"]
    assert data["wall_time"] > 0


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(relax="FC"), ValueError, "relax must be 'F', 'FCF', 'FCFCF'"),
        (dict(relax=["F"], levels=3), ValueError, "relax must be a single value or a list of at least 2 entries"),
        (dict(cycle="W"), ValueError, "cycle must be one of 'V', 'F'; got 'W'"),
        (dict(tol=-1.0), ValueError, "tol must be a real number >= 0.0"),
        (dict(tol_kind="rel"), ValueError, "tol_kind must be one of 'absolute', 'relative'"),
        (dict(max_iter=-1), ValueError, "max_iter must be an integer >= 0"),
        (dict(c_weight=0.0), ValueError, "c_weight must be a real number > 0"),
        (dict(initial_guess="random"), ValueError, "initial_guess must be one of 'zero', 'initial_value', 'sequential_coarse'"),
        (dict(skip_first_down="yes"), TypeError, "skip_first_down must be true or false"),
        (dict(coarsening=1), ValueError, "coarsening must be an integer >= 2"),
        (dict(levels=0), ValueError, "levels must be an integer >= 1"),
    ],
)
def test_bad_solver_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        mr.MGRIT(heat(), **kwargs)


def test_bad_problem_options():
    with pytest.raises(ValueError, match="scheme must be one of 'forward_euler', 'backward_euler', 'trapezoid'"):
        mr.problems.Dahlquist(scheme="rk4")
    with pytest.raises(ValueError, match="n_steps must be an integer >= 1"):
        mr.problems.Heat1D(n_steps=0)
    with pytest.raises(ValueError, match="t_final must be a real number > 0"):
        mr.problems.Dahlquist(t_final=0.0)
    with pytest.raises(TypeError, match="z must be a real or complex number"):
        mr.problems.Dahlquist(z="1")


def test_callback_sees_every_residual():
    seen = []
    result = mr.MGRIT(heat(), tol=1e-10).solve(callback=lambda k, r: seen.append((k, r)))
    assert seen == [(0, result.initial_residual), *enumerate(result.residuals, start=1)]


def test_a_warm_start_taken_as_it_is_skips_the_initial_f_relaxation():
    problem = mr.problems.Heat1D(nx=8, t_final=1.0, n_steps=48)
    options = dict(levels=2, coarsening=4, relax="F", tol=0.0, max_iter=1)
    warm = mr.MGRIT(problem, **options).solve().states
    relaxed = mr.MGRIT(problem, **options).solve(initial_guess=warm)
    as_is = mr.MGRIT(problem, **options, relax_warm_start=False).solve(initial_guess=warm)
    f_points = 48 - 48 // 4
    assert relaxed.steps_per_rank[0] - as_is.steps_per_rank[0] == f_points
    assert as_is.residuals[0] < as_is.initial_residual, "still an MGRIT iteration"
    cold = mr.MGRIT(problem, **options, relax_warm_start=False).solve()
    assert cold.steps_per_rank == mr.MGRIT(problem, **options).solve().steps_per_rank, "no effect without a warm start"


# ---------------------------------------------------------------------- one solver, many problems
def test_a_problem_given_per_solve_equals_a_fresh_solver_bitwise():
    options = dict(levels=3, coarsening=4, tol=1e-10, max_iter=20)
    first, other = heat(n_steps=64), mr.problems.Heat1D(nx=12, diffusivity=0.3, t_final=0.5, n_steps=64)
    solver = mr.MGRIT(first, **options)
    solver.solve()
    per_call, fresh = solver.solve(problem=other), mr.MGRIT(other, **options).solve()
    assert per_call.residuals == fresh.residuals and per_call.steps_per_rank == fresh.steps_per_rank
    np.testing.assert_array_equal(np.array(per_call.states), np.array(fresh.states))
    again = solver.solve()  # the problem given at construction is still the default
    assert again.residuals == mr.MGRIT(first, **options).solve().residuals


def test_a_problem_given_per_solve_at_three_ranks():
    options = dict(levels=3, coarsening=2, tol=1e-11, max_iter=20)
    problems = [heat(n_steps=37), mr.problems.Heat1D(nx=12, diffusivity=0.3, t_final=0.5, n_steps=37)]

    def program(backend):
        solver = mr.MGRIT(problems[0], comm=backend, **options)
        solver.solve()
        per_call = solver.solve(problem=problems[1])
        fresh = mr.MGRIT(problems[1], comm=backend, **options).solve()
        return per_call.residuals == fresh.residuals and all(np.array_equal(a, b) for a, b in zip(per_call.states, fresh.states))

    assert all(ThreadWorld(3).run(program))


def test_a_solver_built_for_a_number_of_steps():
    solver = mr.MGRIT(n_steps=64, levels=2, tol=1e-10)
    assert solver.problem is None and solver.n_steps == 64
    assert solver.solve(problem=heat(n_steps=64)).converged
    with pytest.raises(ValueError, match=r"built for 64 steps without a problem: pass solve\(problem=...\)"):
        solver.solve()
    with pytest.raises(ValueError, match="the problem has n_steps = 32; this solver is built for n_steps = 64"):
        mr.MGRIT(heat(n_steps=64)).solve(problem=heat(n_steps=32))
    with pytest.raises(TypeError, match="MGRIT needs a problem, or n_steps"):
        mr.MGRIT()
    with pytest.raises(ValueError, match="n_steps = 10 differs from the problem's n_steps = 64"):
        mr.MGRIT(heat(n_steps=64), n_steps=10)


def test_levels_and_channels_are_kept_while_the_states_keep_their_shape():
    def channels(solver):
        return [channel for level in solver._levels for channel in level.channels.values()]

    def program(backend):
        solver = mr.MGRIT(heat(nx=12), comm=backend, levels=3, coarsening=2, tol=1e-10)
        solver.solve()
        levels, before = solver._levels, channels(solver)
        send = [c._send_buffer for c in before]
        solver.solve(problem=mr.problems.Heat1D(nx=12, diffusivity=0.5, t_final=0.5, n_steps=64))
        kept = solver._levels is levels and all(a is b for a, b in zip(channels(solver), before, strict=True))
        kept_send = all(a is b for a, b in zip(send, (c._send_buffer for c in before)))
        solver.solve(problem=heat(nx=8))
        rebuilt = solver._levels is not levels and not any(a is b for a, b in zip(channels(solver), before))
        return kept, kept_send, rebuilt

    assert ThreadWorld(2).run(program) == [(True, True, True)] * 2


class KeepsItsInputs:
    """Dahlquist stepping that keeps every state it stepped from, as the network's forward problem does."""

    def __init__(self, z):
        self.inner = mr.problems.Dahlquist(z=z, t_final=2.0, n_steps=24, scheme="backward_euler")
        self.n_steps = self.inner.n_steps
        self.inputs = []

    def initial_value(self):
        return self.inner.initial_value()

    def step(self, u, start, stop, level):
        self.inputs.append(u)
        return self.inner.step(u, start, stop, level)


def test_a_received_state_a_problem_keeps_outlives_the_solve():
    """Within a solve a receive buffer is reused (the problem keeps the last value it held); the next solve receives elsewhere."""

    def program(backend):
        solver = mr.MGRIT(n_steps=24, comm=backend, levels=2, coarsening=4, tol=0.0, max_iter=2)
        first = KeepsItsInputs(-1.0)
        solver.solve(problem=first)
        held = [u.copy() for u in first.inputs]
        solver.solve(problem=KeepsItsInputs(-3.0))  # receives through the same channels
        return all(np.array_equal(u, copy) for u, copy in zip(first.inputs, held, strict=True))

    assert all(ThreadWorld(3).run(program))


def test_the_end_of_a_solve_is_one_buffer_collective():
    def program(backend):
        counting = CountingBackend(backend)
        result = mr.MGRIT(heat(n_steps=48), comm=counting, levels=2, coarsening=4, tol=0.0, max_iter=3).solve()
        return dict(counting.calls), result

    for calls, result in ThreadWorld(3).run(program):
        # one allreduce per residual (the initial one and three), one gather of the statistics, nothing pickled
        assert calls["allreduce_sum"] == 4 and calls["allgather_buffer"] == 1
        assert calls.get("allgather", 0) == calls.get("gather", 0) == 0
        assert len(result.steps_per_rank) == len(result.bytes_per_rank) == 3
        assert all(isinstance(v, int) for v in result.steps_per_rank + result.bytes_per_rank)
        assert isinstance(result.wall_time, float) and result.bytes_per_rank[-1] == 0 < result.bytes_per_rank[0]


def test_from_config_is_the_constructor_with_the_section():
    cfg = mr.load_config(overrides={"problem.kind": "heat1d", "problem.n_steps": 48, "problem.nx": 8, "mgrit.levels": 3})
    problem = mr.problems.from_config(cfg.problem)
    built = mr.MGRIT.from_config(problem, cfg.mgrit).solve()
    assert built.residuals == mr.MGRIT(problem, **cfg.mgrit.as_dict()).solve().residuals
    capped = mr.MGRIT.from_config(problem, {"levels": 2}, max_iter=1, tol=0.0)
    assert capped.solve().iterations == 1 and capped.hierarchy.n_levels == 2
    with pytest.raises(ValueError, match="unknown \\[mgrit\\] key 'level'; allowed keys: levels, coarsening"):
        mr.MGRIT.from_config(problem, {"level": 2})
