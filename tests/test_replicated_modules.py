"""What the replicated modules may hold: transitions must be fixed maps; the opening and the closing keep their modes.

A transition of a network of stages runs on every rank: one that holds dropout
or BatchNorm in training mode is refused at construction, with the same error
naming it on every rank (the verdicts that refuse such blocks), and so is any
transition whose output or buffers change between two evaluations on the same
input. The opening and the closing may hold both, with the semantics that
:mod:`mgrit_resnet.nn.user` documents and ``tests/mpi/replicated_modules.py``
pins under ``mpiexec``: batch statistics agree on every rank, dropout masks
agree while every rank's generator is seeded alike, and differ when seeded by rank.
"""

import pytest
import torch
from conftest import reports_per_rank_count
from torch import nn

from mgrit_resnet.comm.threads import ThreadWorld
from mgrit_resnet.nn import LayerParallel, ODEResNet, Stage, StagedParallel, StagedResNet

F64 = torch.float64
DROPOUT = (
    "dropout draws its mask from each rank's own random generator, so the transition, replicated on every rank, "
    "would not be the same map on every rank (nor the serial twin's); remove it (regularise the opening or the closing instead)"
)
BATCH_NORM = (
    "BatchNorm in training mode normalises with batch statistics and updates running buffers at every call, evaluations "
    "included (and with data groups each group sees its own share of the batch), so the transition, replicated on every rank, "
    "would not be one fixed map; use GroupNorm or LayerNorm, or call .eval() on it to make it a fixed affine map"
)


def stages():
    return [Stage(3, 1.0, kind="dense", width=3), Stage(3, 1.0, kind="dense", width=4), Stage(3, 1.0, kind="dense", width=4)]


def transitions(second=None):
    torch.manual_seed(0)
    return [nn.Linear(3, 4, dtype=F64), nn.Linear(4, 4, dtype=F64) if second is None else second]


def ends():
    torch.manual_seed(1)
    opening = nn.Sequential(nn.Linear(2, 3, dtype=F64), nn.BatchNorm1d(3, dtype=F64))
    closing = nn.Sequential(nn.Dropout(0.5), nn.Linear(4, 3, dtype=F64))
    return opening, closing


@pytest.mark.parametrize(
    "second, message",
    [
        (nn.Sequential(nn.Linear(4, 4, dtype=F64), nn.Dropout(0.1)), f"transitions[1] (Dropout '1'): {DROPOUT}"),
        (nn.Dropout(0.1).eval(), f"transitions[1] (Dropout): {DROPOUT}"),
        (nn.Sequential(nn.Linear(4, 4, dtype=F64), nn.BatchNorm1d(4, dtype=F64)), f"transitions[1] (BatchNorm1d '1'): {BATCH_NORM}"),
    ],
)
@pytest.mark.parametrize("network", [StagedResNet, StagedParallel])
def test_a_transition_with_dropout_or_batch_statistics_is_refused_at_construction(network, second, message):
    with pytest.raises(ValueError) as raised:
        network(stages(), transitions(second))
    assert str(raised.value) == message


def test_every_rank_raises_the_same_error_naming_the_transition():
    per_rank = [transitions(nn.Sequential(nn.Linear(4, 4, dtype=F64), nn.Dropout(0.1))) for _ in range(2)]

    def program(backend):
        try:
            StagedParallel(stages(), per_rank[backend.rank], comm=backend)
        except ValueError as error:
            return str(error)

    assert ThreadWorld(2).run(program) == [f"transitions[1] (Dropout '1'): {DROPOUT} (on rank 0)"] * 2


def test_an_eval_mode_batchnorm_transition_is_a_fixed_map_and_stays_one():
    opening, closing = ends()
    net = StagedResNet(stages(), transitions(nn.BatchNorm1d(4, dtype=F64).eval()), opening=opening, closing=closing)
    assert net.training and net.opening[1].training and not net.transitions[1].training
    net.eval()
    assert not net.opening[1].training and not net.closing[0].training
    net.train()
    assert net.opening[1].training and not net.transitions[1].training, "train() reaches the opening, not the transitions"
    par = StagedParallel(stages(), transitions(nn.BatchNorm1d(4, dtype=F64).eval()), opening=ends()[0], closing=nn.Linear(4, 3, dtype=F64))
    par.train()
    assert not par.transitions[1].training


class Noisy(nn.Module):
    """A transition that draws random numbers: not a fixed map, though no module of it says so by its type."""

    def forward(self, x):
        return x + 1e-3 * torch.rand_like(x)


class Counting(nn.Module):
    """A transition that counts its calls in a buffer."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, x):
        self.calls += 1
        return x


@pytest.mark.parametrize(
    "module, what",
    [(Noisy(), "its output"), (Counting(), "its buffers")],
)
def test_any_other_stateful_transition_is_found_by_its_probe(module, what):
    message = (
        rf"transitions\[1\]: {what} changed from one evaluation to the next on the same input; a transition runs on every rank "
        r"\(it is replicated\), so it must be a fixed function of its input and parameters"
    )
    with pytest.raises(ValueError, match=message):  # at construction with input_shape
        StagedParallel(stages(), transitions(module), input_shape=(3,))
    net = StagedResNet(stages(), transitions(module))  # else on the first call with each state shape
    generator = torch.get_rng_state()
    with pytest.raises(ValueError, match=message):
        net(torch.zeros(2, 3, dtype=F64))
    if isinstance(module, Counting):
        assert int(module.calls) == 1, "the probe puts the buffers back: only the call itself counted"
    else:
        assert not torch.equal(torch.get_rng_state(), generator), "the call itself drew; the probe ran under a forked generator"


def test_the_opening_and_the_closing_may_hold_dropout_and_batch_statistics():
    """Their modes are yours: with the same generator state the layer-parallel network is its serial twin, bitwise."""
    opening, closing = ends()
    twin = StagedResNet(stages(), transitions(), opening=opening, closing=closing, seed=2, input_shape=(2,))
    opening, closing = ends()
    par = StagedParallel(stages(), transitions(), opening=opening, closing=closing, seed=2, input_shape=(2,), levels=1)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    outputs = []
    for net in (twin, par):
        torch.manual_seed(9)
        outputs.append(net(x))
    assert torch.equal(*outputs)
    assert torch.equal(twin.opening[1].running_mean, par.opening[1].running_mean) and twin.opening[1].num_batches_tracked == 1
    opening, closing = ends()
    user = LayerParallel(block=lambda n: nn.Linear(3, 3, dtype=F64), depth=3, t_final=1.0, opening=opening, closing=nn.Dropout(0.5))
    assert user.closing.training and isinstance(ODEResNet(block=lambda n: nn.Tanh(), depth=2, t_final=1.0, opening=closing), ODEResNet)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    return reports_per_rank_count(tmp_path_factory, "tests/mpi/replicated_modules.py", [2])


@pytest.mark.mpi
@pytest.mark.parametrize("network", ["one_stage", "staged"])
def test_replicated_ends_under_mpiexec(reports, network):
    r = reports[2][network]
    assert r["ranks_agree"], "with every rank's generator seeded alike, every rank applies the same masks and statistics"
    assert r["serial_twin"], "and the result is bitwise the serial twin's under the same seed"
    assert r["buffers_moved"], "BatchNorm in training mode updated its running buffers, alike on every rank"
    assert r["by_rank_differ"], "seeded by rank, every rank draws its own dropout mask: the replicas differ"


@pytest.mark.mpi
def test_a_transition_is_refused_alike_on_every_rank_under_mpiexec(reports):
    messages = reports[2]["messages"]
    assert messages[0] == messages[1]
    assert messages[0]["dropout"] == f"ValueError: transitions[0] (Dropout '1'): {DROPOUT} (on rank 0)"
    assert messages[0]["batchnorm"] == f"ValueError: transitions[0] (BatchNorm1d '0'): {BATCH_NORM} (on rank 0)"
