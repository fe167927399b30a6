"""Data sets from arrays: an ``npz`` file (``data.name = "npz"``) or data given from Python, checked and split.

Both go the same way: the arrays ``x_train``, ``y_train`` and optionally
``x_val``, ``y_val`` are checked (:func:`~.checks.check_arrays` for the shapes,
then the values), and cut to ``data.n_train`` and ``data.n_val`` samples: a
stratified split of ``x_train`` when there is no ``x_val``, else a stratified
subset of each (all of it, in its order, when the count is its length). So the
same arrays give the same data set, and the same training, from a file or from Python.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .checks import NPZ_ARRAYS, check_arrays, npz_shapes

#: What messages call data given from Python.
GIVEN = "the data given to train(data=...)"


def npz_arrays(path: str) -> dict[str, np.ndarray]:
    """The arrays of :data:`~.checks.NPZ_ARRAYS` in the ``.npz`` file ``path`` (others are ignored).

    Raises
    ------
    ValueError
        The file is missing, not an ``.npz`` file, or holds an array that needs pickle to load.
    """
    present = npz_shapes(path)  # the clear messages for a missing file or another kind of file
    where = f"data.path = {str(path)!r}"
    arrays = {}
    with np.load(path, allow_pickle=False) as archive:
        for name in NPZ_ARRAYS:
            if name in present:
                try:
                    arrays[name] = archive[name]
                except ValueError as error:  # object arrays need pickle
                    raise ValueError(f"{where}: array {name!r} cannot be read without pickle: {error}") from None
    return arrays


def given_arrays(data: Any) -> dict[str, np.ndarray]:
    """The arrays of ``data`` given from Python, by :data:`~.checks.NPZ_ARRAYS` name.

    Parameters
    ----------
    data
        A :class:`~.data.Dataset`; a tuple ``(x_train, y_train)`` or
        ``(x_train, y_train, x_val, y_val)`` of tensors or NumPy arrays; or a
        ``torch.utils.data.Dataset`` of ``(x, y)`` pairs (the training set), or a
        tuple of one or two of them (training and validation set).

    Raises
    ------
    TypeError
        ``data`` is none of these.
    """
    if all(hasattr(data, name) for name in ("train_x", "train_y", "val_x", "val_y")):
        values: Sequence[Any] = (data.train_x, data.train_y, data.val_x, data.val_y)
    elif isinstance(data, torch.utils.data.Dataset):
        values = _pairs(data, "train")
    elif isinstance(data, (tuple, list)) and len(data) in (1, 2) and all(isinstance(d, torch.utils.data.Dataset) for d in data):
        values = [array for d, split in zip(data, ("train", "val")) for array in _pairs(d, split)]
        if len(values) == 4 and len(values[2]) == 0:  # an empty validation set: no samples of the training shape
            values[2:] = values[0][:0], values[1][:0]
    elif isinstance(data, (tuple, list)) and len(data) in (2, 4) and all(isinstance(a, (torch.Tensor, np.ndarray)) for a in data):
        values = data
    else:
        raise TypeError(
            "train(data=...) takes a Dataset, a tuple (x_train, y_train[, x_val, y_val]) of tensors or arrays, or a "
            f"torch.utils.data.Dataset of (x, y) pairs (or a tuple (train, val) of them); got {type(data).__name__}"
        )
    return {name: _numpy(value) for name, value in zip(NPZ_ARRAYS, values)}


def dataset_arrays(
    arrays: Mapping[str, np.ndarray], data: Mapping[str, Any], network: Mapping[str, Any], where: str, key: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train_x, train_y, val_x, val_y)``: ``arrays`` checked and cut to ``data.n_train`` and ``data.n_val`` samples.

    Inputs come back float64, labels int64, on the CPU.

    Parameters
    ----------
    arrays
        By :data:`~.checks.NPZ_ARRAYS` name (``x_val``, ``y_val`` optional).
    data, network
        The validated ``[data]`` and ``[network]`` tables.
    where
        What the arrays are, for the messages.
    key
        The seed of the split (the stratified choices draw from ``default_rng(key)``).

    Raises
    ------
    ValueError
        Anything :func:`~.checks.check_arrays` refuses; labels that are not
        integers in ``[0, network.n_classes)``; inputs with NaN or infinity.
    """
    check_arrays({name: (a.shape, a.dtype) for name, a in arrays.items()}, data, network, where)
    for name in (name for name in NPZ_ARRAYS if name in arrays):
        _check_values(name, arrays[name], network["n_classes"], where)
    n_train, n_val = data["n_train"], data["n_val"]
    x, y = arrays["x_train"], arrays["y_train"].astype(np.int64)
    if "x_val" not in arrays:
        train, val = stratified_split(y, n_train, n_val, np.random.default_rng(key))
        x_val, y_val = x, y
    else:
        x_val, y_val = arrays["x_val"], arrays["y_val"].astype(np.int64)
        train = _subset(y, n_train, np.random.default_rng(key))
        val = _subset(y_val, n_val, np.random.default_rng([*key, 1]))
    return (
        torch.from_numpy(np.asarray(x[train], dtype=np.float64)),
        torch.from_numpy(y[train]),
        torch.from_numpy(np.asarray(x_val[val], dtype=np.float64)),
        torch.from_numpy(y_val[val]),
    )


def apportion(total: int, weights: np.ndarray, caps: np.ndarray) -> np.ndarray:
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


def stratified_split(labels: np.ndarray, n_train: int, n_val: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint shuffled index sets whose class counts are within one of the class proportions of ``labels``."""
    classes, sizes = np.unique(labels, return_counts=True)
    train_counts = apportion(n_train, sizes, sizes)
    val_counts = apportion(n_val, sizes, sizes - train_counts)
    train, val = [], []
    for k, n_k, v_k in zip(classes, train_counts, val_counts):
        members = rng.permutation(np.flatnonzero(labels == k))
        train.append(members[:n_k])
        val.append(members[n_k : n_k + v_k])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(val))


def _subset(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """All indices in order when ``n`` is all of them (a given split is kept as it is), else a stratified choice of ``n``."""
    return np.arange(len(labels)) if n == len(labels) else stratified_split(labels, n, 0, rng)[0]


def _check_values(name: str, array: np.ndarray, n_classes: int, where: str) -> None:
    if name.startswith("x"):
        bad = np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1)) if array.dtype.kind == "f" else []
        if len(bad):
            raise ValueError(f"{where}: array {name!r} holds NaN or infinite values ({len(bad)} samples, the first at index {bad[0]})")
        return
    if array.dtype.kind == "f" and len(array):
        bad = np.flatnonzero(~np.isfinite(array) | (array != np.round(array)))
        if len(bad):
            raise ValueError(f"{where}: array {name!r} holds labels that are not integers (index {bad[0]}: {array[bad[0]].item()!r})")
    if len(array) and (array.min() < 0 or array.max() >= n_classes):
        value = (array.min() if array.min() < 0 else array.max()).item()
        raise ValueError(
            f"{where}: array {name!r} holds the label {value!r}; labels must be integers in [0, network.n_classes) = [0, {n_classes})"
        )


def _pairs(dataset: Any, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and labels of a map-style ``torch.utils.data.Dataset`` of ``(x, y)`` pairs, stacked."""
    if not hasattr(dataset, "__len__"):
        raise TypeError(f"train(data=...): the {split} set must be a map-style torch Dataset (with __len__); got {type(dataset).__name__}")
    items = [dataset[i] for i in range(len(dataset))]
    if not items:
        return torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    if not all(isinstance(item, (tuple, list)) and len(item) == 2 for item in items):
        raise TypeError(f"train(data=...): every item of the {split} set must be a pair (x, y); got {items[0]!r:.80}")
    return torch.stack([torch.as_tensor(x) for x, _ in items]), torch.stack([torch.as_tensor(y) for _, y in items])


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.double()
        return value.numpy()
    return np.asarray(value)
