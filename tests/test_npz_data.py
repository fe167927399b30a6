"""Your own data: [data] name = "npz" (checks, split, given validation arrays) and train(..., data=...) from Python."""

import json

import numpy as np
import pytest
import torch

from mgrit_resnet.config import load_config
from mgrit_resnet.training import check, train
from mgrit_resnet.training.checks import check_data
from mgrit_resnet.training.data import load_dataset

NETWORK = {"network.in_features": 3, "network.n_classes": 3, "network.width": 4, "network.depth": 6, "network.dtype": "float64"}
TRAIN = {"train.epochs": 2, "train.batch_size": 20, "train.lr": 0.02}


def arrays(n=100, seed=0, shape=(3,), classes=3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *shape)), rng.integers(0, classes, n)


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def config(path, **overrides):
    values = {**NETWORK, **TRAIN, "data.name": "npz", "data.path": str(path), "data.n_train": 60, "data.n_val": 40}
    return load_config(None, {**values, **overrides})


@pytest.fixture
def npz(tmp_path):
    x, y = arrays()
    return write_npz(tmp_path / "d.npz", x_train=x, y_train=y)


# --- the split ----------------------------------------------------------------------------------------------------


def test_npz_without_validation_arrays_is_split_stratified(npz):
    cfg = config(npz)
    d = load_dataset(cfg.data, cfg.network)
    x, y = arrays()
    assert (d.n_train, d.n_val, d.name, d.n_classes) == (60, 40, "npz", 3)
    assert d.train_x.dtype == torch.float64 and d.train_y.dtype == torch.int64
    rows = {tuple(r) for r in np.concatenate([d.train_x.numpy(), d.val_x.numpy()])}
    assert len(rows) == 100 and rows == {tuple(r) for r in x}  # disjoint, and every sample is one of the file's
    share = np.bincount(y, minlength=3) * 60 / 100
    assert np.all(np.abs(np.bincount(d.train_y.numpy(), minlength=3) - share) <= 1)
    other = load_dataset(config(npz, **{"data.seed": 1}).data, cfg.network)
    assert not torch.equal(other.train_x, d.train_x)


def test_given_validation_arrays_are_kept_as_they_are(tmp_path):
    x, y = arrays(80)
    xv, yv = arrays(30, seed=1)
    path = write_npz(tmp_path / "d.npz", x_train=x, y_train=y, x_val=xv, y_val=yv)
    d = load_dataset(config(path, **{"data.n_train": 80, "data.n_val": 30}).data, config(path).network)
    np.testing.assert_array_equal(d.train_x.numpy(), x)
    np.testing.assert_array_equal(d.val_y.numpy(), yv)
    fewer = load_dataset(config(path, **{"data.n_train": 50, "data.n_val": 10}).data, config(path).network)
    assert (fewer.n_train, fewer.n_val) == (50, 10)
    assert {tuple(r) for r in fewer.val_x.numpy()} <= {tuple(r) for r in xv}


def test_labels_may_be_any_integer_type_or_integral_floats(tmp_path):
    x, y = arrays()
    loaded = []
    for name, labels in (("f.npz", y.astype(np.float32)), ("u.npz", y.astype(np.uint8)), ("b.npz", y == 1)):
        cfg = config(write_npz(tmp_path / name, x_train=x.astype(np.float32), y_train=labels))
        loaded.append(load_dataset(cfg.data, cfg.network))
    assert torch.equal(loaded[0].train_y, loaded[1].train_y) and torch.equal(loaded[0].train_x, loaded[1].train_x)
    assert set(loaded[2].train_y.tolist()) == {0, 1}


# --- errors ---------------------------------------------------------------------------------------------------------


def bad_npz(tmp_path, kind):
    x, y = arrays()
    cases = {
        "missing array": dict(x_train=x),
        "only x_val": dict(x_train=x, y_train=y, x_val=x),
        "length": dict(x_train=x, y_train=y[:-1]),
        "val length": dict(x_train=x, y_train=y, x_val=x, y_val=y[:-3]),
        "label range": dict(x_train=x, y_train=np.where(y == 2, 3, y)),
        "negative label": dict(x_train=x, y_train=np.where(y == 2, -1, y)),
        "fractional label": dict(x_train=x, y_train=y + 0.5),
        "string labels": dict(x_train=x, y_train=y.astype(str)),
        "2-D labels": dict(x_train=x, y_train=y[:, None]),
        "nan": dict(x_train=np.where(np.arange(100)[:, None] == 7, np.nan, x), y_train=y),
        "inf": dict(x_train=np.where(np.arange(100)[:, None] == 9, np.inf, x), y_train=y),
        "shape": dict(x_train=x[:, :2], y_train=y),
        "val shape": dict(x_train=x, y_train=y, x_val=x[:, :2], y_val=y),
        "1-D inputs": dict(x_train=x[:, 0], y_train=y),
    }
    return write_npz(tmp_path / "bad.npz", **cases[kind])


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing array", r"no array 'y_train' \(it has 'x_train'"),
        ("only x_val", r"no array 'y_val': x_val and y_val go together"),
        ("length", r"x_train has 100 samples but y_train has 99 labels"),
        ("val length", r"x_val has 100 samples but y_val has 97 labels"),
        ("label range", r"array 'y_train' holds the label 3; labels must be integers in \[0, network.n_classes\) = \[0, 3\)"),
        ("negative label", r"holds the label -1"),
        ("fractional label", r"array 'y_train' holds labels that are not integers"),
        ("string labels", r"array 'y_train' has dtype <U\d+; it must hold integer labels"),
        ("2-D labels", r"array 'y_train' must be 1-D"),
        ("nan", r"array 'x_train' holds NaN or infinite values \(1 samples, the first at index 7\)"),
        ("inf", r"the first at index 9"),
        ("shape", r"x_train samples have shape \(2,\) but the dense network takes \(3,\) \(network.in_features\)"),
        ("val shape", r"x_val samples have shape \(2,\) but x_train samples \(3,\)"),
        ("1-D inputs", r"array 'x_train' must have shape \(samples, ...\)"),
    ],
)
def test_bad_arrays_are_clear_errors_naming_the_path_and_the_array(tmp_path, kind, message):
    cfg = config(bad_npz(tmp_path, kind), **({"data.n_val": 30} if "val" in kind else {}))
    with pytest.raises(ValueError, match=message) as caught:
        load_dataset(cfg.data, cfg.network)
    assert "data.path = " in str(caught.value)


def test_missing_file_and_other_files(tmp_path):
    with pytest.raises(ValueError, match=r"data.path = '.*nope.npz': no such file"):
        load_dataset(config(tmp_path / "nope.npz").data, config(tmp_path / "nope.npz").network)
    x, _ = arrays()
    np.save(tmp_path / "plain.npy", x)
    (tmp_path / "text.npz").write_text("not a zip")
    for name in ("plain.npy", "text.npz"):
        cfg = config(tmp_path / name)
        with pytest.raises(ValueError, match=r"is not an .npz file of arrays \(write it with numpy.savez\)"):
            load_dataset(cfg.data, cfg.network)


def test_too_few_samples(npz, tmp_path):
    with pytest.raises(ValueError, match=r"data.n_train \+ data.n_val = 130 exceeds the 100 samples of x_train"):
        check_data(config(npz, **{"data.n_train": 90}).data.as_dict(), config(npz).network.as_dict())
    x, y = arrays()
    path = write_npz(tmp_path / "v.npz", x_train=x, y_train=y, x_val=x[:20], y_val=y[:20])
    with pytest.raises(ValueError, match=r"data.n_val = 40 exceeds the 20 samples of x_val"):
        load_dataset(config(path).data, config(path).network)


def test_the_check_reads_only_the_headers(tmp_path):
    """check() refuses a bad file before any work; it does not load the arrays (labels out of range pass it)."""
    x, y = arrays()
    path = write_npz(tmp_path / "d.npz", x_train=x, y_train=y + 5)
    check(config(path), 1)
    for kind in ("missing array", "length", "shape", "string labels"):
        with pytest.raises(ValueError, match="data.path = "):
            check(config(bad_npz(tmp_path, kind)), 1)


def test_a_module_network_takes_any_sample_shape_but_not_synthetic_data(tmp_path):
    x, y = arrays(shape=(1, 4, 4))
    path = write_npz(tmp_path / "img.npz", x_train=x, y_train=y)
    module = {"network.kind": "module", "network.module": "examples/user_block.py:build"}
    d = load_dataset(config(path, **module).data, config(path, **module).network)
    assert d.train_x.shape == (60, 1, 4, 4)
    cfg = load_config(None, {**module, "data.name": "synthetic"})
    with pytest.raises(ValueError, match=r"data.name = 'synthetic' .* network.kind = 'module' has no input shape"):
        check_data(cfg.data.as_dict(), cfg.network.as_dict())
    cfg = load_config(None, {**module, "data.name": "digits", "data.n_train": 100, "data.n_val": 50})
    with pytest.raises(ValueError, match=r"data.name = 'digits' needs network.n_classes = 10"):
        check_data(cfg.data.as_dict(), cfg.network.as_dict())
    digits = load_dataset(cfg.data, cfg.with_overrides({"network.n_classes": 10}).network)
    assert digits.train_x.shape == (100, 1, 8, 8)


def test_local_training_refuses_a_module_network():
    cfg = load_config(None, {"network.kind": "module", "network.module": "x.py:build", "train.strategy": "trgl"})
    with pytest.raises(ValueError, match=r"train.strategy = 'trgl' does not train network.kind = 'module' yet"):
        check(cfg, 1)


# --- data given from Python -----------------------------------------------------------------------------------------


class Pairs(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = torch.as_tensor(x), torch.as_tensor(y)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_every_form_of_given_data_is_the_npz_data(tmp_path):
    x, y = arrays()
    xv, yv = arrays(40, seed=1)
    path = write_npz(tmp_path / "d.npz", x_train=x, y_train=y, x_val=xv, y_val=yv)
    cfg = config(path, **{"data.n_train": 90})
    from_file = load_dataset(cfg.data, cfg.network)
    forms = [
        (torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(xv), torch.from_numpy(yv)),
        [x, y, xv, yv],
        (Pairs(x, y), Pairs(xv, yv)),
        from_file,
    ]
    for form in forms:
        given = load_dataset(cfg.data, cfg.network, data=form)
        assert given.name == "given"
        for name in ("train_x", "train_y", "val_x", "val_y"):
            if form is not from_file:
                assert torch.equal(getattr(given, name), getattr(from_file, name)), name
        assert given.n_train == 90 and given.n_val == 40
    split_file = load_dataset(config(write_npz(tmp_path / "s.npz", x_train=x, y_train=y)).data, cfg.network)
    for form in [(x, y), Pairs(x, y), (Pairs(x, y),)]:
        split = load_dataset(config(path).data, cfg.network, data=form)
        assert torch.equal(split.train_x, split_file.train_x) and torch.equal(split.val_y, split_file.val_y)


@pytest.mark.parametrize(
    "data, error, message",
    [
        ("x.npz", TypeError, r"train\(data=...\) takes a Dataset, a tuple"),
        ((np.zeros((10, 3)),), TypeError, r"takes a Dataset"),
        (
            (np.zeros((10, 3)), np.zeros(9, dtype=int)),
            ValueError,
            r"the data given to train\(data=...\): x_train has 10 samples but y_train has 9",
        ),
        ((np.zeros((100, 3)), np.full(100, 7)), ValueError, r"the data given to train\(data=...\): array 'y_train' holds the label 7"),
    ],
)
def test_bad_given_data(data, error, message):
    cfg = load_config(None, {**NETWORK, "data.n_train": 60, "data.n_val": 40})
    with pytest.raises(error, match=message):
        load_dataset(cfg.data, cfg.network, data=data)


@pytest.mark.parametrize("strategy", ["serial", "one_shot"])
def test_training_on_given_tensors_equals_training_on_the_npz_file(tmp_path, strategy):
    x, y = arrays(120)
    path = write_npz(tmp_path / "d.npz", x_train=x, y_train=y)
    cfg = config(path, **{"train.strategy": strategy, "data.n_train": 80})
    from_file = train(cfg, None, tmp_path / "file")
    # data= replaces the [data] set: its name and path are not read.
    given = train(
        cfg.with_overrides({"data.name": "peaks", "data.path": ""}),
        None,
        tmp_path / "given",
        data=(torch.from_numpy(x), torch.from_numpy(y)),
    )
    assert [strip(m) for m in given.metrics] == [strip(m) for m in from_file.metrics]
    assert strip(given.summary) == strip(from_file.summary)
    saved = torch.load(tmp_path / "given" / "checkpoint.pt", weights_only=False)
    expected = torch.load(tmp_path / "file" / "checkpoint.pt", weights_only=False)
    for key, value in expected["model"].items():
        assert torch.equal(saved["model"][key], value), key
    assert "data given from Python" in (tmp_path / "given" / "config.toml").read_text()


def test_resume_with_given_data_continues_exactly(tmp_path):
    x, y = arrays(120)
    cfg = load_config(None, {**NETWORK, **TRAIN, "data.n_train": 80, "data.n_val": 40, "train.epochs": 3})
    straight = train(cfg, None, tmp_path / "straight", data=(x, y))
    train(cfg.with_overrides({"train.epochs": 1}), None, tmp_path / "resumed", data=(x, y))
    resumed = train(cfg, None, tmp_path / "resumed", resume=True, data=(x, y))
    assert [strip(m) for m in resumed.metrics] == [strip(m) for m in straight.metrics]
    rows = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3


def tiny_build(options):
    """A user network given from Python: 1x6x6 images, a conv stem, tanh conv blocks, a pooled linear head."""
    from torch import nn

    width = options["width"]
    block = lambda layer: nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.Tanh())  # noqa: E731
    return block, nn.Conv2d(1, width, 3, padding=1), nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 3))


def test_a_user_network_from_python_on_given_data_trains_and_resumes_exactly(tmp_path):
    x, y = arrays(90, shape=(1, 6, 6))
    module = {"network.kind": "module", "network.module": tiny_build, "network.options.width": 3, "network.depth": 6}
    cfg = load_config(None, {**module, **TRAIN, "network.n_classes": 3, "data.n_train": 60, "data.n_val": 30, "train.epochs": 3})
    data = (torch.from_numpy(x).float(), torch.from_numpy(y))
    straight = train(cfg, None, tmp_path / "straight", data=data)
    train(cfg.with_overrides({"train.epochs": 2}), None, tmp_path / "resumed", data=data)
    resumed = train(cfg, None, tmp_path / "resumed", resume=True, data=data)
    assert [strip(m) for m in resumed.metrics] == [strip(m) for m in straight.metrics]
    assert straight.metrics[-1]["train_loss"] < straight.metrics[0]["train_loss"]
    text = (tmp_path / "straight" / "config.toml").read_text()
    assert 'module = "test_npz_data:tiny_build"  # given from Python' in text and "[network.options]\nwidth = 3" in text


def test_prepared_and_data_together_is_an_error(npz):
    from mgrit_resnet.training.loop import prepare

    cfg = config(npz)
    with pytest.raises(ValueError, match=r"give data to prepare\(\)"):
        train(cfg, None, data=arrays(), prepared=prepare(cfg, None))


def strip(row):
    return {k: v for k, v in row.items() if "time" not in k and k != "provenance"}  # provenance: when and from what config
