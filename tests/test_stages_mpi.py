"""Staged networks (StagedParallel) against their serial twin (StagedResNet) under mpiexec at 1, 2, 3 and 4 ranks.

One launch per rank count runs ``tests/mpi/stages.py`` (float64; stage depths 7,
9 and 11 do not divide evenly over 2, 3 or 4 ranks; 1, 2 and 3 levels,
coarsening 2 and 4).

Every network there has a transition with a large effect right after a stage
of 7 layers: a strided convolution that halves the resolution, changes 3
channels into 4 and multiplies by 10. Were the stages one time line, with the
transition as one more step, it would be step 7 (steps 0-6 are the first
stage's layers), the step from point 7 to point 8. A coarse step of stride
``s`` into the coarse point ``c`` applies only the step at the start of its
interval, ``c - s``, with step size ``s h``: with coarsening 2 the coarse
points are 0, 2, 4, 6, 8, ... and the coarse step 6 -> 8 applies layer 6;
with coarsening 4 the step 4 -> 8 applies layer 4. Step 7 starts no coarse
interval on any level (7 is a multiple of neither 2 nor 4), so every coarse
grid would skip the transition and propagate a state of the wrong shape and
scale (:func:`test_a_single_time_line_would_skip_the_transition` checks that).
Here each stage is its own MGRIT solve and the transition runs between two
solves on every rank, so no grid can skip it: logits, input gradient and every
gradient (the transition's included) equal the serial twin's.
"""

import json
import math

import pytest
from conftest import ROOT, mpirun, reports_per_rank_count

from mgrit_resnet.cli import main
from mgrit_resnet.hierarchy import Hierarchy

pytestmark = pytest.mark.mpi
RANKS = [1, 2, 3, 4]
CASES = ["user_L1", "user_L2_m2", "mixed_L3_m2", "mixed_L2_m4", "builtin_L1", "builtin_L3_m2_F", "config_pool2_L2_m2"]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    return reports_per_rank_count(tmp_path_factory, "tests/mpi/stages.py", RANKS)


@pytest.mark.parametrize("coarsening", [2, 4])
def test_a_single_time_line_would_skip_the_transition(coarsening):
    transition = 7  # the step after the first stage's 7 layers, on one time line of 7 + 1 + 9 steps
    line = Hierarchy.build(7 + 1 + 9 + 1, levels=3, coarsening=coarsening)
    assert line.n_levels > 1
    starts = {level: range(0, line.n_points - 1, line.stride(level)) for level in range(1, line.n_levels)}
    assert all(transition not in s for s in starts.values()), "no coarse step starts at the transition: every coarse level skips it"


@pytest.mark.parametrize("n", RANKS)
@pytest.mark.parametrize("case", CASES)
def test_staged_networks_match_the_serial_twin(reports, n, case):
    r = reports[n]["cases"][case]
    assert r["same_keys"] and r["same_init"], "the same network, keyed like StagedResNet.state_dict()"
    assert r["converged"]
    assert r["output"] <= 1e-10 and r["input_grad"] <= 1e-10 and r["grad"] <= 1e-10 and r["transition_grad"] <= 1e-10
    assert r["predict"] <= 1e-12
    assert r["stage_count"] == (2 if case.startswith(("user", "config")) else 3)
    if "_L1" in case:
        assert r["bitwise"], "one level is layer-serial propagation: bitwise the serial result"
        assert r["fwd_iterations"] == r["adj_iterations"] == 1


@pytest.mark.parametrize("n", RANKS)
@pytest.mark.parametrize("case", ["mixed_L3_m2", "builtin_L1"])
def test_every_rank_holds_its_share_of_every_stage(reports, n, case):
    r = reports[n]["cases"][case]
    for s, depth in enumerate(r["depths"]):
        blocks = [ranks_ranges[s] for ranks_ranges in r["owned_layers"]]  # rank order
        assert blocks[0][0] == 0 and blocks[-1][1] == depth and all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
        assert all(stop - start >= 1 for start, stop in blocks), "every rank holds layers of every stage"


@pytest.mark.parametrize("n", RANKS)
def test_builtin_stages_with_a_pooled_closing(reports, n):
    r = reports[n]["cases"]["config_pool2_L2_m2"]
    assert r["closing_shape"] == [3, 4 * 2 * 2], "network.head_pool = 2: widths[-1] * head_pool**2 inputs"
    assert r["output"] <= 1e-12 and r["grad"] <= 1e-12 and r["input_grad"] <= 1e-12


@pytest.mark.parametrize("n", RANKS)
def test_a_whole_state_dict_loads_at_any_rank_count(reports, n):
    assert reports[n]["reload"]["state"]
    assert reports[n]["reload"]["root_only"] == [True] * n, "root_only: the whole state dict on rank 0, None elsewhere"
    assert reports[n]["reload"]["logits"] <= 1e-10


@pytest.mark.parametrize("n", RANKS)
def test_one_shot_with_warm_starts_per_stage(reports, n):
    r = reports[n]["one_shot"]
    first, second = r["errors"]
    assert all(math.isfinite(e) for e in (first, second))
    assert second < 0.02 and second < first / 2, "the second step on the same batch starts every stage from the first one's states"
    assert max(r["stage_errors"]) < 0.05
    assert r["warm_keys"] == [0] and r["warm_stages"] == 2
    assert (first, second) == pytest.approx(reports[1]["one_shot"]["errors"], rel=1e-8), "the same iterates at every rank count"
    assert r["warm_norm"] == pytest.approx(reports[1]["one_shot"]["warm_norm"], rel=1e-10), "whole trajectories, whatever the rank count"


@pytest.mark.parametrize("n", RANKS)
def test_bad_input_is_the_same_clear_error_on_every_rank(reports, n):
    errors = reports[n]["errors"]
    assert len({str(e) for e in errors}) == 1, "every rank raises the same error"
    m = errors[0]
    where = " (on rank 0)" if n > 1 else ""
    fit = "ValueError: transitions[0] gives states of shape (5, 2, 2) (torch.float64), which do not fit stages[1]: "
    for key in ("fit_built", "fit_call"):
        assert m[key].startswith(fit + "layer 0: the block raised RuntimeError") and m[key].endswith(where)
    assert m["fit_builtin_built"] == fit + "the states of conv layers of width 4 must have shape (batch, 4, H, W); got (2, 5, 2, 2)"
    assert m["fit_builtin_call"] == fit + "the states of conv layers of width 4 must have shape (batch, 4, H, W); got (3, 5, 2, 2)"
    if n == 1:
        assert m["shallow"] is None
    else:
        assert m["shallow"] == (
            f"ValueError: stages[1].depth must be at least 2 * ranks - 1 = {2 * n - 1} so that every rank holds a layer "
            f"of every stage; got {2 * n - 2}"
        )
    assert m["lengths"] == "ValueError: transitions must hold one module between every two stages: 3 stages need 2 transitions; got 1"
    assert m["not_module"] == f"TypeError: transitions[0] must be a torch.nn.Module; got str{where}"


TINY = str(ROOT / "examples" / "tiny_train.toml")
STAGED = ["network.kind=conv", "network.in_channels=1", "network.image_size=6", "network.depths=[5,5,5]", "network.widths=[2,3,4]"]
STAGED += ["data.n_train=40", "data.n_val=20", "train.batch_size=10"]


def cli(verb, *sets, out=None, extra=()):
    args = [verb, TINY, *(a for s in [*STAGED, *sets] for a in ("--set", s)), *extra]
    return args + (["--out", str(out)] if out is not None else [])


def test_train_and_verify_a_staged_network_and_resume_it_at_another_rank_count(tmp_path):
    """One-shot training of built-in stages (``network.depths``): 3 epochs on one rank, and 2 epochs on 2 ranks
    resumed to 3 on 3 ranks, have the same losses (the checkpoint and the warm starts move between rank counts)."""
    straight, part = tmp_path / "straight", tmp_path / "part"
    assert main(cli("train", "train.epochs=3", out=straight)) == 0
    mpirun(2, ["python", "-m", "mgrit_resnet", *cli("train", "train.epochs=2", out=part)])
    mpirun(3, ["python", "-m", "mgrit_resnet", *cli("train", "train.epochs=3", out=part, extra=["--resume"])])
    rows = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (straight, part)]
    assert len(rows[1]) == 3
    for a, b in zip(*rows):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-8) and a["val_accuracy"] == b["val_accuracy"]
    summary = json.loads((part / "summary.json").read_text())
    assert summary["ranks"] == 3 and summary["owned_layers"][2] == [[3, 5], [3, 5], [3, 5]], "rank 2's layers of every stage"
    mpirun(2, ["python", "-m", "mgrit_resnet", *cli("verify", extra=["--json", str(tmp_path / "verify.json")])])
    assert json.loads((tmp_path / "verify.json").read_text())["passed"]
