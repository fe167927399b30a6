"""Memory held by one-shot warm starts: the C-points a restart reads against every state.

A one-shot training step keeps, per batch, the forward and adjoint trajectories
of its solves to warm-start the next visit of that batch. With
``mgrit.relax_warm_start`` (the default) the first F-relaxation recomputes every
F-point, so only the fine level's C-points are kept
(:meth:`mgrit_resnet.MGRIT.restart_states`); taken as it is
(``relax_warm_start = false``) a warm start needs every state. This script runs
``--batches`` one-shot steps of the config's network both ways, side by side,
and prints the bytes per batch each keeps on every rank, their ratio, and what
a whole epoch would keep (the data set's batch count). Both run without
``mgrit.skip_first_down`` whatever the config says: with it a solve keeps one
coarse right-hand side per C-point instead of any state, the same either way.

Usage::

    [mpiexec -n P] python benchmarks/warm_start_memory.py [CONFIG] [--batches 4] [--set KEY=VALUE ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from typing import Any

import torch

import mgrit_resnet as mr
from mgrit_resnet.config import parse_overrides
from mgrit_resnet.nn import LayerParallel
from mgrit_resnet.studies.perfmodel import training_batch


def held_per_batch(cfg: Any, comm: Any, batches: int, relax_warm_start: bool) -> int:
    """Bytes of warm starts this rank keeps per batch after ``batches`` one-shot steps."""
    t = cfg.train
    options = {**cfg.mgrit.as_dict(), "relax_warm_start": relax_warm_start, "skip_first_down": False}
    par = LayerParallel.from_config(cfg.network, options, comm=comm, seed=0, fwd_iters=t.fwd_iters, bwd_iters=t.bwd_iters, warm_start=True)
    for key in range(batches):
        x, y = training_batch(cfg, seed=key)
        torch.nn.functional.cross_entropy(par(x, key=key), y).backward()
    return par.warm_start_bytes() // batches


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="examples/mnist5k.toml")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.batches < 1:
        parser.error(f"--batches must be at least 1; got {args.batches}")
    cfg = mr.load_config(args.config, parse_overrides(args.set))
    comm = mr.comm.world()
    backend = mr.comm.backend_for(comm)
    kept = backend.allgather(held_per_batch(cfg, comm, args.batches, relax_warm_start=True))
    every = backend.allgather(held_per_batch(cfg, comm, args.batches, relax_warm_start=False))
    epoch_batches = math.ceil(cfg.data.n_train / cfg.train.batch_size) if cfg.data.n_train else None
    figures = {
        "config": args.config,
        "ranks": backend.size,
        "depth": cfg.network.depth,
        "batch_size": cfg.train.batch_size,
        "kept_bytes_per_batch": kept,
        "every_state_bytes_per_batch": every,
        "ratio": sum(every) / sum(kept),
        "epoch_batches": epoch_batches,
    }
    if backend.rank == 0:
        mib = 2.0**20
        print(f"{args.config}: N = {cfg.network.depth}, batch {cfg.train.batch_size}, {backend.size} rank(s)")
        print(f"{'rank':>4} {'C-points [MiB/batch]':>21} {'every state [MiB/batch]':>24}")
        for rank, (a, b) in enumerate(zip(kept, every)):
            print(f"{rank:>4} {a / mib:>21.2f} {b / mib:>24.2f}")
        print(f"ratio {figures['ratio']:.2f}")
        if epoch_batches:
            gib = epoch_batches / 2.0**30
            print(f"a whole epoch ({epoch_batches} batches), largest rank: {max(kept) * gib:.2f} GiB against {max(every) * gib:.2f} GiB")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(figures, f, indent=2)
    return figures


if __name__ == "__main__":
    main()
