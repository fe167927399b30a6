"""Smoke tests of the scripts in benchmarks/ (no timing assertions)."""

import importlib.util
import json
import math
import subprocess
import sys
import tomllib

import pytest
from conftest import ROOT, mpirun

import mgrit_resnet as mr

OVERHEAD = ROOT / "benchmarks" / "mgrit_overhead.py"
QUICK = ["--n-steps", "256", "--nx", "32", "--iterations", "2", "--repeat", "1"]


def load(path):
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def expected_steps(**options):
    """Step count of rank 0, straight from the solver, with the benchmark's defaults."""
    problem = mr.problems.Heat1D(nx=32, n_steps=256)
    settings = dict(levels=3, coarsening=4, relax="FCF", tol=0.0, max_iter=2) | options
    return mr.MGRIT(problem, **settings).solve().steps_per_rank[0]


def test_mgrit_overhead_runs_and_counts_the_solver_steps(capsys, tmp_path):
    out = tmp_path / "overhead.json"
    figures = load(OVERHEAD).main([*QUICK, "--json", str(out)])
    assert figures["mgrit_time"] > 0 and figures["bare_time"] > 0 and figures["step_time_us"] > 0
    assert figures["ratio"] > 0 and math.isclose(figures["overhead"], figures["ratio"] - 1.0)
    assert figures["ranks"] == 1 and figures["iterations"] == 2
    assert figures["steps"] == expected_steps() > 0
    assert figures["steps_per_rank"] == [figures["steps"]]
    assert sum(m["calls"] for m in figures["step_mix_rank0"]) == figures["steps"]
    assert {m["level"] for m in figures["step_mix_rank0"]} == {0, 1, 2}
    assert json.loads(out.read_text())["steps"] == figures["steps"]
    printed = capsys.readouterr().out
    assert "ratio" in printed and ("PASS" in printed or "over target" in printed)


def test_mgrit_overhead_options_reach_the_solver():
    figures = load(OVERHEAD).main([*QUICK, "--levels", "2", "--coarsening", "2", "--relax", "F"])
    assert figures["levels"] == 2
    assert figures["steps"] == expected_steps(levels=2, coarsening=2, relax="F")


@pytest.mark.mpi
def test_mgrit_overhead_under_mpiexec(tmp_path):
    out = tmp_path / "overhead.json"
    proc = mpirun(2, ["python", str(OVERHEAD), *QUICK, "--json", str(out)])
    assert proc.stdout.count("MGRIT bookkeeping overhead") == 1, "only rank 0 prints"
    figures = json.loads(out.read_text())
    assert figures["ranks"] == 2 and len(figures["steps_per_rank"]) == 2
    assert figures["mgrit_time"] > 0 and figures["bare_time"] > 0 and figures["ratio"] > 0


def test_serial_overhead_runs(tmp_path, capsys):
    out = tmp_path / "serial.json"
    rows = load(ROOT / "benchmarks" / "serial_overhead.py").main(["--quick", "--repeat", "2", "--json", str(out)])
    assert [r["case"] for r in rows] == ["dense N=64 w=8", "conv N=8 c=4 12x12"]
    assert all(r["mgrit_resnet_s"] > 0 and r["plain_s"] > 0 and r["ratio"] > 0 for r in rows)
    assert json.loads(out.read_text()) == rows
    assert "ratio" in capsys.readouterr().out


@pytest.mark.mpi
def test_layer_parallel_benchmark_runs_at_one_and_two_ranks(tmp_path):
    out = tmp_path / "lp.json"
    args = ["--ranks", "1,2", "--depth", "8", "--width", "2", "--image-size", "6", "--batch", "4", "--batches", "2"]
    args += ["--steps", "1", "--warmup", "1", "--exact-steps", "1", "--iters", "1/1", "--rounds", "3", "--json", str(out)]
    script = str(ROOT / "benchmarks" / "layer_parallel.py")
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(out.read_text())
    assert "2-rank speedup" in proc.stdout and set(figures) >= {"runs", "targets", "best_speedup", "serial_alone"}
    assert figures["serial_alone"]["time"] > 0 and "serial check: the serial step in a plain process of its own" in proc.stdout
    speedups = sorted(r["1/1"]["speedup"] for r in figures["rounds"])
    assert len(speedups) == 3 and figures["best_speedup"] == speedups[1], "the table is the median round"
    assert "1/1 over 3 rounds" in proc.stdout and proc.stderr.count("(round 3 of 3)") == 2


@pytest.mark.mpi
def test_validate_model_runs_and_reports_model_measurement_and_clock(tmp_path):
    out = tmp_path / "validate.json"
    args = ["--quick", "--ranks", "1,2", "--measured-ranks", "1", "--repeats", "1", "--rounds", "1", "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "validate_model.py"), *args], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["alpha"] > 0 and report["beta"] >= 0
    for case in ("heat1d", "one_shot"):
        rows = report["cases"][case]["rows"]
        assert [r["ranks"] for r in rows] == [1, 2]
        assert rows[0]["measured"] > 0 and rows[1]["measured"] is None
        assert all(r["model"] > 0 and r["virtual_clock"] > 0 for r in rows)
        assert rows[1]["model"] < rows[0]["model"]
    assert "largest deviation of the model" in proc.stdout


def test_scaling_prediction_picks_the_fastest_hierarchy(tmp_path, capsys):
    out = tmp_path / "scaling.json"
    load(ROOT / "benchmarks" / "scaling_prediction.py").main(
        ["--depths", "48", "--widths", "4", "--ranks", "1,2,4,32", "--search-ranks", "4", "--json", str(out)]
    )
    (case,) = json.loads(out.read_text())["cases"]
    best = min(case["search"], key=lambda s: s["time"])
    assert case["hierarchy"] == best["hierarchy"]
    rows = case["rows"]
    assert [r["ranks"] for r in rows] == [1, 2, 4, 32] and rows[-1]["time"] is None  # 48 layers cannot use 32 ranks
    assert rows[2]["time"] == pytest.approx(best["time"], rel=1e-12)  # the same calibration, a deterministic simulation
    assert "best:" in capsys.readouterr().out


WARM = ROOT / "benchmarks" / "warm_start_memory.py"


def test_warm_start_memory_counts_the_c_points(capsys):
    # tiny_train: 13 layers, coarsening 2, batch 25 x width 4 in float64 = 800 bytes a state.
    # Forward points 0..13 and adjoint points 0..13: 7 C-points each, against 14.
    figures = load(WARM).main([str(ROOT / "examples" / "tiny_train.toml"), "--batches", "2"])
    assert figures["kept_bytes_per_batch"] == [2 * 7 * 800] and figures["every_state_bytes_per_batch"] == [2 * 14 * 800]
    assert figures["ratio"] == 2.0 and figures["epoch_batches"] == 8
    assert "ratio 2.00" in capsys.readouterr().out
    lagged = load(WARM).main([str(ROOT / "examples" / "tiny_train.toml"), "--batches", "2", "--set", "mgrit.skip_first_down=true"])
    assert lagged["kept_bytes_per_batch"] == figures["kept_bytes_per_batch"], "the states of a plain warm start, whatever the config"


@pytest.mark.mpi
def test_warm_start_memory_under_mpiexec_splits_the_same_states(tmp_path):
    out = tmp_path / "warm.json"
    mpirun(3, ["python", str(WARM), str(ROOT / "examples" / "tiny_train.toml"), "--batches", "2", "--json", str(out)])
    figures = json.loads(out.read_text())
    assert figures["ranks"] == 3 and sum(figures["kept_bytes_per_batch"]) == 2 * 7 * 800
    assert sum(figures["every_state_bytes_per_batch"]) == 2 * 14 * 800


def test_collectives_counts_a_one_shot_step_without_pickles(capsys):
    rows = load(ROOT / "benchmarks" / "collectives.py").main(["--ranks", "1,3", "--iters", "1/1", "--depth", "9"])
    assert [r["ranks"] for r in rows] == [1, 3]
    assert all(r["object"] == 0 and r["total"] == r["buffer"] > 0 for r in rows)
    assert rows[0]["messages"] == 0 < rows[1]["messages"]
    assert "collectives" in capsys.readouterr().out


def test_user_blocks_compares_the_general_path_with_the_fast_one(capsys, tmp_path):
    out = tmp_path / "user_blocks.json"
    figures = load(ROOT / "benchmarks" / "user_blocks.py").main(["--quick", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(figures))
    assert "ratio" in capsys.readouterr().out


def test_adaptive_trains_auto_fixed_and_serial_and_counts_layer_steps(tmp_path, capsys):
    out = tmp_path / "adaptive.json"
    report = load(ROOT / "benchmarks" / "adaptive.py").main(["--quick", "--out", str(tmp_path / "runs"), "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    for case in ("peaks64", "digits"):
        rows = report["cases"][case]["rows"]
        assert [r["setting"] for r in rows] == ["serial", "1/1", "2/1", "2/2", "3/3", "auto 0.01", "auto 0.1"]
        assert all(r["layer_steps"] > 0 and 0 <= r["val_accuracy"] <= 1 for r in rows)
        assert rows[0]["layer_steps"] < rows[1]["layer_steps"] <= rows[4]["layer_steps"], "serial is 2N a step; more iterations, more steps"
        assert all(r["fwd_iters_mean"] >= 1 and r["grad_checks"] >= 1 for r in rows[5:])
    printed = capsys.readouterr().out
    assert "cheapest fixed setting within 0.5 point of serial" in printed and "auto 0.01:" in printed


def test_adaptive_passes_every_kind_of_value_to_its_mpiexec_runs():
    from mgrit_resnet.config import parse_value

    adaptive = load(ROOT / "benchmarks" / "adaptive.py")
    for value in (True, False, 3, 0.25, "auto", ["F", "FCF"]):
        assert parse_value(adaptive._set_text(value)) == value


def test_adaptive_takes_a_hierarchy_for_every_run_and_can_hold_the_adjoint(tmp_path, capsys):
    lagged = ["mgrit.levels=2", "mgrit.relax=F", "mgrit.skip_first_down=true", "network.coarse_weights=mean"]
    argv = ["--quick", "--cases", "digits", "--targets", "0.1", "--hold-bwd", "1", "--out", str(tmp_path / "runs")]
    report = load(ROOT / "benchmarks" / "adaptive.py").main(argv + [a for item in lagged for a in ("--set", item)])
    rows = report["cases"]["digits"]["rows"]
    assert rows[-1]["setting"] == "auto 0.1" and rows[-1]["bwd_iters_mean"] == 1.0
    config = (tmp_path / "runs" / "digits-auto_0.1" / "config.toml").read_text()
    assert "skip_first_down = true" in config and 'coarse_weights = "mean"' in config
    with pytest.raises(SystemExit):
        load(ROOT / "benchmarks" / "adaptive.py").main(["--quick", "--set", "mgrit.levels=zero"])
    err = capsys.readouterr().err
    assert "--set: " in err and "mgrit.levels" in err, "a bad change is refused before any run, naming the key"


def test_adaptive_compares_settings_over_seeds_by_their_paired_differences(tmp_path, capsys):
    adaptive = load(ROOT / "benchmarks" / "adaptive.py")
    argv = ["--quick", "--cases", "digits", "--targets", "0.1", "--fixed", "1/1", "--seeds", "2", "--out", str(tmp_path / "runs")]
    rows = adaptive.main(argv)["cases"]["digits"]["rows"]
    assert [r["setting"] for r in rows] == ["serial", "1/1", "auto 0.1"]
    serial = rows[0]["val_accuracies"]
    for r in rows:
        assert len(r["val_accuracies"]) == 2 and r["val_accuracy"] == pytest.approx(sum(r["val_accuracies"]) / 2)
        diffs = [100 * (a - b) for a, b in zip(r["val_accuracies"], serial)]
        assert r["points"] == pytest.approx(sum(diffs) / 2) and r["points_range"] == [min(diffs), max(diffs)]
    configs = [tomllib.loads((tmp_path / "runs" / f"digits-1_1-seed{k}" / "config.toml").read_text()) for k in (0, 1)]
    assert [c["train"]["seed"] for c in configs] == [0, 1] and configs[0]["data"] == configs[1]["data"]
    assert "over 2 seeds" in capsys.readouterr().out
    for bad, message in ((["--seeds", "0"], "--seeds"), (["--fixed", "2-1"], "--fixed"), (["--fixed", "0/1"], "--fixed")):
        with pytest.raises(SystemExit):
            adaptive.main(["--quick", *bad])
        assert message in capsys.readouterr().err


@pytest.mark.mpi
def test_fronts_marks_every_point_on_the_front_or_dominated(tmp_path):
    fronts = load(ROOT / "benchmarks" / "fronts.py")
    points = fronts.main(["--quick", "--json", str(tmp_path / "f.json"), "--plot", str(tmp_path / "f.png")])
    tools = {p["tool"] for p in points}
    assert tools == {"mgrit_resnet", "TorchBraid"} and (tmp_path / "f.png").stat().st_size > 0
    front = [p for p in points if p["dominated_by"] is None]
    assert front and all(not any(q["cost"] <= p["cost"] and q["error"] < p["error"] for q in points) for p in front)
    for p in points:
        if p["dominated_by"] is not None:
            by = next(q for q in points if q["label"] == p["dominated_by"])
            assert by["cost"] <= p["cost"] and by["error"] <= p["error"]
