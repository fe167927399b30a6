"""Write a small image data set as an ``.npz`` file for ``[data] name = "npz"``.

Three classes of 1 x SIDE x SIDE images: a horizontal bar, a vertical bar, a
diagonal, each at a random place, with Gaussian noise. The file holds
``x_train`` (float32, ``(n, 1, SIDE, SIDE)``), ``y_train`` (int64 labels) and,
with ``--val``, ``x_val`` and ``y_val``: the arrays that
``[data] name = "npz"`` reads (without them, ``data.n_val`` samples are split off ``x_train``).

Usage::

    python examples/npz_data.py bars.npz --n 600 --val 200
    mpiexec -n 2 mgrit-resnet train examples/user_block.toml --set data.name=npz --set data.path=bars.npz \\
        --set data.n_train=600 --set data.n_val=200 --set network.n_classes=3 --set network.options.classes=3
"""

from __future__ import annotations

import argparse

import numpy as np

CLASSES = 3


def bars(n: int, side: int = 8, noise: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images ``(n, 1, side, side)`` and their labels: 0 horizontal bar, 1 vertical bar, 2 diagonal."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    x = noise * rng.standard_normal((n, 1, side, side))
    where = rng.integers(0, side, n)
    for i, (label, k) in enumerate(zip(y, where)):
        if label == 0:
            x[i, 0, k, :] += 1.0
        elif label == 1:
            x[i, 0, :, k] += 1.0
        else:
            x[i, 0] += np.eye(side, k=int(k) - side // 2)
    return x.astype(np.float32), y.astype(np.int64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="the .npz file to write")
    parser.add_argument("--n", type=int, default=600, help="training samples (default 600)")
    parser.add_argument("--val", type=int, default=0, help="validation samples in x_val, y_val (default 0: none)")
    parser.add_argument("--side", type=int, default=8, help="image side (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    x, y = bars(args.n, args.side, seed=args.seed)
    arrays = {"x_train": x, "y_train": y}
    if args.val:
        arrays["x_val"], arrays["y_val"] = bars(args.val, args.side, seed=args.seed + 1)
    np.savez(args.path, **arrays)
    print(f"wrote {args.path}: " + ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in arrays.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
