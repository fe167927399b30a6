"""The peaks data set's grid and classes: MATLAB's ``peaks`` on a 256 x 256 grid, cut into five value bands."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

PEAKS_CLASSES = 5
PEAKS_GRID = 256
PEAKS_RANGE = (-3.0, 3.0)


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


@lru_cache(maxsize=1)
def class_sizes() -> tuple[int, ...]:
    """The number of grid points of every class."""
    _, labels, _ = peaks_grid()
    return tuple(int(n) for n in np.bincount(labels, minlength=PEAKS_CLASSES))


def balanced_counts(n: int) -> np.ndarray:
    """Points per class of a balanced set of ``n``: ``n // 5`` each, one more for the first ``n % 5`` classes."""
    return n // PEAKS_CLASSES + (np.arange(PEAKS_CLASSES) < n % PEAKS_CLASSES)


def check_peaks_sizes(n_train: int, n_val: int) -> None:
    """Raise ``ValueError`` when some class has fewer grid points than the balanced training and validation sets take."""
    sizes = np.array(class_sizes())
    train, val = balanced_counts(n_train), balanced_counts(n_val)
    short = np.flatnonzero(train + val > sizes)
    if len(short):
        k = int(short[0])
        raise ValueError(
            f"data.n_train = {n_train} and data.n_val = {n_val} ask for {train[k]} + {val[k]} points of peaks class {k}, "
            f"but the {PEAKS_GRID} x {PEAKS_GRID} grid has only {sizes[k]} (training and validation take distinct grid "
            f"points, balanced over the {PEAKS_CLASSES} classes): lower data.n_train or data.n_val "
            f"(data.n_train + data.n_val <= {PEAKS_CLASSES * int(sizes.min())} always fits)"
        )
