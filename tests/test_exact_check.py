"""The exact check of a one-shot step measures the whole gradient's error against serial backprop, at 1-3 ranks.

``tests/mpi/exact_check.py`` runs the steps; here the serial network, built
from the same weights, gives the reference by autograd. The error is that of
everything the optimiser sees: the layers' gradients and the opening's and
the classifier's (or the closing's and the transitions'), which the forward
solve's error reaches through the final state.
"""

import json

import pytest
import torch
from conftest import mpirun
from torch import nn

import mgrit_resnet as mr
from mgrit_resnet.nn import serial_from_config

SMALL = {"network.dtype": "float64", "data.n_train": 100, "data.n_val": 20, "train.batch_size": 20}
CASES = {
    "dense": ("examples/tiny_train.toml", {"train.fwd_iters": 1, "train.bwd_iters": 1}),
    "staged": (
        "examples/digits.toml",
        {
            **SMALL,
            "network.kind": "conv",
            "network.depths": [7, 6],
            "network.widths": [2, 3],
            "mgrit.levels": 2,
            "mgrit.coarsening": 2,
            "mgrit.relax": "F",
            "train.fwd_iters": 1,
            "train.bwd_iters": 1,
        },
    ),
    "user": ("examples/user_block.toml", {**SMALL, "network.depth": 7, "train.fwd_iters": 1, "train.bwd_iters": 1}),
}
RANKS = [1, 2, 3]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exact_check")
    out = {}
    for n in RANKS:
        mpirun(n, ["python", "tests/mpi/exact_check.py", str(folder / f"{n}.pt"), json.dumps(CASES)], timeout=300)
        out[n] = torch.load(folder / f"{n}.pt", weights_only=False)
    return out


def serial_gradient(case, report):
    config, overrides = CASES[case]
    net = serial_from_config(mr.load_config(config, overrides).network)
    net.load_state_dict(report["state"])
    net.zero_grad()
    nn.functional.cross_entropy(net(report["x"]), report["y"]).backward()
    return {k: p.grad for k, p in net.named_parameters()}


def relative(a, b):
    diff = sum(float((a[k] - b[k]).pow(2).sum()) for k in b)
    return (diff / sum(float(g.pow(2).sum()) for g in b.values())) ** 0.5


@pytest.mark.mpi
@pytest.mark.parametrize("n", RANKS)
@pytest.mark.parametrize("case", list(CASES))
def test_the_check_measures_the_whole_gradient_against_serial_backprop(reports, n, case):
    report = reports[n][case]
    serial = serial_gradient(case, report)
    assert set(report["exact"]) == set(serial)
    for key, g in serial.items():  # exact_calls: serial backprop's gradient, opening and closing included
        torch.testing.assert_close(report["exact"][key], g, rtol=1e-10, atol=1e-13)
    measured = relative(report["one_shot"], serial)
    assert measured > 1e-6, "one iteration each way leaves an error to measure"
    assert report["grad_error"] == pytest.approx(measured, rel=1e-8)
    assert len(set(report["errors_everywhere"])) == 1
    # the forward solve's error reaches the replicated modules too: their gradients are not exact either
    ends = [k for k in serial if not k.startswith(("layers.", "stages."))]
    assert relative({k: report["one_shot"][k] for k in ends}, {k: serial[k] for k in ends}) > 0


@pytest.mark.mpi
@pytest.mark.parametrize("n", RANKS)
@pytest.mark.parametrize("case", list(CASES))
def test_a_check_leaves_the_one_shot_steps_as_they_were(reports, n, case):
    assert reports[n][case]["check_changes_nothing"]
    assert reports[n][case]["exact_calls_change_nothing"]


@pytest.mark.mpi
@pytest.mark.parametrize("case", list(CASES))
def test_every_rank_count_measures_the_same_error(reports, case):
    errors = [reports[n][case]["grad_error"] for n in RANKS]
    assert errors == pytest.approx([errors[0]] * len(RANKS), rel=1e-8)
