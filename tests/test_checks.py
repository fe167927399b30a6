"""training.check: every rank, depth and option check of training, pure (nothing built, no data loaded)."""

import re
import time

import pytest
from conftest import ROOT

import mgrit_resnet as mr
from mgrit_resnet.training import check
from mgrit_resnet.training.loop import prepare

TINY = ROOT / "examples" / "tiny_train.toml"


def config(**overrides):
    return mr.load_config(TINY, overrides)


@pytest.fixture
def nothing_built(monkeypatch):
    """Building a network, a block or a rank group, or loading data, fails the test."""
    from mgrit_resnet.comm import groups
    from mgrit_resnet.nn import LayerParallel, ODEResNet
    from mgrit_resnet.training import blocks, data, local, models, whole

    def refuse(*args, **kwargs):
        raise AssertionError("check built something or loaded data")

    for owner, name in [
        (data, "load_dataset"),
        (whole, "load_dataset"),
        (local, "load_dataset"),
        (models.TrainModel, "__init__"),
        (local.LocalTrainer, "__init__"),
        (blocks.LocalBlock, "__init__"),
        (LayerParallel, "__init__"),
        (ODEResNet, "__init__"),
        (groups.RankGroups, "__init__"),
    ]:
        monkeypatch.setattr(owner, name, refuse)


@pytest.mark.parametrize(
    "overrides, ranks, message",
    [
        ({"train.data_parallel": 3}, 4, "train.data_parallel must divide the number of ranks (4); got 3"),
        ({"train.data_parallel": 4, "train.batch_size": 2}, 4, "train.batch_size (2) must be at least train.data_parallel (4)"),
        ({}, 8, "network.depth = 13 < 2 * ranks - 1 = 15: some rank would hold no layer"),
        ({"train.strategy": "exact", "train.data_parallel": 2}, 16, "network.depth = 13 < 2 * ranks per data group - 1 = 15"),
        ({"mgrit.coarsening": 64}, 2, "mgrit.coarsening=64 leaves no coarse grid for network.depth=13"),
        ({"mgrit.levels": 4, "mgrit.relax": ["F"]}, 1, "relax must be a single value or a list of at least 3 entries"),
        ({"train.optimizer": "lbfgs"}, 1, "train.optimizer = 'lbfgs' needs exact gradients: train.strategy = 'exact' or 'serial'"),
        (
            {"train.optimizer": "lbfgs", "train.strategy": "serial", "train.data_parallel": 2},
            2,
            "train.optimizer = 'lbfgs' runs with train.data_parallel = 1; got 2",
        ),
        ({"train.strategy": "local", "train.blocks": 2}, 4, "train.blocks (2) must be at least the number of ranks (4)"),
        (
            {"train.strategy": "trgl", "train.blocks": 1, "train.data_parallel": 2},
            4,
            "train.blocks (1) must be at least the number of ranks per data group (2)",
        ),
        ({"train.strategy": "local", "train.blocks": 14}, 1, "train.blocks (14) must be at most network.depth (13)"),
        ({"train.strategy": "trgl", "train.blocks": 3, "train.tau": [1.0, 2.0]}, 1, "train.tau as a list needs one value per block (3)"),
        ({"train.strategy": "local", "train.optimizer": "lbfgs"}, 1, "train.optimizer must be 'sgd' or 'adam'; got 'lbfgs'"),
        (
            {"train.strategy": "local", "train.local_schedule": "multilap", "train.laps": 3},
            1,
            "train.laps (3) must be at most train.epochs (2)",
        ),
    ],
)
def test_check_names_the_key_and_what_is_allowed(nothing_built, overrides, ranks, message):
    cfg = config(**overrides)
    with pytest.raises(ValueError, match=re.escape(message)):
        check(cfg, ranks)


@pytest.mark.parametrize(
    "overrides, ranks",
    [
        ({}, 7),  # 13 layers: 2 * 7 - 1 = 13
        ({"train.strategy": "serial"}, 64),  # every rank holds the whole network
        ({"train.strategy": "exact", "train.data_parallel": 2}, 14),
        ({"train.strategy": "trgl", "train.blocks": 13}, 13),
        ({"train.strategy": "local", "train.data_parallel": 5, "train.batch_size": 5}, 5),
    ],
)
def test_check_accepts_what_trains(nothing_built, overrides, ranks):
    check(config(**overrides), ranks)


def test_check_builds_nothing_so_a_huge_network_is_checked_at_once(nothing_built, monkeypatch):
    huge = config(**{"network.depth": 1_000_000, "network.width": 4096, "data.n_train": 10**6})
    with pytest.raises(ValueError, match=r"needs about .* GiB per rank"):  # on this machine, as it is
        check(huge, 512)
    monkeypatch.setattr("mgrit_resnet._checks.available_memory", lambda: 2**80)  # a machine it fits on
    start = time.perf_counter()
    for strategy in mr.config.STRATEGIES:
        check(huge.with_overrides({"train.strategy": strategy, "train.blocks": 512}), 512)
    assert time.perf_counter() - start < 2.0


def test_prepare_checks_first_with_the_same_messages():
    """prepare refuses before it builds, with check's message; a config check refuses passes prepare too."""
    cfg = config(**{"train.data_parallel": 3})
    with pytest.raises(ValueError, match=r"train.data_parallel must divide the number of ranks \(1\); got 3"):
        check(cfg, 1)
    with pytest.raises(ValueError, match=r"train.data_parallel must divide the number of ranks \(1\); got 3"):
        prepare(cfg, None)
    cfg = config(**{"train.strategy": "trgl", "train.blocks": 3, "train.tau": [1.0]})
    with pytest.raises(ValueError, match=r"train.tau as a list needs one value per block \(3\); got 1 values"):
        prepare(cfg, None)


def test_the_performance_model_checks_a_one_shot_step_with_check():
    from mgrit_resnet.studies.perfmodel import check_training_ranks

    serial = config(**{"train.strategy": "serial"})
    check(serial, 8)  # serial training runs on 8 ranks ...
    with pytest.raises(ValueError, match=r"network.depth = 13 < 2 \* ranks - 1 = 15"):
        check_training_ranks(serial, 8)  # ... a one-shot step does not
    check_training_ranks(serial, 7)
