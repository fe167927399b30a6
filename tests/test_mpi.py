"""The distributed solver against the serial one, at 1, 2, 3 and 4 ranks.

One ``mpiexec`` launch per rank count runs every case of ``mpi_cases``; the
tests compare each with the same case solved in this process.
"""

import json

import numpy as np
import pytest
from conftest import mpirun, reports_per_rank_count
from mpi_cases import CASES, EXACT, run_case

pytestmark = pytest.mark.mpi
RANKS = [1, 2, 3, 4]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return reports_per_rank_count(tmp_path_factory, "tests/mpi/run_cases.py", RANKS)


@pytest.fixture(scope="module")
def serial():
    return {name: run_case(name) for name in CASES}


def _states(encoded):
    return [np.asarray(s[0]) + 1j * np.asarray(s[1]) for s in encoded]


@pytest.mark.parametrize("n", RANKS)
def test_one_level_is_sequential_stepping_to_the_last_bit(runs, n):
    problem = CASES["one_level"][0]()
    expected = [problem.initial_value()]
    for i in range(problem.n_steps):
        expected.append(problem.step(expected[-1], i, i + 1, 0))
    case = runs[n]["cases"]["one_level"]
    assert case["iterations"] == 1 and case["residuals"] == [0.0]
    assert sum(case["steps_per_rank"]) == problem.n_steps, "one sweep, no step spent on the residual"
    for got, want in zip(_states(case["states"]), expected, strict=True):
        np.testing.assert_array_equal(got.real, want)


@pytest.mark.parametrize("n", RANKS)
@pytest.mark.parametrize("relax, iterations", [("F", EXACT["n_coarse"]), ("FCF", EXACT["n_coarse"] // 2)])
def test_two_level_exactness(runs, n, relax, iterations):
    case = runs[n]["cases"][f"exact_{relax}"]
    residuals = case["residuals"]
    assert len(residuals) == iterations
    initial = runs[n]["cases"][f"exact_{relax}"]["initial_residual"]
    assert residuals[-1] == 0.0, "exact after N_c (F) or N_c / 2 (FCF) iterations"
    assert min(residuals[:-1]) > 1e-10 * initial, "and not before"


@pytest.mark.parametrize("n", RANKS)
@pytest.mark.parametrize("name", list(CASES))
def test_residual_history_and_solution_match_serial(runs, serial, n, name):
    solver, result = serial[name]
    case = runs[n]["cases"][name]
    assert case["ranks"] == n
    assert case["iterations"] == result.iterations
    assert case["converged"] == result.converged
    assert case["points_per_level"] == result.points_per_level
    assert len(case["steps_per_rank"]) == n and len(case["bytes_per_rank"]) == n
    np.testing.assert_allclose(case["residuals"], result.residuals, rtol=1e-12, atol=0)
    np.testing.assert_allclose(np.array(_states(case["states"])).squeeze(), np.array(result.states).squeeze(), rtol=1e-12, atol=1e-15)
    if n > 1:
        assert sum(case["bytes_per_rank"]) > 0
    assert sum(case["steps_per_rank"]) >= sum(result.steps_per_rank) - 1


@pytest.mark.parametrize("n", RANKS)
@pytest.mark.parametrize("name", ["heat_V3", "heat_F3_list", "dahlquist_complex_skip"])
def test_a_restart_from_the_c_points_alone_is_the_same_solve(runs, n, name):
    case = runs[n]["restart"][name]
    factory, options = CASES[name]
    m = options["coarsening"][0] if isinstance(options["coarsening"], list) else options["coarsening"]
    # a coarse pass first (skip_first_down) reads no fine state of a warm start: none is kept
    assert case["kept_points"] == ([] if options.get("skip_first_down") else list(range(0, factory().n_steps + 1, m)))
    assert case["kept"]["initial_residual"] == case["full"]["initial_residual"]
    assert case["kept"]["residuals"] == case["full"]["residuals"]
    assert case["kept"]["states"] == case["full"]["states"]


@pytest.mark.parametrize("n", RANKS)
@pytest.mark.parametrize("key", ["coarsening", "levels", "relax", "cycle"])
def test_bad_input_same_error_on_every_rank(runs, n, key):
    messages = runs[n]["errors"][key]
    assert len(messages) == n and len(set(messages)) == 1
    assert messages[0].startswith(f"ValueError: {key} must be")


def test_more_ranks_than_points_is_an_error(runs):
    messages = runs[4]["errors"]["ranks"]
    assert len(set(messages)) == 1
    assert "ranks must be between 1 and the number of time points (3)" in messages[0]


@pytest.mark.slow
@pytest.mark.parametrize("n", [3, 4])
def test_large_multilevel_heat_matches_serial(tmp_path, n):
    """Heat 1D, 4097 points, 5 levels, F-cycles: the history at n ranks equals the serial one."""
    out = tmp_path / "r.json"
    options = ["--set", "problem.n_steps=4096", "--set", "mgrit.levels=5", "--set", "mgrit.cycle='F'", "--json", str(out)]
    mpirun(n, ["python", "-m", "mgrit_resnet", "solve", "examples/heat1d.toml", *options])
    import mgrit_resnet as mr

    cfg = mr.load_config("examples/heat1d.toml", {"problem.n_steps": 4096, "mgrit.levels": 5, "mgrit.cycle": "F"})
    expected = mr.MGRIT(mr.problems.from_config(cfg.problem), **cfg.mgrit.as_dict()).solve()
    data = json.loads(out.read_text())
    assert data["converged"] and data["iterations"] == expected.iterations
    np.testing.assert_allclose(data["residuals"], expected.residuals, rtol=1e-12)


@pytest.fixture(scope="module")
def torch_runs(tmp_path_factory):
    def run(ranks):
        path = tmp_path_factory.mktemp("torch") / f"torch_{ranks}.json"
        mpirun(ranks, ["python", "tests/mpi/torch_states.py", str(path)])
        return json.loads(path.read_text())

    return {ranks: run(ranks) for ranks in (1, 3, 4)}


@pytest.mark.parametrize("n", [3, 4])
def test_torch_tensor_states_match_serial(torch_runs, n):
    """Torch states travel through the same buffers; histories and states equal the 1-rank run."""
    serial, parallel = torch_runs[1], torch_runs[n]
    assert serial["converged"] and parallel["iterations"] == serial["iterations"]
    np.testing.assert_allclose(parallel["residuals"], serial["residuals"], rtol=1e-12)
    np.testing.assert_allclose(parallel["states"], serial["states"], rtol=1e-13)
    assert min(parallel["bytes_per_rank"][:-1]) > 0
