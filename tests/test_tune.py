"""The ``tune`` verb: candidate hierarchies, the Pareto front, the gradient error, bad input."""

import json

import pytest
from conftest import ROOT, mpirun

import mgrit_resnet as mr
from mgrit_resnet.cli import main
from mgrit_resnet.config import parse_overrides
from mgrit_resnet.studies.tune import TuneRow, candidates, gradient_error, pareto_front, recommend, relaxation

TINY = str(ROOT / "examples" / "tiny_train.toml")


def test_candidates_are_the_distinct_multilevel_hierarchies():
    # 13 layers = 14 points: m = 2 gives 14 -> 7 -> 4 -> 2; m = 4 gives 14 -> 4 and no third level (1 point).
    assert candidates(13, [2, 3, 4], [2, 4], min_coarse=2) == [(2, 2), (3, 2), (4, 2), (2, 4)]
    assert candidates(13, [2], [16], min_coarse=2) == []


def row(time, error):
    return TuneRow(levels=2, coarsening=2, relax="F", ranks=4, time=time, serial_time=1.0, grad_error=error)


def test_relaxation_follows_the_configs_pattern():
    assert relaxation("FCF", 4) == "FCF"
    assert relaxation(["F", "FCF"], 2) == "F" and relaxation(["F", "FCF"], 4) == ["F", "FCF", "FCF"]
    row = TuneRow(levels=3, coarsening=4, relax=["F", "FCF"], ranks=4, time=1.0, serial_time=1.0, grad_error=0.1)
    assert row.describe() == "3 levels, m = 4, relax F/FCF"
    overrides = parse_overrides(row.overrides())
    assert mr.load_config(TINY, overrides).mgrit.relax == ["F", "FCF"]


def test_pareto_front_and_recommendation():
    rows = [row(1.0, 0.1), row(2.0, 0.01), row(3.0, 0.05), row(4.0, 0.001), row(2.0, 0.01)]
    pareto_front(rows)
    assert [r.pareto for r in rows] == [True, True, False, True, True]  # 3.0 s is beaten by 2.0 s at a lower error
    assert recommend(rows, 0.02) is rows[1]
    assert recommend(rows, 1e-4) is None
    assert rows[0].speedup == 1.0 and rows[0].overrides() == ["mgrit.levels=2", "mgrit.coarsening=2", "mgrit.relax=F"]
    assert parse_overrides(rows[0].overrides())["mgrit.relax"] == "F"


def test_gradient_error_is_zero_on_one_level_and_falls_with_iterations():
    cfg = mr.load_config(TINY)
    assert gradient_error(cfg.with_overrides({"mgrit.levels": 1}), steps=4) < 1e-12  # the layer-serial sweep is exact
    one = gradient_error(cfg.with_overrides({"mgrit.levels": 2, "mgrit.coarsening": 4}), steps=4)
    more = gradient_error(
        cfg.with_overrides({"mgrit.levels": 2, "mgrit.coarsening": 4, "train.fwd_iters": 4, "train.bwd_iters": 4}), steps=4
    )
    assert 1e-6 < one and more < 0.1 * one


def test_config_with_overrides_is_validated():
    cfg = mr.load_config(TINY)
    assert cfg.with_overrides({"mgrit.levels": 4}).mgrit.levels == 4 and cfg.mgrit.levels == 3
    assert cfg.with_overrides({}).as_dict() == cfg.as_dict()
    with pytest.raises(mr.config.ConfigError, match="mgrit.levels must be an integer >= 1"):
        cfg.with_overrides({"mgrit.levels": 0})


def test_tune_verb_prints_the_table_writes_json_and_plot(tmp_path, capsys):
    out, doc = tmp_path / "tune.png", tmp_path / "tune.json"
    args = ["tune", TINY, "--ranks", "4", "--levels", "2,3", "--coarsening", "2", "--steps", "2", "--max-error", "1", "--rounds", "1"]
    assert main([*args, "--json", str(doc), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "grad error" in printed and "Pareto front" in printed and "--set mgrit.levels=" in printed
    document = json.loads(doc.read_text())
    rows = document["rows"]
    assert [(r["levels"], r["coarsening"]) for r in sorted(rows, key=lambda r: r["levels"])] == [(2, 2), (3, 2)]
    assert [r["time"] for r in rows] == sorted(r["time"] for r in rows)
    assert len({r["serial_time"] for r in rows}) == 1, "one serial figure for every hierarchy"
    assert document["recommended"] == rows[0], "every error is under 1: the fastest is recommended"
    assert rows[0]["pareto"] and all(r["grad_error"] > 0 for r in rows)
    assert out.stat().st_size > 10_000


@pytest.mark.parametrize(
    "options, message",
    [
        (["--ranks", "2,4"], "--ranks takes one rank count for tune; got '2,4'"),
        (["--ranks", "0"], "--ranks must be a comma-separated list of integers >= 1"),
        (["--ranks", "8"], "--ranks 8: network.depth = 13 < 2 * ranks - 1"),
        (["--ranks", "3", "--set", "train.data_parallel=2"], "--ranks 3: train.data_parallel must divide the number of ranks (3); got 2"),
        (["--ranks", "16", "--set", "train.data_parallel=2"], "network.depth = 13 < 2 * ranks per data group - 1"),
        (["--ranks", "2", "--levels", "1,2"], "--levels must be a comma-separated list of integers >= 2"),
        (["--ranks", "2", "--coarsening", "x"], "--coarsening must be a comma-separated list of integers >= 2"),
        (["--ranks", "2", "--coarsening", "16"], "no multilevel hierarchy from --levels 2,3,4 and --coarsening 16 on 13 layers"),
        (["--ranks", "2", "--steps", "1"], "--steps must be at least 2"),
        (["--ranks", "2", "--max-error", "0"], "--max-error must be a number > 0"),
        (["--ranks", "2", "--rounds", "0"], "--rounds must be at least 1"),
        (["--levels", "2"], "the following arguments are required: --ranks"),
    ],
)
def test_tune_bad_input(options, message, capsys):
    assert main(["tune", TINY, *options]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.mpi
def test_tune_under_mpiexec_prints_once_and_bad_input_exits_2_on_every_rank():
    args = ["python", "-m", "mgrit_resnet", "tune", TINY, "--ranks", "2", "--levels", "2", "--coarsening", "4", "--steps", "2"]
    proc = mpirun(2, args, timeout=120)
    assert proc.stdout.count("Pareto front") == 1
    bad = mpirun(2, [*args[:-2], "--steps", "1"], timeout=60, check=False)
    assert bad.returncode == 2 and bad.stderr.count("--steps must be at least 2") == 1
