"""Virtual clock, threads-as-ranks simulation, performance model and the ``predict`` verb."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, mpirun, reports_per_rank_count

import mgrit_resnet as mr
from mgrit_resnet.cli import main
from mgrit_resnet.cli.predict import parse_ranks
from mgrit_resnet.comm.clocked import ClockedBackend, VirtualClock
from mgrit_resnet.comm.threads import SimulationError, ThreadWorld
from mgrit_resnet.studies import calibrate, perfmodel, schedule

TWO_LEVEL = dict(levels=2, coarsening=2, min_coarse=2, relax="F", cycle="V", initial_guess="zero")


# ---------------------------------------------------------------------- virtual clock
@pytest.fixture(scope="module")
def clock_reports(tmp_path_factory):
    return reports_per_rank_count(tmp_path_factory, "tests/mpi/virtual_clock.py", [1, 2, 3])


def test_virtual_clock_gives_the_known_answer_on_a_two_rank_schedule(clock_reports):
    report = clock_reports[2]["synthetic"]
    alpha, beta, nbytes = 0.25, 1e-6, 8000
    received = max(0.02, 0.10 + alpha + beta * nbytes)  # rank 1 waits for rank 0's message ...
    expected_before = [0.10, received + 0.05]  # ... its 0.3 s asleep in between is not work
    assert report["before"] == pytest.approx(expected_before, abs=0.01)
    # The allreduce ends both clocks at the later one plus one round of alpha + beta * 8 bytes.
    assert report["after"] == pytest.approx([received + 0.05 + alpha + 8 * beta] * 2, abs=0.01)
    assert report["virtual_time"] == pytest.approx(max(report["after"]), abs=0.01)  # plus the CPU time of reading the clocks


def test_a_clocked_solve_keeps_its_numbers_and_bytes(clock_reports):
    for ranks, report in clock_reports.items():
        assert report["clocked"] == report["plain"], ranks
        assert report["bytes"][0] == report["bytes"][1], ranks
        assert report["clock"] > 0


def test_charged_clock_follows_the_rule_exactly():
    """The same synthetic schedule in simulated ranks with charged costs gives the answer to round-off."""
    alpha, beta = 0.25, 1e-6

    def program(backend):
        clocked = ClockedBackend(backend, VirtualClock(alpha, beta, measure_cpu=False))
        buffer = np.zeros(1000)
        if backend.rank == 0:
            clocked.clock.charge(0.10)
            clocked.isend(buffer, 1, 5).Wait()
        else:
            clocked.clock.charge(0.02)
            clocked.irecv(buffer, 0, 5).Wait()
            clocked.clock.charge(0.05)
        before = clocked.clock.time
        clocked.allreduce_sum(1.0)
        return before, clocked.clock.time

    (b0, a0), (b1, a1) = ThreadWorld(2).run(program)
    assert (b0, b1) == (0.10, 0.10 + alpha + beta * 8000 + 0.05)
    assert a0 == a1 == b1 + alpha + 8 * beta


def test_clock_rejects_negative_network():
    with pytest.raises(ValueError, match="alpha and beta"):
        VirtualClock(-1.0, 0.0)


# ---------------------------------------------------------------------- simulation
@pytest.mark.parametrize("ranks", [1, 2, 3, 5])
def test_simulated_ranks_run_the_solver_as_mpi_does(ranks):
    problem = mr.problems.Heat1D(nx=8, n_steps=40)
    reference = mr.MGRIT(problem, levels=3, coarsening=2, tol=1e-10).solve()

    def program(backend):
        result = mr.MGRIT(mr.problems.Heat1D(nx=8, n_steps=40), levels=3, coarsening=2, tol=1e-10, comm=backend).solve()
        return result.residuals, result.steps_per_rank

    results = ThreadWorld(ranks).run(program)
    residuals, steps = results[0]
    assert len(residuals) == len(reference.residuals)
    np.testing.assert_allclose(residuals, reference.residuals, rtol=1e-12, atol=1e-300)
    assert sum(steps) >= sum(reference.steps_per_rank) and len(steps) == ranks


def test_a_failing_simulated_rank_stops_all_of_them():
    def program(backend):
        if backend.rank == 1:
            raise KeyError("rank 1 fails")
        backend.irecv(np.zeros(1), 1, 0).Wait()  # would wait for ever

    with pytest.raises(KeyError, match="rank 1 fails"):
        ThreadWorld(3).run(program)


def test_a_deadlock_is_reported():
    world = ThreadWorld(2, deadlock_seconds=1.0)
    with pytest.raises(SimulationError, match="waited"):
        world.run(lambda backend: backend.irecv(np.zeros(1), 1 - backend.rank, 0).Wait())


# ---------------------------------------------------------------------- model
def test_model_equals_the_hand_computed_critical_path_of_a_two_level_iteration():
    """Two ranks, 5 points (rank 0: 0-1, rank 1: 2-4), coarsening 2, F-relaxation, one V-cycle.

    Fine steps cost c, coarse steps d, a message alpha. Rank 1 is on the critical path:
    F-relax (c) and its ghost from rank 0 (c + alpha), probe (2c); the residual
    allreduce (+alpha); restriction (ghost: +alpha, two coarse steps for the FAS
    right-hand side: 2d); the coarsest solve (2d); F-relax (c), probe (2c); the residual
    allreduce (+alpha); one gather of the result's statistics (+alpha):
    6c + 4d + 5 alpha.
    """
    c, d, alpha = 1.0, 10.0, 100.0
    time, calls = perfmodel.simulate_solve(4, TWO_LEVEL, 2, perfmodel.StepCosts(forward=[c, d]), (alpha, 0.0), iterations=1)
    assert time == 6 * c + 4 * d + 5 * alpha
    assert calls == {0: 8, 1: 4}  # fine: rank 0 relaxes point 1 twice, rank 1 steps 3 and probes 2, 4 twice


def test_model_of_a_pipelined_sequential_sweep():
    """One level, 9 points on 2 ranks (0-3, 4-8): 3 steps, a message, 5 steps, then one gather of the statistics (3 float64)."""
    c, alpha, beta, nbytes = 2.0, 5.0, 0.5, 16
    costs = perfmodel.StepCosts(forward=[c], state_bytes=nbytes)
    time, _ = perfmodel.simulate_solve(8, dict(levels=1), 2, costs, (alpha, beta), iterations=1)
    assert time == 8 * c + (alpha + beta * nbytes) + (alpha + beta * 24)


@pytest.mark.parametrize("measured", [120.0, 44.0])  # more than the timed parts explain, and less
def test_calibration_fit_reproduces_the_one_rank_time(measured):
    costs = perfmodel.StepCosts(forward=[1.0, 4.0])
    _, calls = perfmodel.simulate_solve(8, TWO_LEVEL, 1, costs, (0.0, 0.0), iterations=2)
    charged = calls[0] * 1.0 + calls[1] * 4.0
    calibrate._fit_to_whole(measured, costs, [(calls, "forward")])
    time, _ = perfmodel.simulate_solve(8, TWO_LEVEL, 1, costs, (0.0, 0.0), iterations=2)
    assert time == pytest.approx(measured, rel=1e-12)
    assert (measured > charged) == (measured == 120.0)
    if measured > charged:  # bookkeeping on every step, the steps as timed
        assert costs.forward == [1.0, 4.0] and costs.scale == 1.0
        assert costs.overhead == pytest.approx((measured - charged) / sum(calls.values()))
    else:  # the timed parts shrunk together, their ratio kept
        assert costs.overhead == 0.0 and costs.scale == pytest.approx(measured / charged)
        assert costs.forward[1] / costs.forward[0] == pytest.approx(4.0)


def test_adjoint_partition_does_not_chain_the_ranks():
    """Blocks that start inside F-intervals relax their own intervals without waiting for each other."""
    from mgrit_resnet.nn.partition import layer_partition

    depth, ranks = 256, 64
    _, adj, _ = layer_partition(depth, ranks)
    options = dict(levels=2, coarsening=4, relax="F", min_coarse=2)

    def relax_only(partition):
        def program(backend):
            clocked = ClockedBackend(backend, VirtualClock(0.0, 0.0, measure_cpu=False))
            problem = schedule._StandIn(depth, clocked.clock, [1.0], 0.0, backend.rank)
            solver = mr.MGRIT(problem, comm=clocked, partition=partition, **options)
            solver._active = problem  # what solve() sets: one F-relaxation alone, below
            solver._prepare_levels(np.ones(1))
            solver._set_initial_guess(solver._levels[0], np.ones(1), None)
            solver._f_relax(solver._levels[0])
            return clocked.clock.time

        return max(ThreadWorld(ranks).run(program))

    assert adj[1] % 4 != 0  # the blocks really start inside F-intervals
    assert relax_only(adj) <= 4  # one F-interval's worth of steps, not a chain over 64 ranks


@pytest.mark.parametrize("depth, ranks", [(64, 2), (64, 4), (256, 3), (13, 3), (7, 4), (5, 1), (100, 7)])
def test_layer_partition_splits_the_layers_evenly_and_keeps_each_adjoint_step_on_its_layers_rank(depth, ranks):
    from mgrit_resnet.nn.partition import layer_partition, owner_of_layer

    fwd, adj, layers = layer_partition(depth, ranks)
    counts = [b - a for a, b in zip(layers, layers[1:])]
    assert sum(counts) == depth and max(counts) - min(counts) <= 1 and min(counts) >= 1
    assert fwd[0] == 0 and fwd[-1] == depth + 1 and adj[0] == 0 and adj[-1] == depth + 1
    for rank in range(ranks):
        for n in range(max(fwd[rank], 1), fwd[rank + 1]):  # the forward step into point n is layer n - 1
            assert owner_of_layer(n - 1, layers) == rank
        q = ranks - 1 - rank  # the adjoint runs over the ranks in reverse order
        for t in range(max(adj[q], 1), adj[q + 1]):  # the adjoint step into point t is layer depth - t
            assert owner_of_layer(depth - t, layers) == rank


def test_data_groups_add_one_gradient_allreduce():
    """D groups run the same schedule at once, then sum gradients: ceil(log2 D) rounds of alpha + beta * bytes."""
    options = dict(levels=2, coarsening=2, min_coarse=2, relax="F", cycle="V", initial_guess="zero")
    costs = perfmodel.StepCosts(
        forward=[1.0, 2.0], adjoint=[1.5, 2.5], per_layer=0.5, replicated=0.25, weight_bytes=100, replicated_bytes=40
    )
    alpha = 10.0
    base, _ = perfmodel.simulate_training_step(8, options, 2, costs, (alpha, 0.0), 1, 1)
    for groups, rounds in ((2, 1), (3, 2), (4, 2), (8, 3)):
        time, _ = perfmodel.simulate_training_step(8, options, 2, costs, (alpha, 0.0), 1, 1, data_groups=groups)
        assert time == base + rounds * alpha
    beta = 1e-3  # one layer-rank per group holds all 8 layers and the replicated parameters
    base, _ = perfmodel.simulate_training_step(8, options, 1, costs, (0.0, beta), 1, 1)
    time, _ = perfmodel.simulate_training_step(8, options, 1, costs, (0.0, beta), 1, 1, data_groups=2)
    assert time == pytest.approx(base + beta * (8 * 100 + 40), rel=1e-12)


def test_prediction_with_data_groups_splits_the_ranks():
    cfg = mr.load_config(ROOT / "examples/tiny_train.toml", overrides={"train.data_parallel": 2})
    costs = perfmodel.StepCosts(forward=[1.0, 2.0], adjoint=[1.5, 2.5], per_layer=0.5, weight_bytes=100, replicated_bytes=40)
    calibration = perfmodel.Calibration(costs, serial_time=100.0, one_rank_time=50.0, iterations=(1, 1), what="test")
    _, rows = perfmodel.predict(cfg, [3, 4, 16], network=(1.0, 0.0), calibration=calibration)
    assert rows[0].time is None and "train.data_parallel must divide the number of ranks (3); got 2" in rows[0].note
    options = perfmodel.solver_options(cfg)
    assert rows[1].time == perfmodel.simulate_training_step(13, options, 2, costs, (1.0, 0.0), 1, 1, data_groups=2)[0]
    assert rows[2].time is None and "2 * ranks per data group - 1" in rows[2].note


def test_prediction_at_one_rank_reproduces_the_calibration():
    cfg = mr.load_config(ROOT / "examples/tiny_train.toml", overrides={"network.depth": 16, "train.batch_size": 8})
    calibration, rows = perfmodel.predict(cfg, [1, 2, 4, 9], of="train", network=(1e-6, 1e-10))
    assert rows[0].time == pytest.approx(calibration.one_rank_time, rel=1e-6)
    assert rows[1].time < rows[0].time
    assert rows[3].time is None and "2 * ranks - 1" in rows[3].note
    assert rows[1].speedup == pytest.approx(calibration.serial_time / rows[1].time)
    assert all(c > 0 for c in calibration.costs.forward + calibration.costs.adjoint)


def test_solve_prediction_at_one_rank_reproduces_the_calibration():
    cfg = mr.load_config(ROOT / "examples/heat1d.toml", overrides={"problem.n_steps": 256, "problem.nx": 16})
    calibration, rows = perfmodel.predict(cfg, [1, 4], of="solve", network=(1e-6, 1e-10))
    assert rows[0].time == pytest.approx(calibration.one_rank_time, rel=1e-6)
    assert rows[1].time < rows[0].time
    assert calibration.iterations[0] == mr.MGRIT(mr.problems.from_config(cfg.problem), **cfg.mgrit.as_dict()).solve().iterations


def test_predict_rejects_unknown_kind():
    cfg = mr.load_config(ROOT / "examples/heat1d.toml")
    with pytest.raises(ValueError, match="'train' or 'solve'"):
        perfmodel.predict(cfg, [1], of="both")


# ---------------------------------------------------------------------- predict verb
def test_parse_ranks():
    assert parse_ranks("4,1,2,2") == [1, 2, 4]
    for bad in ("", "0,1", "a,b", "1,,2"):
        with pytest.raises(ValueError, match="--ranks"):
            parse_ranks(bad)


def test_predict_verb_prints_table_writes_json_and_plot(tmp_path, capsys):
    out, doc = tmp_path / "scaling.png", tmp_path / "scaling.json"
    code = main(
        [
            "predict",
            str(ROOT / "examples/tiny_train.toml"),
            "--set",
            "network.depth=16",
            "--ranks",
            "1,2,4,16",
            "--out",
            str(out),
            "--json",
            str(doc),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "speedup" in text and "efficiency" in text and "some rank would hold no layer" in text
    document = json.loads(doc.read_text())
    assert [row["ranks"] for row in document["rows"]] == [1, 2, 4, 16]
    assert document["rows"][-1]["time"] is None
    assert document["network"] == {"alpha": 2e-6, "beta": 1e-10}
    assert math.isclose(document["rows"][0]["speedup"], document["calibration"]["serial_time"] / document["rows"][0]["time"])
    assert out.stat().st_size > 10_000


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ranks", "0,2"], "--ranks must be"),
        (["--measure-network"], "mpiexec -n 2"),
        (["--alpha", "-1"], "--alpha must be"),
        (["--of", "both"], "invalid choice"),
    ],
)
def test_predict_bad_input_exits_2(args, message, capsys):
    assert main(["predict", str(ROOT / "examples/tiny_train.toml"), *args]) == 2
    assert message in capsys.readouterr().err


def test_predict_measures_the_network_under_mpiexec(tmp_path):
    doc = tmp_path / "p.json"
    predict = [str(Path(sys.executable).parent / "mgrit-resnet"), "predict", "examples/heat1d.toml", "--of", "solve"]
    proc = mpirun(2, [*predict, "--set", "problem.n_steps=64", "--ranks", "1,2", "--measure-network", "--json", str(doc)])
    network = json.loads(doc.read_text())["network"]
    assert 0 < network["alpha"] < 1e-2 and network["beta"] >= 0
    assert proc.stdout.count("measured by ping-pong") == 1


def test_solve_reports_the_virtual_clock(tmp_path):
    doc = tmp_path / "r.json"
    solve = [str(Path(sys.executable).parent / "mgrit-resnet"), "solve", "examples/heat1d.toml", "--set", "problem.n_steps=64"]
    proc = mpirun(2, [*solve, "--virtual-clock", "1e-5,0", "--json", str(doc)])
    document = json.loads(doc.read_text())
    assert 0 < document["virtual_time"] and document["iterations"] > 0
    assert proc.stdout.count("virtual clock:") == 1


def test_solve_rejects_a_bad_virtual_clock(capsys):
    assert main(["solve", str(ROOT / "examples/heat1d.toml"), "--virtual-clock", "fast"]) == 2
    assert "--virtual-clock must be ALPHA,BETA" in capsys.readouterr().err
