"""The sweep verb: grid parsing, the CSV schema, resume, rank counts, train sweeps, plots of sweep tables."""

import csv
import math
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, mpirun

import mgrit_resnet as mr
from mgrit_resnet import theory
from mgrit_resnet.cli import main
from mgrit_resnet.config import ConfigError
from mgrit_resnet.result import SolveResult
from mgrit_resnet.studies.sweep import SOLVE_COLUMNS, TRAIN_COLUMNS, parse_grid

DAHLQUIST = str(ROOT / "examples" / "dahlquist.toml")
HEAT = str(ROOT / "examples" / "heat1d.toml")
TINY = str(ROOT / "examples" / "tiny_train.toml")
SMALL = ["--set", "problem.n_steps=256"]  # a fast Dahlquist solve
HEAT_SMALL = ["--set", "problem.n_steps=96", "--set", "problem.nx=16"]


def read(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def sweep(out, *grid, config=DAHLQUIST, extra=SMALL):
    args = ["sweep", config, *extra, "--out", str(out)]
    for item in grid:
        args += ["--grid", item]
    return main(args)


def points_run(text):
    return [line for line in text.splitlines() if line.startswith("[")]


def without_wall_time(rows):
    return [row[:-1] for row in rows]


# ---------------------------------------------------------------- grid parsing
def test_grid_values_are_read_like_set_values_and_lists_keep_their_brackets():
    grid = parse_grid(
        [
            "mgrit.coarsening=2, 4,[2,4]",
            'mgrit.relax=F,FCF,["F", "FCF"]',
            "problem.z=-1.0,'-1+2j',\"3,5\"",
            "mgrit.skip_first_down=true,false",
        ]
    )
    assert list(grid) == ["mgrit.coarsening", "mgrit.relax", "problem.z", "mgrit.skip_first_down"]
    assert grid["mgrit.coarsening"] == [2, 4, [2, 4]]
    assert grid["mgrit.relax"] == ["F", "FCF", ["F", "FCF"]]
    assert grid["problem.z"] == [-1.0, "-1+2j", "3,5"], "a comma inside quotes does not split"
    assert grid["mgrit.skip_first_down"] == [True, False]


@pytest.mark.parametrize(
    "items, overrides, message",
    [
        (["mgrit.levels="], {}, "--grid mgrit.levels= has no values"),
        (["mgrit.levels=  "], {}, "--grid mgrit.levels= has no values"),
        (["mgrit.levels=2,,3"], {}, "--grid mgrit.levels: an empty value in '2,,3'"),
        (["mgrit.levels=2,3,"], {}, "--grid mgrit.levels: an empty value"),
        (["mgrit.levels"], {}, "--grid takes KEY=V1,V2,... with a dotted key, such as mgrit.coarsening=2,4,8; got 'mgrit.levels'"),
        (["=2,3"], {}, "--grid takes KEY=V1,V2,..."),
        (["mgrit.levels=2", "mgrit.levels=3"], {}, "--grid mgrit.levels is given twice"),
        (["mgrit.levels=2,3"], {"mgrit.levels": 4}, "mgrit.levels is in both --set and --grid"),
        (["mgrit.coarsening=2,[2,4"], {}, "--grid mgrit.coarsening: an unclosed bracket in '2,[2,4'"),
        (["mgrit.coarsening=2,4]"], {}, "--grid mgrit.coarsening: a closing bracket without an opening one"),
        (["mgrit.relax='F,FCF"], {}, "an unclosed quote"),
        ([], {}, "sweep needs at least one --grid"),
    ],
)
def test_malformed_grids_are_config_errors(items, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        parse_grid(items, overrides)


@pytest.mark.parametrize(
    "grid, message",
    [
        (["mgrit.levelz=2,3"], "unknown config key 'mgrit.levelz'; allowed keys in [mgrit]: levels, coarsening, min_coarse"),
        (["solver.levels=2"], "unknown config section 'solver'; allowed sections: problem, mgrit"),
        (["mgrit.levels="], "--grid mgrit.levels= has no values"),
        (["mgrit.coarsening=2,4,1"], "mgrit.coarsening must be an integer >= 2; got 1"),
        (["problem.t_final=2,2.0"], "--grid lists a value twice: the point problem.t_final=2.0 comes up again"),
        (["network.depth=8,16"], "--grid network.depth: solve does not read [network]; it reads [problem], [mgrit]"),
        (["mgrit.levels=2", "mgrit.levels=3"], "--grid mgrit.levels is given twice"),
        (
            ["problem.kind=dahlquist,heat1d", "problem.scheme=backward_euler,trapezoid"],  # only the last point is bad
            "grid point problem.kind=heat1d problem.scheme=trapezoid: problem.scheme must be 'backward_euler' for problem.kind = 'heat1d'",
        ),
    ],
)
def test_a_bad_grid_exits_2_before_any_point_runs(tmp_path, capsys, grid, message):
    out = tmp_path / "s.csv"
    assert sweep(out, *grid) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err
    assert not points_run(captured.out) and not out.exists(), "the checks come before the first point"


def test_a_grid_key_also_set_and_a_bad_output_are_refused(tmp_path, capsys):
    assert main(["sweep", DAHLQUIST, "--set", "mgrit.relax=F", "--grid", "mgrit.relax=F,FCF", "--out", str(tmp_path / "s.csv")]) == 2
    assert "mgrit.relax is in both --set and --grid" in capsys.readouterr().err
    assert sweep(tmp_path / "s.txt", "mgrit.relax=F") == 2
    assert "--out must name a .csv file; got" in capsys.readouterr().err
    assert sweep(tmp_path / "missing" / "s.csv", "mgrit.relax=F") == 2
    assert "--out: the folder" in capsys.readouterr().err
    assert main(["sweep", DAHLQUIST, "--grid", "mgrit.relax=F"]) == 2
    assert "the following arguments are required: --out" in capsys.readouterr().err


# ---------------------------------------------------------------- CSV schema
def test_solve_csv_schema_and_values_match_direct_solves(tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert sweep(out, "mgrit.levels=2,3", "mgrit.relax=F,FCF") == 0
    rows = read(out)
    assert rows[0] == ["mgrit.levels", "mgrit.relax", *SOLVE_COLUMNS]
    assert [row[:2] for row in rows[1:]] == [["2", "F"], ["2", "FCF"], ["3", "F"], ["3", "FCF"]], "the last key varies fastest"
    assert len(points_run(capsys.readouterr().out)) == 4
    for row in rows[1:]:
        record = dict(zip(rows[0], row))
        levels, relax = int(record["mgrit.levels"]), record["mgrit.relax"]
        cfg = mr.load_config(DAHLQUIST, {"problem.n_steps": 256, "mgrit.levels": levels, "mgrit.relax": relax})
        solver = mr.MGRIT(mr.problems.from_config(cfg.problem), **cfg.mgrit.as_dict())
        result = solver.solve()
        assert int(record["ranks"]) == 1
        assert int(record["iterations"]) == result.iterations and record["converged"] == "true"
        assert float(record["initial_residual"]) == result.initial_residual
        assert float(record["final_residual"]) == result.residuals[-1]
        k = result.iterations
        assert math.isclose(float(record["mean_factor"]), (result.residuals[-1] / result.initial_residual) ** (1 / k), rel_tol=1e-12)
        assert math.isclose(float(record["mean_factor"]), math.prod(result.convergence_factors) ** (1 / k), rel_tol=1e-12)
        assert float(record["wall_time"]) > 0
        if levels == 2:
            expected = theory.predicted_factor(solver.problem, 257, 8, relax)
            assert float(record["theory_bound"]) == expected
            assert abs(float(record["mean_factor"]) - expected) < 0.2 * expected, "the theory predicts these factors"
        else:
            assert record["theory_bound"] == "", "the two-level theory is for two levels"


def test_heat_has_no_theory_column_value_and_values_are_written_normalised(tmp_path):
    out = tmp_path / "s.csv"
    assert sweep(out, "problem.t_final=1,2", "mgrit.coarsening=[4, 2]", config=HEAT, extra=HEAT_SMALL + ["--set", "mgrit.levels=3"]) == 0
    rows = read(out)
    assert [row[:2] for row in rows[1:]] == [["1.0", "[4, 2]"], ["2.0", "[4, 2]"]]
    assert all(dict(zip(rows[0], row))["theory_bound"] == "" for row in rows[1:])


def test_mean_factor_skips_exact_zeros_and_is_nan_when_undefined():
    def result(initial, residuals):
        return SolveResult(residuals, initial, len(residuals), True, [9, 3], 1, [0], [0], 0.0)

    assert result(1.0, [0.5, 0.125]).mean_factor == pytest.approx(0.125 ** (1 / 2), rel=1e-15)
    assert result(1.0, [0.1, 0.01, 0.0, 0.0]).mean_factor == pytest.approx(0.1, rel=1e-15)
    assert result(None, [0.5, 0.05]).mean_factor == pytest.approx(0.1, rel=1e-15), "without r_0 the first residual is the reference"
    for initial, residuals in ((1.0, []), (0.0, [0.0]), (1.0, [0.0]), (None, [0.5])):
        assert math.isnan(result(initial, residuals).mean_factor)


# ---------------------------------------------------------------- resume
def test_resume_runs_only_the_missing_points_and_matches_a_fresh_run(tmp_path, capsys):
    out, fresh = tmp_path / "s.csv", tmp_path / "fresh.csv"
    grid = ("mgrit.coarsening=4,8", "mgrit.relax=F,FCF")
    assert sweep(fresh, *grid) == 0
    capsys.readouterr()

    lines = fresh.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:-1]))  # the last row lost
    assert sweep(out, *grid) == 0
    text = capsys.readouterr().out
    assert "sweep: 4 point(s), 3 already in" in text
    assert [line.split(":")[0] for line in points_run(text)] == ["[1/1] mgrit.coarsening=8 mgrit.relax=FCF"]
    assert without_wall_time(read(out)) == without_wall_time(read(fresh))

    # A job killed while writing leaves half a row: it is dropped and that point runs again.
    out.write_text("".join(lines[:-1]) + lines[-1][:9])
    assert sweep(out, *grid) == 0
    assert len(points_run(capsys.readouterr().out)) == 1
    assert without_wall_time(read(out)) == without_wall_time(read(fresh))

    assert sweep(out, *grid) == 0
    text = capsys.readouterr().out
    assert "4 already in" in text and not points_run(text)
    assert without_wall_time(read(out)) == without_wall_time(read(fresh)), "nothing appended"


def test_resume_compares_normalised_values_and_extends_a_grid(tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert sweep(out, "problem.t_final=4,8", "mgrit.relax=F") == 0
    capsys.readouterr()
    assert sweep(out, "problem.t_final=4.0,8.0e0,16", "mgrit.relax='F'") == 0
    text = capsys.readouterr().out
    assert [line.split(":")[0] for line in points_run(text)] == ["[1/1] problem.t_final=16.0 mgrit.relax=F"]
    assert [row[0] for row in read(out)[1:]] == ["4.0", "8.0", "16.0"]


def test_resume_refuses_a_table_of_another_grid(tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert sweep(out, "mgrit.relax=F", "mgrit.coarsening=4") == 0
    before = out.read_text()
    capsys.readouterr()
    assert sweep(out, "mgrit.coarsening=4", "mgrit.relax=F") == 2
    err = capsys.readouterr().err
    assert "has the columns mgrit.relax,mgrit.coarsening,ranks" in err and "this sweep writes mgrit.coarsening,mgrit.relax,ranks" in err
    assert main(["sweep", TINY, "--verb", "train", "--grid", "mgrit.relax=F", "--grid", "mgrit.coarsening=4", "--out", str(out)]) == 2
    assert "Give the same --grid keys in the same order and the same --verb" in capsys.readouterr().err
    out.write_text(before + "F,4,1\n")
    assert sweep(out, "mgrit.relax=F", "mgrit.coarsening=4") == 2
    assert "line 3 has 3 fields; the header has 10" in capsys.readouterr().err
    out.write_text(before.replace("\nF,", "\nG,"))
    assert sweep(out, "mgrit.relax=F", "mgrit.coarsening=4") == 2
    assert "line 2: mgrit.relax must be 'F', 'FCF', 'FCFCF'" in capsys.readouterr().err


# ---------------------------------------------------------------- ranks
@pytest.mark.mpi
def test_sweep_under_mpiexec_matches_one_rank_and_resumes_at_another_count(tmp_path):
    grid = ["--grid", "mgrit.coarsening=2,4", "--grid", "mgrit.cycle=V,F"]
    serial = tmp_path / "serial.csv"
    assert main(["sweep", HEAT, *HEAT_SMALL, *grid, "--out", str(serial)]) == 0
    expected = read(serial)
    for n in (2, 3):
        out = tmp_path / f"n{n}.csv"
        proc = mpirun(n, ["python", "-m", "mgrit_resnet", "sweep", HEAT, *HEAT_SMALL, *grid, "--out", str(out)], timeout=120)
        assert len(points_run(proc.stdout)) == 4 and proc.stdout.count("wrote") == 1, "only rank 0 prints"
        rows = read(out)
        assert rows[0] == expected[0] and len(rows) == 5
        for row, reference in zip(rows[1:], expected[1:]):
            got, want = dict(zip(rows[0], row)), dict(zip(rows[0], reference))
            assert got["ranks"] == str(n)
            assert (got["mgrit.coarsening"], got["mgrit.cycle"], got["iterations"]) == (
                want["mgrit.coarsening"],
                want["mgrit.cycle"],
                want["iterations"],
            )
            for key in ("initial_residual", "final_residual", "mean_factor"):
                np.testing.assert_allclose(float(got[key]), float(want[key]), rtol=1e-12)
    # Every rank must skip the same points: resume a 2-rank table at 3 ranks.
    out = tmp_path / "n2.csv"
    out.write_text("".join(out.read_text().splitlines(keepends=True)[:-2]))
    proc = mpirun(3, ["python", "-m", "mgrit_resnet", "sweep", HEAT, *HEAT_SMALL, *grid, "--out", str(out)], timeout=120)
    assert "2 already in" in proc.stdout and len(points_run(proc.stdout)) == 2
    assert [row[:4] for row in read(out)[1:]] == [["2", "V", "2", "8"], ["2", "F", "2", "7"], ["4", "V", "3", "8"], ["4", "F", "3", "8"]]


@pytest.mark.mpi
@pytest.mark.parametrize(
    "n, grid, message",
    [
        (2, "mgrit.levels=", "--grid mgrit.levels= has no values"),
        (3, "mgrit.levelz=2,3", "unknown config key 'mgrit.levelz'; allowed keys in [mgrit]"),
        (4, "problem.n_steps=96,2", "grid point problem.n_steps=2: ranks must be between 1 and the number of time points (3)"),
        (3, "mgrit.cycle=V,F", "this sweep writes mgrit.cycle,ranks"),
    ],
)
def test_bad_grids_and_tables_under_mpiexec_exit_2_on_every_rank(tmp_path, n, grid, message):
    out = tmp_path / "s.csv"
    out.write_text("mgrit.relax,ranks\n")  # another sweep's table: rank 0 finds out, every rank stops
    start = time.monotonic()
    args = ["python", "-m", "mgrit_resnet", "sweep", HEAT, "--set", "problem.nx=16", "--grid", grid, "--out", str(out)]
    proc = mpirun(n, args, timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count(message) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and out.read_text() == "mgrit.relax,ranks\n"
    assert time.monotonic() - start < 60


# ---------------------------------------------------------------- train
def test_train_sweep_writes_accuracies_equal_to_direct_training(tmp_path, capsys):
    from mgrit_resnet.training.loop import train

    out = tmp_path / "t.csv"
    args = ["sweep", TINY, "--verb", "train", "--set", "train.epochs=1", "--grid", "train.strategy=serial,one_shot,trgl"]
    assert main([*args, "--grid", "train.lr=0.05", "--out", str(out)]) == 0
    assert len(points_run(capsys.readouterr().out)) == 3
    rows = read(out)
    assert rows[0] == ["train.strategy", "train.lr", *TRAIN_COLUMNS]
    for row in rows[1:]:
        record = dict(zip(rows[0], row))
        cfg = mr.load_config(TINY, {"train.epochs": 1, "train.strategy": record["train.strategy"], "train.lr": 0.05})
        summary = train(cfg).summary
        assert record["strategy"] == record["train.strategy"] and record["epochs"] == "1" and record["ranks"] == "1"
        for key in ("train_accuracy", "val_accuracy", "final_loss"):
            assert float(record[key]) == summary[key]
        assert 0.6 < float(record["val_accuracy"]) <= 1.0, "one epoch learns the synthetic clusters"
        one_shot = record["strategy"] == "one_shot"
        assert (record["fwd_residual"] != "" and record["adj_residual"] != "") == one_shot, "last one-shot residuals, empty when serial"
        if one_shot:
            assert 0 < float(record["fwd_residual"]) < 1 and 0 < float(record["adj_residual"]) < 1


def test_train_sweep_refuses_a_bad_point_before_training(tmp_path, capsys):
    args = ["sweep", TINY, "--verb", "train", "--grid", "train.data_parallel=1,3", "--out", str(tmp_path / "t.csv")]
    assert main(args) == 2
    assert "grid point train.data_parallel=3: train.data_parallel must divide the number of ranks (1); got 3" in capsys.readouterr().err
    assert main(["sweep", TINY, "--verb", "train", "--grid", "problem.nx=4,8", "--out", str(tmp_path / "t.csv")]) == 2
    assert "train does not read [problem]" in capsys.readouterr().err


# ---------------------------------------------------------------- plot
def test_plot_draws_a_sweep_table(tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert sweep(out, "mgrit.coarsening=2,4,8", "mgrit.relax=F,FCF") == 0
    assert main(["plot", str(out)]) == 0
    png = tmp_path / "s.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert f"wrote {png}" in capsys.readouterr().out
    svg = tmp_path / "one.svg"
    one = tmp_path / "one.csv"
    assert sweep(one, "mgrit.coarsening=2,4") == 0
    assert main(["plot", str(one), "--out", str(svg)]) == 0
    assert "mean convergence factor" in svg.read_text() and "dashed: two-level theory" in svg.read_text()


def test_plot_of_a_train_sweep_and_of_a_file_that_is_not_a_sweep(tmp_path, capsys):
    table = tmp_path / "t.csv"
    table.write_text(
        "train.lr,ranks,strategy,epochs,train_accuracy,val_accuracy,final_loss,fwd_residual,adj_residual,wall_time\n"
        "0.01,1,serial,1,0.67,0.66,1.04,,,0.07\n0.05,1,serial,1,0.99,0.98,0.81,,,0.06\n"
    )
    svg = tmp_path / "t.svg"
    assert main(["plot", str(table), "--out", str(svg)]) == 0
    assert "validation accuracy (dotted: training)" in svg.read_text()
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    assert main(["plot", str(other)]) == 2
    assert "is not a sweep table: its header must be the grid keys followed by ranks, iterations" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "none.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_study_example_runs_and_resumes(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    sys.modules.pop("coarsening_study", None)
    import coarsening_study

    assert coarsening_study.main(str(tmp_path)) == 0
    rows = read(tmp_path / "dahlquist.csv")
    assert len(rows) == 1 + 5 * 3 and (tmp_path / "dahlquist.png").stat().st_size > 20_000
    for row in rows[1:]:
        record = dict(zip(rows[0], row))
        assert float(record["mean_factor"]) <= 1.05 * float(record["theory_bound"])
    assert coarsening_study.main(str(tmp_path)) == 0
    assert "15 already in" in capsys.readouterr().out
