"""The command line: in-process for the serial paths, under mpiexec for the parallel ones."""

import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, mpirun

import mgrit_resnet as mr
from mgrit_resnet.cli import main

DAHLQUIST = str(ROOT / "examples" / "dahlquist.toml")
HEAT = str(ROOT / "examples" / "heat1d.toml")


def test_solve_prints_table_theory_and_writes_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["solve", DAHLQUIST, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "two-level theory (Southworth 2019): factor 0.0520" in text
    assert "converged after" in text
    data = json.loads(out.read_text())
    for key in ("residuals", "iterations", "converged", "convergence_factors", "ranks", "points_per_level", "wall_time"):
        assert key in data
    assert data["converged"] and data["ranks"] == 1 and data["points_per_level"] == [2049, 257]
    assert len(data["residuals"]) == data["iterations"] and data["residuals"][-1] <= 1e-12


def test_plot_draws_the_history_with_the_theory_slope(tmp_path, capsys):
    png = tmp_path / "history.png"
    assert main(["solve", DAHLQUIST, "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # Exact zeros (here after N_c = 10 iterations) cannot sit on a log axis; the plot marks them instead.
    svg = tmp_path / "exact.svg"
    zero_run = ["--set", "problem.z='3j'", "--set", "problem.t_final=6", "--set", "problem.n_steps=40"]
    zero_run += ["--set", "mgrit.coarsening=4", "--set", "mgrit.tol=0", "--set", "mgrit.relax='F'", "--set", "mgrit.initial_guess='zero'"]
    assert main(["solve", DAHLQUIST, *zero_run, "--plot", str(svg)]) == 0
    assert "exactly zero from iteration 10" in svg.read_text()
    assert "\n  10    0.0000e+00" in capsys.readouterr().out


def test_set_overrides_and_matches_the_python_api(tmp_path):
    out = tmp_path / "r.json"
    overrides = ["--set", "mgrit.levels=3", "--set", "mgrit.coarsening=[2, 4]", "--set", "problem.n_steps=96"]
    assert main(["solve", HEAT, *overrides, "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["points_per_level"] == [97, 49, 13]
    cfg = mr.load_config(HEAT, {"mgrit.levels": 3, "mgrit.coarsening": [2, 4], "problem.n_steps": 96})
    expected = mr.MGRIT(mr.problems.from_config(cfg.problem), **cfg.mgrit.as_dict()).solve()
    np.testing.assert_allclose(data["residuals"], expected.residuals, rtol=1e-14)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "mgrit.levelz=3"], "unknown config key 'mgrit.levelz'; allowed keys in [mgrit]: levels, coarsening"),
        (["--set", "mgrit.levels=three"], "mgrit.levels must be an integer >= 1; got 'three'"),
        (["--set", "mgrit.coarsening=1"], "mgrit.coarsening must be an integer >= 2; got 1"),
        (["--set", "mgrit.relax=CF"], "mgrit.relax must be 'F', 'FCF', 'FCFCF', ..."),
        (["--set", "mgrit.tol=small"], "mgrit.tol must be a real number >= 0.0; got 'small'"),
        (["--set", "problem.kind=wave"], "problem.kind must be one of 'dahlquist', 'heat1d', 'heat2d'; got 'wave'"),
        (["--set", "problem.scheme=trapezoid"], "problem.scheme must be 'backward_euler' for problem.kind = 'heat1d'"),
        (["--set", "levels"], "--set takes KEY=VALUE with a dotted key"),
        (["--set", "solver.levels=2"], "unknown config section 'solver'; allowed sections: problem, mgrit, network, data, train"),
    ],
)
def test_bad_input_is_a_clear_error(args, message, capsys):
    code = main(["solve", HEAT, *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err


def test_missing_file_and_bad_verb(tmp_path, capsys):
    assert main(["solve", str(tmp_path / "none.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[mgrit\nlevels = 2")
    assert main(["solve", str(bad)]) == 2
    assert "is not valid TOML" in capsys.readouterr().err
    assert main(["train-hard"]) == 2
    assert "invalid choice: 'train-hard'" in capsys.readouterr().err


@pytest.mark.mpi
def test_solve_under_mpiexec_matches_serial(tmp_path):
    out = tmp_path / "r.json"
    console_script = Path(sys.executable).parent / "mgrit-resnet"
    proc = mpirun(3, [str(console_script), "solve", HEAT, "--json", str(out), "--plot", str(tmp_path / "h.png")])
    assert (tmp_path / "h.png").stat().st_size > 0
    assert proc.stdout.count("converged after") == 1, "only rank 0 prints"
    data = json.loads(out.read_text())
    cfg = mr.load_config(HEAT)
    expected = mr.MGRIT(mr.problems.from_config(cfg.problem), **cfg.mgrit.as_dict()).solve()
    assert data["ranks"] == 3 and data["iterations"] == expected.iterations
    np.testing.assert_allclose(data["residuals"], expected.residuals, rtol=1e-12)


@pytest.mark.mpi
@pytest.mark.parametrize(
    "n, override, message",
    [
        (2, "mgrit.relax=FFF", "mgrit.relax must be 'F', 'FCF', 'FCFCF'"),
        (3, "mgrit.levelz=2", "unknown config key 'mgrit.levelz'; allowed keys in [mgrit]: levels, coarsening"),
        (4, "mgrit.levels=two", "mgrit.levels must be an integer >= 1; got 'two'"),
        (3, "mgrit.coarsening=1", "mgrit.coarsening must be an integer >= 2; got 1"),
    ],
)
def test_bad_input_under_mpiexec_exits_nonzero_without_hanging(n, override, message):
    start = time.monotonic()
    proc = mpirun(n, ["python", "-m", "mgrit_resnet", "solve", HEAT, "--set", override], timeout=60, check=False)
    assert proc.returncode != 0
    assert proc.stderr.count(message) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - start < 60


@pytest.mark.mpi
def test_more_ranks_than_points_under_mpiexec():
    proc = mpirun(4, ["python", "-m", "mgrit_resnet", "solve", HEAT, "--set", "problem.n_steps=2"], timeout=60, check=False)
    assert proc.returncode != 0
    assert "ranks must be between 1 and the number of time points (3)" in proc.stderr


@pytest.mark.mpi
def test_an_exception_on_one_rank_ends_every_rank():
    start = time.monotonic()
    proc = mpirun(3, ["python", "tests/mpi/abort_one_rank.py"], timeout=60, check=False)
    assert proc.returncode != 0
    assert "deliberate failure on rank 1" in proc.stderr
    assert time.monotonic() - start < 10


@pytest.mark.mpi
def test_info_under_mpiexec():
    proc = mpirun(2, ["python", "-m", "mgrit_resnet", "info"], timeout=60)
    for word in ("python", "torch", "mpi4py", "MPI library", "petsc4py", "ranks"):
        assert word in proc.stdout
    assert re.search(r"^ranks\s+2$", proc.stdout, re.MULTILINE)
    assert proc.stdout.count("mpi4py") == 1


def test_unwritable_output_is_refused_before_the_solve(tmp_path, capsys):
    assert main(["solve", DAHLQUIST, "--json", str(tmp_path / "missing" / "r.json")]) == 2
    assert "--json: the folder" in capsys.readouterr().err
    assert main(["solve", DAHLQUIST, "--plot", str(tmp_path / "missing" / "r.png")]) == 2
    assert "--plot: the folder" in capsys.readouterr().err


VERIFY = str(ROOT / "examples" / "verify.toml")


def test_verify_passes_and_writes_the_interface_json(tmp_path, capsys):
    out = tmp_path / "v.json"
    assert main(["verify", VERIFY, "--set", "network.depth=13", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {"max_rel_diff_output", "max_rel_diff_grad", "ranks", "passed"} <= set(report)
    assert report["passed"] is True and report["ranks"] == 1 and report["max_rel_diff_grad"] <= 1e-10
    assert "PASSED" in capsys.readouterr().out


@pytest.mark.mpi
@pytest.mark.parametrize("n, kind", [(2, "dense"), (3, "conv"), (4, "dense")])
def test_verify_under_mpiexec(tmp_path, n, kind):
    out = tmp_path / "v.json"
    args = ["python", "-m", "mgrit_resnet", "verify", VERIFY, "--set", f'network.kind="{kind}"', "--set", "network.image_size=4"]
    proc = mpirun(n, [*args, "--json", str(out)], timeout=120)
    report = json.loads(out.read_text())
    assert report["passed"] and report["ranks"] == n and report["max_rel_diff_grad"] <= 1e-10 and report["max_rel_diff_output"] <= 1e-10
    assert proc.stdout.count("PASSED") == 1, "only rank 0 prints"


@pytest.mark.mpi
def test_verify_exits_1_on_every_rank_when_the_solve_is_cut_short(tmp_path):
    out = tmp_path / "v.json"
    args = ["python", "-m", "mgrit_resnet", "verify", VERIFY, "--set", "mgrit.max_iter=1", "--set", "mgrit.tol=0", "--json", str(out)]
    proc = mpirun(3, args, timeout=120, check=False)
    assert proc.returncode == 1 and "FAILED" in proc.stdout
    assert json.loads(out.read_text())["passed"] is False


@pytest.mark.mpi
@pytest.mark.parametrize(
    "n, override, message",
    [
        (2, "network.depth=0", "network.depth must be an integer >= 1; got 0"),
        (4, "network.depth=5", "network.depth must be at least 2 * ranks - 1 = 7"),
        (3, "mgrit.coarsening=64", "mgrit.coarsening=64 leaves no coarse grid for network.depth=37"),
        (2, "network.activation=sigmoid", "network.activation must be one of 'tanh', 'relu', 'smooth_relu'"),
    ],
)
def test_verify_bad_input_exits_2_without_hanging(n, override, message):
    proc = mpirun(n, ["python", "-m", "mgrit_resnet", "verify", VERIFY, "--set", override], timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count(message) == 1, proc.stderr
    assert "Traceback" not in proc.stderr


# --- your own network on your own data -------------------------------------------------------------------------------

USER_NETWORK = """
[network]
kind = "module"
module = "examples/user_block.py:build"
depth = 8
n_classes = 3
dtype = "float64"

[network.options]
width = 4
classes = 3

[mgrit]
levels = 2
coarsening = 2
initial_guess = "initial_value"

[data]
name = "npz"
path = "{path}"
n_train = 90
n_val = 30

[train]
strategy = "one_shot"
lr = 0.02
batch_size = 30
epochs = 3
"""


def user_config(tmp_path, **arrays):
    """A user network (examples/user_block.py) on a small npz image set in ``tmp_path``; the config's path."""
    if not arrays:
        rng = np.random.default_rng(0)
        arrays = {"x_train": rng.standard_normal((120, 1, 6, 6)), "y_train": rng.integers(0, 3, 120)}
    np.savez(tmp_path / "data.npz", **arrays)
    config = tmp_path / "user.toml"
    config.write_text(USER_NETWORK.format(path=tmp_path / "data.npz"))
    return str(config)


def rows_without_times(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in ("epoch_time", "wall_time", "bytes_sent")} for row in rows]


def test_verify_takes_a_user_networks_batch_from_the_data(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the builder path is relative to the current directory
    out = tmp_path / "v.json"
    assert main(["verify", user_config(tmp_path), "--batch", "5", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["passed"] and report["max_rel_diff_grad"] <= 1e-6
    assert "network module examples/user_block.py:build, depth 8" in capsys.readouterr().out
    assert main(["verify", user_config(tmp_path), "--batch", "500"]) == 2
    assert "--batch 500 exceeds the 90 training samples" in capsys.readouterr().err


@pytest.mark.mpi
def test_a_user_network_on_npz_data_trains_and_resumes_at_another_rank_count(tmp_path):
    config = user_config(tmp_path)
    train = ["python", "-m", "mgrit_resnet", "train", config, "--out"]
    mpirun(2, [*train, str(tmp_path / "straight")], timeout=300)
    mpirun(2, [*train, str(tmp_path / "resumed"), "--set", "train.epochs=2"], timeout=300)
    proc = mpirun(3, [*train, str(tmp_path / "resumed"), "--resume"], timeout=300)
    assert proc.stdout.count("one_shot on 3 rank(s)") == 1
    straight, resumed = rows_without_times(tmp_path / "straight"), rows_without_times(tmp_path / "resumed")
    assert len(resumed) == 3
    assert resumed == straight
    written = mr.load_config(tmp_path / "resumed" / "config.toml")
    assert written.network.options == {"width": 4, "classes": 3} and written.network.module == "examples/user_block.py:build"
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["ranks"] == 3 and summary["epochs"] == 3


@pytest.mark.mpi
@pytest.mark.parametrize(
    "verb, override, arrays, message",
    [
        ("train", "network.module=examples/missing.py:build", None, "network.module = 'examples/missing.py:build': no file"),
        ("verify", "network.module=examples/user_block.py:nope", None, "examples/user_block.py has no attribute 'nope'"),
        ("train", "train.strategy=local", None, "train.strategy = 'local' does not train network.kind = 'module' yet"),
        ("train", "data.n_val=0", {"x_train": np.zeros((120, 1, 6, 6))}, "no array 'y_train'"),
        ("compare", "data.n_val=10", {"x_train": np.zeros((120, 1, 6, 6)), "y_train": np.zeros(119, dtype=int)}, "but y_train has 119"),
        (
            "train",
            "data.n_val=10",
            {"x_train": np.zeros((120, 5)), "y_train": np.zeros(120, dtype=int)},
            "cannot take the training samples of shape (5,)",
        ),
    ],
)
def test_bad_user_input_exits_2_on_every_rank_with_one_message(tmp_path, verb, override, arrays, message):
    config = user_config(tmp_path, **(arrays or {}))
    extra = ["--out", str(tmp_path / "out")] if verb in ("train", "compare") else []
    proc = mpirun(2, ["python", "-m", "mgrit_resnet", verb, config, "--set", override, *extra], timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count(message) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
