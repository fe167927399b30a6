"""The performance model of a network of stages: the schedule, the calibration, ``predict`` and ``tune``."""

import json
import math

import pytest
from conftest import ROOT

import mgrit_resnet as mr
from mgrit_resnet.cli import main
from mgrit_resnet.nn.partition import layer_partition
from mgrit_resnet.studies import perfmodel
from mgrit_resnet.studies.schedule import StagedCosts, StepCosts
from mgrit_resnet.studies.tune import candidate_configs, candidates

STAGED = ROOT / "examples" / "staged_mnist.toml"
TWO_LEVEL = dict(levels=2, coarsening=2, min_coarse=2, relax="F", cycle="V", initial_guess="zero")
#: Stage depths that divide none of the rank counts below.
DEPTHS = [9, 12, 7]
NETWORK = (3e-5, 2e-9)  # alpha and beta large enough that every message, and every size, shows


def stage_costs(per_layer: float = 0.0) -> list[StepCosts]:
    """Three stages of different step costs, state and layer sizes (powers of two: the sums are exact)."""

    def stage(k: int, state_bytes: int, weight_bytes: int) -> StepCosts:
        fine, coarse = 2.0 ** -(10 + k), 2.0 ** -(9 + k)
        return StepCosts(
            forward=[fine, coarse], adjoint=[2 * fine, 2 * coarse], overhead=2.0 ** -(14 + k), per_layer=per_layer,
            state_bytes=state_bytes, weight_bytes=weight_bytes,
        )  # fmt: skip

    return [stage(0, 2**16, 2**9), stage(1, 2**14, 2**11), stage(2, 2**12, 2**13)]


def staged_costs(per_layer: float = 0.0) -> StagedCosts:
    return StagedCosts(
        depths=list(DEPTHS),
        stages=stage_costs(per_layer),
        updates=[2.0**-13, 2.0**-12, 2.0**-11],
        transition_forward=[2.0**-7, 2.0**-6],
        transition_backward=[2.0**-5, 2.0**-4],
        replicated=2.0**-3,
        replicated_bytes=2**10,
    )


def sum_of_stages(costs: StagedCosts, options: dict, ranks: int, iterations: tuple[int, int]) -> tuple[float, list[float]]:
    """The sum the staged step must equal: every stage's one-stage step (its solves and broadcasts, at its own
    costs and sizes, no replicated work), the transitions both ways, the ends and, at the end, the updates of the
    rank with the most update work; and the pieces of that sum."""
    stages = [
        perfmodel.simulate_training_step(depth, options, ranks, stage, NETWORK, *iterations)[0]
        for depth, stage in zip(costs.depths, costs.stages)
    ]
    owned = [[bounds[r + 1] - bounds[r] for r in range(ranks)] for _, _, bounds in (layer_partition(d, ranks) for d in costs.depths)]
    updates = max(sum(u * owned[s][r] for s, u in enumerate(costs.updates)) for r in range(ranks))
    pieces = [*stages, *costs.transition_forward, *costs.transition_backward, costs.replicated, updates]
    return sum(pieces), pieces


# ---------------------------------------------------------------------- the schedule
@pytest.mark.parametrize("options", [dict(levels=1), TWO_LEVEL, dict(levels=3, coarsening=2, min_coarse=2, relax="FCF")])
def test_one_stage_of_the_staged_schedule_is_the_one_stage_schedule(options):
    """The staged schedule of one stage charges what the one-stage model charges, in the same order: the same figures."""
    costs = StepCosts(
        forward=[1.3e-4, 2.1e-4, 3.3e-4], adjoint=[1.7e-4, 2.9e-4], overhead=1.1e-5, per_layer=3.7e-5, replicated=2.3e-3,
        state_bytes=50_000, weight_bytes=1234, layers=13, replicated_bytes=999,
    )  # fmt: skip
    for ranks in (1, 2, 3, 5, 7):
        for groups in (1, 3):
            one = perfmodel.simulate_training_step(13, options, ranks, costs, NETWORK, 2, 1, groups)
            time, calls = perfmodel.simulate_staged_step(options, ranks, StagedCosts.one_stage(13, costs), NETWORK, 2, 1, groups)
            assert time == one[0], (ranks, groups)
            assert calls == {"forward": [one[1]["forward"]], "adjoint": [one[1]["adjoint"]]}


@pytest.mark.parametrize("options", [dict(levels=1), TWO_LEVEL])
def test_a_staged_step_is_the_sum_of_its_stages_and_the_replicated_work(options):
    """Every stage's solves end on a synchronising collective, so with the gradients of the layers charged at the end
    (``per_layer = 0``), the step is exactly the sum of every stage's one-stage step and the replicated work.

    Each piece is a sizeable share of the whole and the stages differ in every cost and size: a stage solved twice or
    not at all, a stage stepped or broadcast at another stage's cost or size, a transition left out, the updates of
    the wrong rank, all break the equality.
    """
    costs = staged_costs()
    for ranks in (1, 2, 3, 4):
        time, calls = perfmodel.simulate_staged_step(options, ranks, costs, NETWORK, 2, 1)
        expected, pieces = sum_of_stages(costs, options, ranks, (2, 1))
        assert time == pytest.approx(expected, rel=1e-12, abs=0), ranks
        assert min(pieces) > 1e-4 * time, "every piece shows"
        assert len(calls["forward"]) == len(calls["adjoint"]) == 3
        for s, depth in enumerate(DEPTHS):  # every stage steps its own layers
            one = perfmodel.simulate_training_step(depth, options, ranks, costs.stages[s], NETWORK, 2, 1)[1]
            assert (calls["forward"][s], calls["adjoint"][s]) == (one["forward"], one["adjoint"])
    # The sizes count: the stages' states broadcast (and sent) at the first stage's size give another figure.
    same = staged_costs()
    for stage in same.stages:
        stage.state_bytes = costs.stages[0].state_bytes
    assert (
        perfmodel.simulate_staged_step(options, 4, same, NETWORK, 2, 1)[0]
        > perfmodel.simulate_staged_step(options, 4, costs, NETWORK, 2, 1)[0]
    )


def test_a_staged_step_on_one_rank_is_every_charge_once():
    costs = staged_costs(per_layer=2.0**-12)
    time, calls = perfmodel.simulate_staged_step(TWO_LEVEL, 1, costs, NETWORK, 2, 1)

    def charged(stage, counts):
        return sum(n * (stage[min(level, len(stage) - 1)]) for level, n in counts.items())

    steps = sum(
        charged(st.forward, calls["forward"][s]) + charged(st.adjoint, calls["adjoint"][s])
        + st.overhead * (sum(calls["forward"][s].values()) + sum(calls["adjoint"][s].values()))
        for s, st in enumerate(costs.stages)
    )  # fmt: skip
    layers = sum((st.per_layer + u) * d for st, u, d in zip(costs.stages, costs.updates, DEPTHS))
    replicated = sum(costs.transition_forward) + sum(costs.transition_backward) + costs.replicated
    assert time == pytest.approx(steps + layers + replicated, rel=1e-12)


def test_data_groups_sum_every_stages_gradients_once():
    """One allreduce after the step, of a rank's own layers of every stage and the replicated parameters."""
    costs = staged_costs()
    beta = 1e-6
    base, _ = perfmodel.simulate_staged_step(TWO_LEVEL, 1, costs, (0.0, beta), 2, 1)
    time, _ = perfmodel.simulate_staged_step(TWO_LEVEL, 1, costs, (0.0, beta), 2, 1, data_groups=2)
    gradient_bytes = sum(d * st.weight_bytes for d, st in zip(DEPTHS, costs.stages)) + costs.replicated_bytes
    assert time == pytest.approx(base + beta * gradient_bytes, rel=1e-12)


# ---------------------------------------------------------------------- predict
def staged_config(**overrides):
    return mr.load_config(STAGED, overrides={"network.depths": list(DEPTHS), "network.widths": [4, 8, 8], **overrides})


def test_predict_of_a_staged_config_at_several_rank_counts_sums_its_stages():
    cfg = staged_config(**{"mgrit.levels": 2, "mgrit.coarsening": 2, "mgrit.relax": "F", "train.fwd_iters": 2, "train.bwd_iters": 1})
    costs = staged_costs()
    calibration = perfmodel.Calibration(costs, serial_time=1.0, one_rank_time=1.0, iterations=(2, 1), what="test")
    _, rows = perfmodel.predict(cfg, [1, 2, 3, 4, 5], network=NETWORK, calibration=calibration)
    options = perfmodel.solver_options(cfg)
    for row in rows[:4]:
        assert row.time == pytest.approx(sum_of_stages(costs, options, row.ranks, (2, 1))[0], rel=1e-12), row.ranks
        assert row.speedup == 1.0 / row.time
    # 7 layers of the last stage cannot go over 5 ranks (2 * 5 - 1 = 9)
    assert rows[4].time is None and "network.depths[2] = 7 < 2 * ranks - 1 = 9" in rows[4].note


def test_predict_of_a_staged_config_with_data_groups_splits_the_ranks():
    cfg = staged_config(**{"train.data_parallel": 2})
    costs = staged_costs()
    calibration = perfmodel.Calibration(costs, serial_time=1.0, one_rank_time=1.0, iterations=(2, 1), what="test")
    _, rows = perfmodel.predict(cfg, [3, 4], network=NETWORK, calibration=calibration)
    assert rows[0].time is None and "train.data_parallel must divide the number of ranks (3)" in rows[0].note
    options = perfmodel.solver_options(cfg)
    assert rows[1].time == perfmodel.simulate_staged_step(options, 2, costs, NETWORK, 2, 1, data_groups=2)[0]


def test_a_network_of_one_stage_is_predicted_as_the_one_stage_network():
    """``network.depths = [N]`` and ``network.depth = N`` with the same costs: the same figures at every rank count."""
    one = mr.load_config(STAGED, overrides={"network.depths": [], "network.widths": [], "network.depth": 13, "network.width": 8})
    staged = mr.load_config(STAGED, overrides={"network.depths": [13], "network.widths": [8]})
    costs = StepCosts(
        forward=[1e-4, 3e-4], adjoint=[2e-4, 5e-4], overhead=1e-5, per_layer=4e-5, replicated=2e-3, state_bytes=4096, weight_bytes=2336
    )
    ranks = [1, 2, 3, 4, 7, 8]
    for groups in (1, 2):
        first = perfmodel.Calibration(costs, 0.5, 0.5, (2, 1), "one stage")
        second = perfmodel.Calibration(StagedCosts.one_stage(13, costs), 0.5, 0.5, (2, 1), "one stage of a network of stages")
        _, a = perfmodel.predict(one.with_overrides({"train.data_parallel": groups}), ranks, network=NETWORK, calibration=first)
        _, b = perfmodel.predict(staged.with_overrides({"train.data_parallel": groups}), ranks, network=NETWORK, calibration=second)
        assert [r.time for r in a] == [r.time for r in b]
        assert [r.time is None for r in a] == [p % groups != 0 or 2 * (p // groups) - 1 > 13 for p in ranks]


def test_staged_calibration_measures_every_stage_at_its_own_size_and_reproduces_one_rank():
    cfg = staged_config(**{"network.depths": [3, 5, 3], "network.widths": [2, 4, 4], "train.batch_size": 4, "mgrit.coarsening": 2})
    calibration, rows = perfmodel.predict(cfg, [1, 2, 3], network=NETWORK)
    costs = calibration.costs
    assert isinstance(costs, StagedCosts) and costs.depths == [3, 5, 3]
    assert calibration.what == "one-shot training step of 3 stages (3/5/3 layers)"
    assert rows[0].time == pytest.approx(calibration.one_rank_time, rel=1e-6)
    assert rows[1].time is not None and rows[2].time is None and "network.depths[0] = 3 < 2 * ranks - 1 = 5" in rows[2].note
    # states of 2, 4 and 4 channels at 28, 14 and 7 pixels a side (float32, a batch of 4); a layer a 3x3 conv and a bias
    assert [s.state_bytes for s in costs.stages] == [4 * 4 * c * n * n for c, n in ((2, 28), (4, 14), (4, 7))]
    assert [s.weight_bytes for s in costs.stages] == [4 * (9 * c * c + c) for c in (2, 4, 4)]
    assert all(c > 0 for s in costs.stages for c in s.forward + s.adjoint) and all(u > 0 for u in costs.updates)
    assert len(costs.transition_forward) == len(costs.transition_backward) == 2 and costs.replicated > 0
    assert costs.replicated_bytes == 4 * sum((9 * a + 1) * b for a, b in ((1, 2), (2, 4), (4, 4))) + 4 * (4 * 10 + 10)
    assert json.loads(json.dumps(calibration.as_dict()))["costs"]["depths"] == [3, 5, 3]


BUILDER = """
from torch import nn
from mgrit_resnet.nn import Stage


def build(options):
    block = lambda n: nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.Tanh())
    return {
        "stages": [Stage(5, 1.0, block=block), dict(depth=7, t_final=1.0, kind="conv", width=4)],
        "transitions": [nn.Conv2d(1, 4, 3, stride=2, padding=1)],
        "closing": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)),
    }
"""


def test_a_builder_that_returns_stages_is_predicted_stage_by_stage(tmp_path):
    """``network.kind = "module"``: the config does not know the stages; the calibration does (no opening here)."""
    (tmp_path / "builder.py").write_text(BUILDER)
    overrides = {"network.depths": [], "network.widths": [], "network.kind": "module", "network.module": f"{tmp_path / 'builder.py'}:build"}
    cfg = mr.load_config(
        STAGED, overrides={**overrides, "train.batch_size": 4, "mgrit.coarsening": 2, "data.n_train": 100, "data.n_val": 10}
    )
    calibration, rows = perfmodel.predict(cfg, [1, 2, 3, 4], network=NETWORK)
    assert calibration.costs.depths == [5, 7] and [s.state_bytes for s in calibration.costs.stages] == [
        4 * 4 * 28 * 28,
        4 * 4 * 4 * 14 * 14,
    ]
    assert rows[0].time == pytest.approx(calibration.one_rank_time, rel=1e-6)
    assert all(r.time is not None for r in rows[:3])
    assert rows[3].time is None and "stages[0] has 5 layers < 2 * ranks - 1 = 7" in rows[3].note


def test_predict_verb_on_the_staged_example(tmp_path, capsys):
    doc = tmp_path / "p.json"
    ranks = "1,2,4,8,16,32,64,128,256"
    assert main(["predict", str(STAGED), "--set", "train.batch_size=4", "--ranks", ranks, "--json", str(doc)]) == 0
    text = capsys.readouterr().out
    assert "one-shot training step of 3 stages (8/8/8 layers)" in text
    assert text.count("stage ") >= 3 and "transitions (forward / backward, ms)" in text
    assert "efficiency" in text and "network.depths[0] = 8 < 2 * ranks - 1 = 15" in text
    rows = json.loads(doc.read_text())["rows"]
    assert [r["ranks"] for r in rows] == [int(p) for p in ranks.split(",")]
    assert [r["time"] is not None for r in rows] == [True, True, True] + [False] * 6
    assert math.isclose(rows[0]["time"], json.loads(doc.read_text())["calibration"]["one_rank_time"], rel_tol=1e-6)


# ---------------------------------------------------------------------- tune
def test_candidates_give_every_stage_a_coarse_level():
    # 13 layers: m = 4 gives 14 -> 4 points; 3 layers: 4 -> 1, no coarse level: m = 4 is out
    assert candidates(13, [2, 3, 4], [2, 4], min_coarse=2) == [(2, 2), (3, 2), (4, 2), (2, 4)]
    assert candidates([13, 3], [2, 3, 4], [2, 4], min_coarse=2) == [(2, 2), (3, 2), (4, 2)]
    # 9 layers build 4 levels with m = 2, 7 layers only 3: levels is the most any stage builds, each pair once
    assert candidates([9, 12, 7], [2, 3, 4, 5], [2, 4], min_coarse=2) == [(2, 2), (3, 2), (4, 2), (2, 4)]
    assert candidates([13], [2, 3], [4], min_coarse=2) == candidates(13, [2, 3], [4], min_coarse=2) == [(2, 4)]
    cfg = staged_config(**{"network.depths": [13, 3], "network.widths": [2, 4]})
    assert [key[:2] for key in candidate_configs(cfg, [2, 3, 4], [2, 4])] == [(2, 2), (3, 2), (4, 2)]


def test_tune_verb_on_a_staged_network(tmp_path, capsys):
    doc = tmp_path / "tune.json"
    overrides = ["--set", "network.depths=[3,5,3]", "--set", "network.widths=[2,4,4]", "--set", "train.batch_size=4"]
    args = ["tune", str(STAGED), *overrides, "--ranks", "2", "--levels", "2", "--coarsening", "2", "--steps", "2", "--rounds", "1"]
    assert main([*args, "--max-error", "1", "--json", str(doc)]) == 0
    assert "Pareto front" in capsys.readouterr().out
    (row,) = json.loads(doc.read_text())["rows"]
    assert (row["levels"], row["coarsening"], row["ranks"]) == (2, 2, 2)
    assert row["time"] > 0 and 0 < row["grad_error"] < 1


@pytest.mark.parametrize(
    "options, message",
    [
        (["--ranks", "3"], "--ranks 3: network.depths[0] = 3 < 2 * ranks - 1 = 5"),
        (["--ranks", "2", "--coarsening", "4"], "no multilevel hierarchy from --levels 2,3,4 and --coarsening 4 on stages of 3/5/3 layers"),
    ],
)
def test_tune_bad_input_on_a_staged_network(options, message, capsys):
    overrides = ["--set", "network.depths=[3,5,3]", "--set", "network.widths=[2,4,4]"]
    assert main(["tune", str(STAGED), *overrides, *options]) == 2
    assert message in capsys.readouterr().err
