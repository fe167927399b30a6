"""The layer-parallel network against its serial twin under mpiexec at 1, 2, 3 and 4 ranks.

One launch per rank count runs ``tests/mpi/layer_parallel.py``; depths 7, 13
and 37 do not divide evenly over 2, 3 or 4 ranks.
"""

import pytest
from conftest import reports_per_rank_count

pytestmark = pytest.mark.mpi
RANKS = [1, 2, 3, 4]
CASES = [
    "dense_N13_L1",
    "dense_N13_L2_m2",
    "dense_N37_L3_m3_smooth",
    "dense_N37_L2_m4_relu_F",
    "conv_N13_L3_m2",
    "conv_N37_L2_m4_smooth",
    "conv_N37_L1_relu",
    "dense_N37_float32",
    "conv_N37_L3_m3_mean",
    "dense_N13_L2_m2_mean",
    "conv_N7_L2_m2_pool2",
]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    return reports_per_rank_count(tmp_path_factory, "tests/mpi/layer_parallel.py", RANKS)


@pytest.mark.parametrize("n", RANKS)
@pytest.mark.parametrize("case", CASES)
def test_logits_and_every_gradient_match_serial_autograd(reports, n, case):
    r = reports[n]["cases"][case]
    assert r["same_keys"] and r["same_init"], "the same network, keyed like ODEResNet.state_dict()"
    assert r["fwd_converged"] and r["adj_converged"]
    tol = 1e-5 if "float32" in case else 1e-10
    assert r["output"] <= tol and r["grad"] <= tol and r["input_grad"] <= tol
    assert r["predict"] <= (1e-6 if "float32" in case else 1e-13), "predict, the batch in parts through the ranks: serial to rounding"
    if "_L1" in case:
        assert r["bitwise"], "one level is layer-serial propagation: bitwise the serial result"
        assert r["fwd_iterations"] == r["adj_iterations"] == 1


@pytest.mark.parametrize("n", RANKS)
def test_a_classifier_on_the_pooled_state_matches_serial_autograd_tightly(reports, n):
    r = reports[n]["cases"]["conv_N7_L2_m2_pool2"]
    assert r["classifier_shape"] == [3, 2 * 2 * 2], "network.head_pool = 2: width * head_pool**2 inputs"
    assert reports[n]["cases"]["conv_N13_L3_m2"]["classifier_shape"] == [3, 3], "head_pool = 1: width inputs"
    assert r["output"] <= 1e-12 and r["grad"] <= 1e-12 and r["input_grad"] <= 1e-12 and r["predict"] <= 1e-13


@pytest.mark.parametrize("n", RANKS)
def test_every_rank_holds_exactly_its_own_layers(reports, n):
    own = reports[n]["ownership"]
    assert all(own["names_match"])
    starts, stops = zip(*own["owned"])
    assert starts[0] == 0 and stops[-1] == 37 and list(starts[1:]) == list(stops[:-1]), "the layers are split without overlap"
    assert own["layer_numel"] == [(b - a) * own["per_layer_numel"] for a, b in own["owned"]]
    assert max(b - a for a, b in own["owned"]) <= -(-37 // n) + 1, "balanced: memory ~ N / P"


@pytest.mark.parametrize("n", RANKS)
def test_one_shot_gradient_error_falls_with_the_iteration_counts(reports, n):
    rows = {(f, b): err for f, b, err, fi, bi in reports[n]["one_shot"]}
    assert all(fi == f and bi == b for f, b, _, fi, bi in reports[n]["one_shot"]), "exactly the requested iterations"
    assert rows[(2, 1)] <= 1.01 * rows[(1, 1)]
    assert rows[(3, 3)] < 0.1 * rows[(2, 1)]
    assert rows[(5, 5)] < 0.1 * rows[(3, 3)]


@pytest.mark.parametrize("n", RANKS)
def test_warm_start_applies_to_the_same_batch_only(reports, n):
    first, second, third, other = reports[n]["warm_start"]
    assert second < 0.2 * first and third < 0.2 * second, "each call continues from the last one's states"
    assert other > 0.5 * first, "another batch starts cold"
    as_is = reports[n]["warm_as_is"]
    assert as_is[0] == pytest.approx(first, rel=1e-9), "the first call is cold either way"
    assert as_is[2] < 0.2 * as_is[1] < 0.2 * 0.2 * as_is[0], "warm starts taken as they are still improve call by call"
    assert as_is == pytest.approx(reports[1]["warm_as_is"], rel=1e-6), "the same iterates at every rank count"


@pytest.mark.parametrize("n", RANKS)
def test_two_calls_before_one_backward(reports, n):
    assert reports[n]["two_calls"] <= 1e-10, "the second call's solves must not overwrite what the first call's backward needs"


@pytest.mark.parametrize("n", RANKS)
def test_bad_input_is_an_error_on_every_rank(reports, n):
    last = n - 1 if n > 1 else 0
    for messages in reports[n]["errors"]:
        assert messages["shape"] == "the dense network input must have shape (batch, 3); got (4, 5)" + (" (on rank 0)" if n > 1 else "")
        assert messages["nan_on_last_rank"].startswith("the network input contains NaN or infinite values")
        if n > 1:
            assert messages["nan_on_last_rank"].endswith(f"(on rank {last})")
        assert messages["depth"] == "network.depth must be an integer >= 1; got 0"
        assert "mgrit.coarsening=16 leaves no coarse grid for network.depth=13" in messages["coarsening"]
        assert "network.activation must be one of 'tanh', 'relu', 'smooth_relu'" in messages["activation"]


@pytest.mark.parametrize("n", RANKS)
def test_mean_coarse_weights_make_the_coarse_pass_far_more_accurate(reports, n):
    errors = reports[n]["coarse_weights"]
    assert errors["mean"] < errors["first"] / 3, "a coarse step with the interval's mean weights is the sum of its steps to first order"
    assert errors["mean"] == pytest.approx(reports[1]["coarse_weights"]["mean"], rel=1e-8), "the same at every rank count"


@pytest.mark.parametrize("n", RANKS)
def test_one_coarse_pass_with_a_warm_start_takes_the_last_calls_coarse_right_hand_side(reports, n):
    lagged = reports[n]["lagged_pass"]
    warm, cold = lagged["warm"], lagged["cold"]
    assert cold[0] == cold[1] == cold[2] == pytest.approx(warm[0], rel=1e-12), "without a warm start every call repeats the first"
    assert warm[1] < 0.2 * warm[0] and warm[2] < 0.2 * warm[1] and warm[3] < 0.2 * warm[2], "each call corrects the last"
    assert lagged["rhs_points"] == list(range(4, 37, 4)), "kept at the C-points of the first coarse level (the point 0 has none)"
    assert lagged["forward_states"] == 0, "no fine state is kept: the pass reads none"
    assert lagged["packed_equal"], "the packed trajectories hold the same states"
    assert lagged["root_only"] == {
        "rank0_same": True, "elsewhere_none": True, "state_rank0_same": True, "state_elsewhere_none": True,
    }, "root_only: the same warm starts and network on rank 0, nothing elsewhere"  # fmt: skip
    assert lagged["packed_points"] == lagged["rhs_points"] and 1 <= lagged["packed_segments"] <= n, "one stack per rank that holds some"
    assert warm == pytest.approx(reports[1]["lagged_pass"]["warm"], rel=1e-6), "the same iterates at every rank count"
    two = lagged["two_iterations"]
    assert all(t < 0.1 * w for t, w in zip(two, warm)), "a second iteration after the pass corrects it further"
    assert two == pytest.approx(reports[1]["lagged_pass"]["two_iterations"], rel=1e-6), "the same iterates at every rank count"
    # N = 37, m = 4: 9 coarse steps for the pass and 9 for the cycle, 28 F-point steps and 9 probes per iteration.
    assert lagged["two_iterations_steps"] == 9 + 2 * (28 + 9) + 9, "no coarse step made twice (the chain gives the right-hand side)"
