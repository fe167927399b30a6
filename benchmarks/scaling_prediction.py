"""Predicted scaling of a one-shot training step (forward 2 / adjoint 1 MGRIT iterations).

For every depth N and width of the dense network (batch 50, float32, Adam),
the script calibrates the performance model on one rank
(:mod:`mgrit_resnet.studies.perfmodel`) for each candidate hierarchy, picks the
hierarchy with the shortest predicted step at ``--search-ranks`` ranks, and
prints the prediction at P = 1 ... 1024 for it: time, speedup over the serial
(layer-serial autograd) step, efficiency. The network is a cluster's
(``alpha`` = 2 us, ``beta`` = 0.1 ns/byte) unless given.

Usage::

    python benchmarks/scaling_prediction.py [--depths 1024,4096] [--widths 8,64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from mgrit_resnet.config import load_config
from mgrit_resnet.studies import perfmodel

ROOT = Path(__file__).resolve().parents[1]
# (levels, coarsening, relaxation: one for all levels, or one per level)
HIERARCHIES: list[tuple[int, int, str | list[str]]] = [
    (3, 4, ["F", "FCF"]),
    (3, 4, "F"),
    (4, 4, "F"),
    (5, 4, "F"),
    (6, 4, "F"),
    (3, 8, "F"),
    (4, 8, "F"),
    (8, 2, "F"),
]


def config(depth: int, width: int, hierarchy: tuple[int, int, str | list[str]]) -> Any:
    levels, coarsening, relax = hierarchy
    overrides = {
        "network.depth": depth,
        "network.width": width,
        "train.fwd_iters": 2,
        "train.bwd_iters": 1,
        "train.batch_size": 50,
        "mgrit.levels": levels,
        "mgrit.coarsening": coarsening,
        "mgrit.relax": relax,
    }
    return load_config(ROOT / "examples/peaks.toml", overrides=overrides)


def describe(hierarchy: tuple[int, int, str | list[str]]) -> str:
    levels, coarsening, relax = hierarchy
    return f"{levels} levels, m = {coarsening}, relax {relax if isinstance(relax, str) else '/'.join(relax)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--depths", default="1024,4096")
    parser.add_argument("--widths", default="8,64")
    parser.add_argument("--ranks", default="1,2,4,8,16,32,64,128,256,512,1024")
    parser.add_argument("--search-ranks", type=int, default=64, help="rank count at which hierarchies are compared")
    parser.add_argument("--alpha", type=float, default=perfmodel.CLUSTER_NETWORK[0])
    parser.add_argument("--beta", type=float, default=perfmodel.CLUSTER_NETWORK[1])
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    network = (args.alpha, args.beta)
    ranks = [int(p) for p in args.ranks.split(",")]
    report: dict[str, Any] = {"network": network, "date": time.strftime("%Y-%m-%d %H:%M"), "cases": []}
    for depth in (int(d) for d in args.depths.split(",")):
        for width in (int(w) for w in args.widths.split(",")):
            print(f"\nN = {depth}, width {width}: hierarchies at P = {args.search_ranks}", flush=True)
            search = []
            for hierarchy in HIERARCHIES:
                cfg = config(depth, width, hierarchy)
                try:
                    calibration, (row,) = perfmodel.predict(cfg, [args.search_ranks], network=network)
                except ValueError as error:  # e.g. no coarse grid
                    print(f"  {describe(hierarchy):<32} not possible: {error}")
                    continue
                search.append((row.time, hierarchy, calibration))
                print(
                    f"  {describe(hierarchy):<32} P=1 {calibration.one_rank_time * 1e3:8.2f} ms  "
                    f"P={args.search_ranks} {row.time * 1e3:8.3f} ms  speedup {row.speedup:6.2f}",
                    flush=True,
                )
            _, best, calibration = min(search, key=lambda item: item[0])
            _, rows = perfmodel.predict(config(depth, width, best), ranks, network=network, calibration=calibration)
            print(f"best: {describe(best)}; serial step {calibration.serial_time * 1e3:.2f} ms (CPU, one rank)")
            print(perfmodel.format_table(rows), flush=True)
            report["cases"].append(
                {
                    "depth": depth,
                    "width": width,
                    "hierarchy": describe(best),
                    "calibration": calibration.as_dict(),
                    "search": [{"hierarchy": describe(h), "time": t} for t, h, _ in search],
                    "rows": [row.as_dict() for row in rows],
                }
            )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
