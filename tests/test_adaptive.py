"""Adaptive one-shot iterations (train.fwd_iters / bwd_iters = "auto"): the controller, the config keys, training runs."""

import json
import math

import pytest
from conftest import ROOT, mpirun

import mgrit_resnet as mr
from mgrit_resnet.cli import main
from mgrit_resnet.training import adaptive
from mgrit_resnet.training.adaptive import IterationController, StepObservation, fit

TINY = str(ROOT / "examples" / "tiny_train.toml")
AUTO = ["train.fwd_iters=auto", "train.bwd_iters=auto"]


class Solves:
    """A stand-in for one-shot solves: residual r1 * rho^(k-1) after k iterations, gradient error A r_f + B r_a."""

    def __init__(self, r1=(10.0, 0.05), rho=(0.2, 0.15), coefficients=(0.01, 5.0)):
        self.r1, self.rho, self.coefficients = r1, rho, coefficients

    def residuals(self, fwd, bwd):
        return self.r1[0] * self.rho[0] ** (fwd - 1), self.r1[1] * self.rho[1] ** (bwd - 1)

    def error(self, fwd, bwd):
        rf, ra = self.residuals(fwd, bwd)
        return self.coefficients[0] * rf + self.coefficients[1] * ra

    def observe(self, fwd, bwd, check):
        rf, ra = self.residuals(fwd, bwd)
        return StepObservation(fwd, bwd, self.r1[0], rf, self.r1[1], ra, self.error(fwd, bwd) if check else None)


def run(controller, solves, steps, chosen=None, grow=1.0):
    """Drive ``controller`` for ``steps`` steps; the counts each step ran and whether it was checked.

    ``chosen``, a list, receives the counts chosen after each step (a probe
    runs other counts than those chosen); the residuals grow by ``grow`` every step.
    """
    history = []
    for _ in range(steps):
        fwd, bwd, check = controller.plan()
        controller.observe(solves.observe(fwd, bwd, check))
        history.append(((fwd, bwd), check))
        if chosen is not None:
            chosen.append(controller.counts)
        solves.r1 = (solves.r1[0] * grow, solves.r1[1] * grow)
    return history


def cheapest_meeting(solves, target, high=8):
    good = [(f + b, solves.error(f, b), (f, b)) for f in range(1, high + 1) for b in range(1, high + 1) if solves.error(f, b) <= target]
    return min(good)[2]


# ---------------------------------------------------------------- the fit
def test_one_check_splits_the_error_equally_between_the_terms():
    a, b = fit([[2.0, 0.1, 0.04]])
    assert a * 2.0 == pytest.approx(0.02) and b * 0.1 == pytest.approx(0.02)


def test_checks_at_two_ratios_recover_both_coefficients():
    truth = Solves()
    checks = [[*truth.residuals(f, b), truth.error(f, b)] for f, b in ((2, 2), (3, 1), (1, 3), (3, 3))]
    a, b = fit(checks)
    # the ridge pulls a little towards the equal split; the data decide
    assert a == pytest.approx(0.01, rel=0.1) and b == pytest.approx(5.0, rel=0.1)


def test_a_term_that_explains_nothing_gets_a_zero_coefficient():
    checks = [[1.0, 1.0, 1.0], [10.0, 1.0, 1.0], [0.1, 1.0, 1.0]]  # the error follows r_a alone
    a, b = fit(checks)
    assert a * 10.0 < 0.2 and b == pytest.approx(1.0, rel=0.15), "the ridge alone keeps the forward term"
    checks = [[1.0, 1.0, 1.0], [10.0, 1.0, 0.2], [0.1, 1.0, 1.0]]  # more forward residual, less error: no forward term at all
    a, b = fit(checks)
    assert a == 0.0 and b > 0


def test_checks_without_information_give_zero_coefficients():
    assert fit([]) == (0.0, 0.0)
    assert fit([[0.0, 0.0, 0.0], [1.0, 1.0, float("nan")]]) == (0.0, 0.0)
    assert fit([[0.0, 2.0, 0.2]]) == (0.0, pytest.approx(0.1))  # a zero residual: the other term explains all


# ---------------------------------------------------------------- decisions
def test_it_raises_the_counts_to_the_cheapest_that_meet_a_tight_target():
    truth = Solves()
    controller = IterationController(1e-4, 20, (1, 8), (1, 8))
    history = run(controller, truth, 60)
    assert history[0] == ((2, 2), True), "the first step runs 2/2 and is checked"
    assert truth.error(*controller.counts) <= 1e-4, "it meets the target"
    assert sum(controller.counts) <= sum(cheapest_meeting(truth, adaptive.LOWER_MARGIN * 1e-4)), "at no more cost than it must"
    assert sum(controller.counts) > 4
    chosen = [counts for counts, check in history[-30:] if not check]
    assert set(chosen) == {controller.counts}, "it settles (checks may probe other counts)"


def test_it_lowers_the_counts_when_the_target_is_loose():
    truth = Solves()
    controller = IterationController(0.9, 20, (1, 8), (1, 8))
    run(controller, truth, 30)
    assert controller.counts == (1, 1)


def test_it_spends_iterations_where_the_error_comes_from():
    # the adjoint's residual carries almost all the error: the adjoint gets the iterations
    truth = Solves(coefficients=(1e-5, 5.0))
    controller = IterationController(1e-3, 20, (1, 8), (1, 8))
    run(controller, truth, 80)
    fwd, bwd = controller.counts
    assert bwd > fwd and truth.error(fwd, bwd) <= 1e-3
    assert fwd + bwd <= sum(cheapest_meeting(truth, adaptive.LOWER_MARGIN * 1e-3))


def test_a_fixed_count_stays_fixed():
    controller = IterationController(1e-4, 20, (1, 8), 2)
    history = run(controller, Solves(), 40)
    assert {counts[1] for counts, _ in history} == {2}
    # The forward count alone cannot meet the target. Its errors 0.1375, 0.0575, 0.0415, 0.0383, ... 0.0375 (at 8):
    # it takes the cheapest within 10 % of the most accurate (4), not the last iterations that buy under 2 %.
    assert controller.counts[0] == 4


def test_an_unreachable_target_still_buys_iterations_that_pay():
    # the forward term dominates until 3 iterations, and the adjoint (fixed at 1) then floors the error
    truth = Solves(coefficients=(0.05, 5.0), rho=(0.5, 0.15))
    controller = IterationController(1e-4, 10, (1, 8), 1)
    run(controller, truth, 60)
    errors = [truth.error(f, 1) for f in range(1, 9)]
    cheapest = next(f for f, e in enumerate(errors, start=1) if e <= (1 + adaptive.WORTH) * min(errors))
    assert controller.counts == (cheapest, 1) and 2 < cheapest < 8


def test_counts_rise_at_once_and_fall_one_at_a_time_every_dwell_steps():
    controller, chosen, truth = IterationController(1e-3, 5, (1, 8), (1, 8)), [], Solves()
    run(controller, truth, 40, chosen, grow=1.2)  # the error grows fast: the counts keep rising
    rises = [i for i in range(1, len(chosen)) if chosen[i] != chosen[i - 1]]
    assert len(rises) >= 3 and controller.counts == (8, 8)
    assert all(sum(chosen[i]) >= sum(chosen[i - 1]) for i in rises)
    assert min(b - a for a, b in zip(rises, rises[1:])) < adaptive.DWELL, "rising does not wait"
    chosen = []
    run(controller, truth, 60, chosen, grow=0.7)  # then it shrinks: they fall
    falls = [i for i in range(1, len(chosen)) if chosen[i] != chosen[i - 1]]
    assert len(falls) >= 3 and sum(controller.counts) < 10
    assert all(b - a >= adaptive.DWELL for a, b in zip(falls, falls[1:])), "lowered at most every DWELL steps"
    assert all(min(chosen[i][k] - chosen[i - 1][k] for k in (0, 1)) >= -1 for i in falls), "a count falls by one at most"


def test_checks_come_first_then_periodically_and_after_a_change():
    controller, chosen = IterationController(1e-4, 10, (1, 8), (1, 8)), []
    history = run(controller, Solves(), 20, chosen, grow=1.2)  # the error grows: the counts rise
    history += run(controller, Solves(), 60, chosen)  # then a steady state
    checked = [i for i, (_, check) in enumerate(history) if check]
    assert checked[0] == 0
    assert all(b - a <= 10 for a, b in zip(checked, checked[1:])), "never more than check_every steps apart"
    changes = [i for i in range(1, len(chosen)) if chosen[i] != chosen[i - 1]]  # chosen after step i: step i + 1 runs them
    assert len(changes) >= 2
    for i in changes:  # the new counts are checked once the gap between checks (check_every // 5 = 2 steps) allows
        assert any(i + 1 <= c <= i + 3 for c in checked)
    quiet = history[-30:]  # settled, nothing drifts: one check every check_every steps
    assert sum(check for _, check in quiet) == 3
    probes = [counts for counts, check in quiet if check and counts != controller.counts]
    assert 1 <= len(probes) <= 2, "every other periodic check is a probe"
    assert all(sum(abs(a - b) for a, b in zip(probe, controller.counts)) == 1 for probe in probes), "one count one off"


def test_a_drifting_error_model_is_recalibrated_and_followed():
    truth = Solves()
    controller = IterationController(1e-3, 100, (1, 8), (1, 8))  # periodic checks at 0, 100, ...: change and drift checks between
    run(controller, truth, 45)
    first = controller.counts
    truth.r1 = (truth.r1[0] * 20, truth.r1[1] * 20)  # the residuals grow 20-fold: the prediction drifts
    history = run(controller, truth, 50)
    assert any(check for _, check in history), "drift triggers a check"
    assert sum(controller.counts) > sum(first) and truth.error(*controller.counts) <= 1e-3


def test_a_stalled_loss_tightens_the_target_down_to_an_eighth():
    controller = IterationController(0.1, 20, (1, 8), (1, 8))
    losses = [1.0, 0.5, 0.499, 0.3, 0.3, 0.3, 0.3, 0.3]
    targets = []
    for loss in losses:
        run(controller, Solves(), 5)
        targets.append(controller.end_epoch(loss)["grad_error_target"])
    assert targets == [0.1, 0.1, 0.05, 0.05, 0.025, 0.0125, 0.0125, 0.0125]


def test_the_epoch_report_is_strict_json_with_the_schedule_and_the_checks():
    controller = IterationController(1e-4, 10, (1, 8), (1, 8))
    run(controller, Solves(), 25)
    report = controller.end_epoch(1.0)
    json.loads(json.dumps(report, allow_nan=False))
    assert report["iters_schedule"][0] == [1, 2, 2] and report["next_iters"] == list(controller.counts)
    assert report["grad_checks"][0] == {
        "step": 1,
        "fwd_iters": 2,
        "bwd_iters": 2,
        "estimate": None,
        "measured": Solves().error(2, 2),
        "probe": False,
    }
    chosen = [c["measured"] for c in report["grad_checks"] if not c["probe"]]  # probes run other counts: not in the mean
    assert len(chosen) < len(report["grad_checks"]) and report["grad_error_measured"] == pytest.approx(sum(chosen) / len(chosen))
    assert 1 <= report["fwd_iters_mean"] <= 8 and report["grad_error_target"] == 1e-4
    assert controller.end_epoch(1.0)["iters_schedule"] == [], "the next epoch starts a new log"


def test_a_restored_controller_decides_exactly_as_the_one_that_went_on():
    truth = Solves()
    straight = IterationController(1e-3, 7, (1, 8), (1, 8))
    first = run(straight, truth, 23)
    straight.end_epoch(0.7)
    saved = json.loads(json.dumps(straight.state_dict()))  # plain numbers only
    later = run(straight, truth, 40)
    resumed = IterationController(1e-3, 7, (1, 8), (1, 8))
    resumed.load_state_dict(saved)
    assert run(resumed, truth, 40) == later
    assert first[0] == ((2, 2), True)


def test_bad_controller_arguments():
    with pytest.raises(ValueError, match=r"target must be a real number in \(0, 1\)"):
        IterationController(0.0, 10, (1, 8), (1, 8))
    with pytest.raises(ValueError, match="check_every must be an integer >= 1"):
        IterationController(0.1, 0, (1, 8), (1, 8))
    with pytest.raises(ValueError, match="1 <= low <= high"):
        IterationController(0.1, 10, (3, 2), 1)


# ---------------------------------------------------------------- config
@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"train.fwd_iters": "auto", "train.strategy": "serial"}, 'train.fwd_iters = "auto" chooses the iterations of one-shot steps'),
        ({"train.bwd_iters": "auto", "train.strategy": "exact"}, "it needs train.strategy = \"one_shot\"; got train.strategy = 'exact'"),
        ({"train.fwd_iters": "fast"}, 'train.fwd_iters must be an integer >= 1 or "auto"'),
        ({"train.bwd_iters": 0}, 'train.bwd_iters must be an integer >= 1 or "auto"'),
        ({"train.grad_error_target": 0.0}, "train.grad_error_target must be a real number > 0 and < 1"),
        ({"train.grad_error_target": 1.0}, "train.grad_error_target must be a real number > 0 and < 1"),
        ({"train.grad_error_target": -0.1}, "train.grad_error_target must be a real number > 0 and < 1"),
        ({"train.grad_error_target": float("nan")}, "train.grad_error_target must be a real number > 0 and < 1"),
        ({"train.grad_error_target": "small"}, "train.grad_error_target must be a real number > 0 and < 1"),
        ({"train.grad_check_every": 0}, "train.grad_check_every must be an integer >= 1"),
        ({"train.auto_max_iters": 0}, "train.auto_max_iters must be an integer >= 1"),
    ],
)
def test_bad_adaptive_config_is_a_clear_error(overrides, message):
    with pytest.raises(mr.config.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        mr.load_config(TINY, overrides)


def test_auto_is_a_value_of_the_config_and_the_cli(capsys):
    cfg = mr.load_config(TINY, {"train.fwd_iters": "auto"})
    assert cfg.train.fwd_iters == "auto" and cfg.train.bwd_iters == 1 and cfg.train.grad_error_target == 0.01
    assert main(["train", TINY, "--set", "train.fwd_iters=auto", "--set", "train.strategy=serial"]) == 2
    err = capsys.readouterr().err
    assert 'train.fwd_iters = "auto"' in err and "train.strategy = 'serial'" in err
    assert main(["train", TINY, "--set", "train.grad_error_target=nan"]) == 2
    assert "train.grad_error_target must be a real number > 0 and < 1" in capsys.readouterr().err


# ---------------------------------------------------------------- training runs
def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_times(rows):
    return [{k: v for k, v in r.items() if k not in ("epoch_time", "bytes_sent")} for r in rows]


def sets(*items):
    return [arg for item in items for arg in ("--set", item)]


FIELDS = (
    "layer_steps",
    "total_layer_steps",
    "fwd_iters_mean",
    "bwd_iters_mean",
    "iters_schedule",
    "grad_error_estimate",
    "grad_error_measured",
    "grad_error_target",
    "grad_checks",
    "next_iters",
)


def test_an_auto_run_logs_its_choices_and_plots_them(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", TINY, "--out", str(out), *sets(*AUTO, "train.grad_check_every=4", "train.epochs=3")]) == 0
    rows = metrics(out)
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl"))  # strict JSON
    assert all(set(FIELDS) <= set(r) for r in rows)
    assert rows[0]["grad_checks"][0]["step"] == 1 and rows[0]["iters_schedule"][0] == [1, 2, 2]
    assert all(r["grad_error_measured"] is not None for r in rows), "a check at least every 4 steps of 8"
    assert [r["total_layer_steps"] for r in rows] == [sum(r["layer_steps"] for r in rows[: i + 1]) for i in range(3)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layer_steps"] == rows[-1]["total_layer_steps"]
    saved = mr.training.checkpoint.read(out / "checkpoint.pt")["adaptive"]
    assert saved["step"] == 24 and saved["counts"] == rows[-1]["next_iters"]
    capsys.readouterr()
    assert main(["plot", str(out)]) == 0
    assert (out / "training.png").stat().st_size > 20_000


@pytest.mark.parametrize("target, expect", [(1e-9, "more"), (0.9, "fewer")])
def test_the_target_moves_the_counts(tmp_path, target, expect):
    out = tmp_path / "run"
    assert main(["train", TINY, "--out", str(out), *sets(*AUTO, f"train.grad_error_target={target}", "train.epochs=3")]) == 0
    rows = metrics(out)
    last = rows[-1]["next_iters"]
    if expect == "more":
        assert min(last) > 2 and rows[-1]["fwd_iters_mean"] > 2
    else:
        assert last == [1, 1] and rows[-1]["fwd_iters_mean"] < 2
        assert rows[-1]["layer_steps"] < rows[0]["layer_steps"]


def test_fixed_runs_count_their_layer_steps(tmp_path):
    for strategy, per_step in (("serial", 2 * 13), ("one_shot", None)):
        out = tmp_path / strategy
        assert main(["train", TINY, "--out", str(out), *sets(f"train.strategy={strategy}")]) == 0
        rows = metrics(out)
        assert "grad_checks" not in rows[0]
        if per_step is not None:
            assert rows[0]["layer_steps"] == per_step * 8  # 200 samples in batches of 25
        assert rows[1]["total_layer_steps"] == rows[0]["layer_steps"] + rows[1]["layer_steps"] > 0


@pytest.mark.mpi
@pytest.mark.parametrize("n", [1, 2])
def test_an_auto_run_resumes_bitwise(tmp_path, n):
    train = ["python", "-m", "mgrit_resnet", "train", TINY, "--out"]
    options = sets(*AUTO, "train.grad_check_every=3", "train.grad_error_target=0.001")
    mpirun(n, [*train, str(tmp_path / "straight"), *options, "--set", "train.epochs=4"])
    mpirun(n, [*train, str(tmp_path / "resumed"), *options, "--set", "train.epochs=2"])
    mpirun(n, [*train, str(tmp_path / "resumed"), *options, "--set", "train.epochs=4", "--resume"])
    straight, resumed = metrics(tmp_path / "straight"), metrics(tmp_path / "resumed")
    assert without_times(resumed) == without_times(straight)
    assert len({tuple(s[1:]) for r in straight for s in r["iters_schedule"]}) > 1, "the counts changed during the run"


@pytest.mark.mpi
def test_an_auto_run_resumes_at_another_rank_count_with_the_same_decisions(tmp_path):
    train = ["python", "-m", "mgrit_resnet", "train", TINY, "--out"]
    options = sets(*AUTO, "train.grad_check_every=3", "train.grad_error_target=0.001")
    mpirun(2, [*train, str(tmp_path / "straight"), *options, "--set", "train.epochs=4"])
    mpirun(2, [*train, str(tmp_path / "resumed"), *options, "--set", "train.epochs=2"])
    mpirun(3, [*train, str(tmp_path / "resumed"), *options, "--set", "train.epochs=4", "--resume"])
    straight, resumed = metrics(tmp_path / "straight"), metrics(tmp_path / "resumed")
    for a, b in zip(straight, resumed):
        for key in ("iters_schedule", "layer_steps", "total_layer_steps", "next_iters", "grad_error_target", "val_accuracy"):
            assert a[key] == b[key], key
        assert [c["step"] for c in a["grad_checks"]] == [c["step"] for c in b["grad_checks"]]
        for key in ("train_loss", "grad_error_estimate", "grad_error_measured"):
            assert a[key] == pytest.approx(b[key], rel=1e-9), key


def test_predict_and_tune_need_fixed_counts():
    from mgrit_resnet.studies import perfmodel, tune

    cfg = mr.load_config(TINY, {"train.fwd_iters": "auto"})
    with pytest.raises(ValueError, match='train.fwd_iters = "auto"'):
        perfmodel.predict(cfg, [1, 2])
    with pytest.raises(ValueError, match='train.fwd_iters = "auto"'):
        tune.gradient_error(cfg, 2)


def test_the_controller_state_is_plain_numbers():
    controller = IterationController(0.01, 5, (1, 4), (1, 4))
    run(controller, Solves(), 12)
    state = controller.state_dict()
    assert json.loads(json.dumps(state, allow_nan=False)) == state
    assert all(v is None or isinstance(v, (int, float, list, dict)) for v in state.values())
    assert not any(isinstance(v, float) and math.isnan(v) for v in state.values())


@pytest.mark.mpi
def test_an_auto_run_with_data_groups_counts_both_groups(tmp_path):
    train = ["python", "-m", "mgrit_resnet", "train", TINY, "--out"]
    options = sets(*AUTO, "train.grad_check_every=3")
    mpirun(2, [*train, str(tmp_path / "groups"), *options, "--set", "train.data_parallel=2"])
    mpirun(1, [*train, str(tmp_path / "one"), *options])
    groups, one = metrics(tmp_path / "groups"), metrics(tmp_path / "one")
    assert all(r["grad_checks"] and r["grad_error_estimate"] is not None for r in groups)
    # two groups each solve half the batch: every count of steps is the sum of both groups' (the same hierarchy, each as many)
    first = [c for c in groups[0]["grad_checks"] if c["step"] == 1][0]
    assert first["fwd_iters"] == 2 and first["bwd_iters"] == 2
    assert groups[0]["iters_schedule"][0] == one[0]["iters_schedule"][0] == [1, 2, 2]
    assert groups[0]["layer_steps"] > one[0]["layer_steps"]


def test_non_finite_residuals_leave_the_model_and_the_log_finite():
    controller = IterationController(0.01, 5, (1, 8), (1, 8))
    run(controller, Solves(), 6)
    before = controller.state_dict()
    nan = float("nan")
    controller.observe(StepObservation(2, 2, nan, nan, float("inf"), float("inf"), None))
    after = controller.state_dict()
    assert after["first"] == before["first"] and after["log_rho"] == before["log_rho"]
    json.loads(json.dumps(controller.end_epoch(1.0), allow_nan=False))
