"""User blocks on the general path against their serial twin under mpiexec at 1, 2, 3 and 4 ranks.

One launch per rank count runs ``tests/mpi/user_blocks.py``; depths 7, 11 and
13 do not divide evenly over 2, 3 or 4 ranks.
"""

import math

import pytest
from conftest import reports_per_rank_count

pytestmark = pytest.mark.mpi
RANKS = [1, 2, 3, 4]
CASES = [
    "conv_N11_L1",
    "conv_N13_L3_m2",
    "bottleneck_N7_L2_m2",
    "bottleneck_N13_L1",
    "mlp_N13_L3_m2_F",
    "mlp_N11_L1",
    "buffer_N11_L2_m3",
    "buffer_N7_L1",
    "bottleneck_N13_L3_m2_mean",
    "buffer_N11_L2_m3_mean",
]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    return reports_per_rank_count(tmp_path_factory, "tests/mpi/user_blocks.py", RANKS)


@pytest.mark.parametrize("n", RANKS)
@pytest.mark.parametrize("case", CASES)
def test_user_blocks_match_serial_autograd(reports, n, case):
    r = reports[n]["cases"][case]
    assert r["same_keys"] and r["same_init"], "the same network (buffers included), keyed like ODEResNet.state_dict()"
    assert r["fwd_converged"] and r["adj_converged"]
    assert r["output"] <= 1e-10 and r["grad"] <= 1e-10 and r["input_grad"] <= 1e-10
    assert r["predict"] <= 1e-12
    if "_L1" in case:
        assert r["bitwise"], "one level is layer-serial propagation by autograd: bitwise the serial result"
        assert r["fwd_iterations"] == r["adj_iterations"] == 1


@pytest.mark.parametrize("n", RANKS)
def test_one_shot_with_warm_starts(reports, n):
    first, second = reports[n]["one_shot"]["errors"]
    assert all(math.isfinite(e) for e in (first, second))
    assert second < 0.01 and second < first, "the second step on the same batch starts from the first one's states"
    assert reports[n]["one_shot"]["warm_keys"] == [0]
    assert (first, second) == pytest.approx(reports[1]["one_shot"]["errors"], rel=1e-8), "the same iterates at every rank count"


@pytest.mark.parametrize("n", RANKS)
def test_a_bad_block_on_one_rank_is_the_same_error_everywhere(reports, n):
    where = f" (on rank {n - 1})" if n > 1 else ""
    for messages in reports[n]["errors"]:
        assert messages["batchnorm"].startswith("ValueError: layer 10 (BatchNorm2d '1'): BatchNorm in training mode")
        assert "use GroupNorm or LayerNorm" in messages["batchnorm"] and messages["batchnorm"].endswith(where)
        assert messages["raises"] == f"ValueError: layer 10: make_block(10) raised RuntimeError: no block here{where}"
        assert messages["not_module"] == f"TypeError: layer 10: make_block(10) must return a torch.nn.Module; got str{where}"
        assert messages["reshapes"].startswith("ValueError: layer 10: the block maps a state of shape (2, 4, 4, 4)")
    assert len({str(m) for m in reports[n]["errors"]}) == 1


@pytest.mark.parametrize("n", RANKS)
def test_mean_coarse_blocks_make_the_coarse_pass_more_accurate(reports, n):
    errors = reports[n]["coarse_weights"]
    # conv-act-conv: the mean of the blocks is not the sum of their steps to first order (products of weights), but it is closer
    assert errors["mean"] < 0.8 * errors["first"]
    assert errors["mean"] == pytest.approx(reports[1]["coarse_weights"]["mean"], rel=1e-8), "the same at every rank count"


@pytest.mark.parametrize("n", RANKS)
def test_one_coarse_pass_on_user_blocks_converges_over_calls_with_a_warm_start(reports, n):
    errors = reports[n]["lagged_pass"]
    assert errors[0] == pytest.approx(reports[n]["coarse_weights"]["mean"], rel=1e-10), "the first call has no right-hand side yet"
    assert errors[1] < 0.2 * errors[0] and errors[2] < 0.2 * errors[1], "each call corrects the last one's coarse error"
    assert errors == pytest.approx(reports[1]["lagged_pass"], rel=1e-6), "the same iterates at every rank count"
