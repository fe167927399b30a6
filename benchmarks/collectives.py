"""What one one-shot training step communicates per rank: collectives (pickled or buffer) and messages.

Each rank count runs as threads of one process (:class:`~mgrit_resnet.comm.threads.ThreadWorld`),
every rank's backend wrapped in a :class:`~mgrit_resnet.comm.counting.CountingBackend`:
a :class:`~mgrit_resnet.nn.LayerParallel` network (the conv network of
``layer_parallel.py`` at a smaller image, 3 levels, coarsening 4, F then FCF)
makes ``--warm-up`` warm-started one-shot SGD steps on one batch, and the calls
of the next step are counted. Counts do not depend on the machine's speed.

Usage::

    python benchmarks/collectives.py [--ranks 1,2,4] [--iters 1/1,2/1] [--depth 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import torch

from mgrit_resnet.comm.counting import CountingBackend
from mgrit_resnet.comm.threads import ThreadWorld
from mgrit_resnet.nn import LayerParallel, NetworkSpec


def count_step(ranks: int, fwd: int, bwd: int, depth: int, warm_up: int = 2) -> dict[str, Any]:
    """The calls of one warm-started one-shot step on every rank: the busiest rank's counts by kind."""
    spec = NetworkSpec(kind="conv", in_channels=1, image_size=8, width=4, depth=depth, n_classes=10, dtype="float64")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, 1, 8, 8, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 10, (5,), generator=generator)

    def program(backend: Any) -> dict[str, Any]:
        counting = CountingBackend(backend)
        options = dict(levels=3, coarsening=4, relax=["F", "FCF"], fwd_iters=fwd, bwd_iters=bwd, warm_start=True)
        par = LayerParallel(spec, comm=counting, seed=0, **options)
        optimizer = torch.optim.SGD(par.parameters(), lr=0.01)
        for step in range(warm_up + 1):
            if step == warm_up:
                counting.calls.clear()
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(par(x, key=0), y).backward()
            optimizer.step()
        return {**counting.collectives(), "messages": counting.calls["isend"], "calls": dict(counting.calls)}

    per_rank = ThreadWorld(ranks).run(program)
    busiest = max(per_rank, key=lambda r: (r["total"], r["messages"]))
    return {"ranks": ranks, "iters": f"{fwd}/{bwd}", **{k: busiest[k] for k in ("object", "buffer", "total", "messages", "calls")}}


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="1,2,4")
    parser.add_argument("--iters", default="1/1,2/1")
    parser.add_argument("--depth", type=int, default=64)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    rows = []
    for iters in args.iters.split(","):
        fwd, bwd = (int(v) for v in iters.split("/"))
        for ranks in (int(p) for p in args.ranks.split(",")):
            rows.append(count_step(ranks, fwd, bwd, args.depth))
    print(f"{'P':>3}  {'iters':>5}  {'object':>6}  {'buffer':>6}  {'collectives':>11}  {'messages sent':>13}   (per step, busiest rank)")
    for r in rows:
        print(f"{r['ranks']:>3}  {r['iters']:>5}  {r['object']:>6}  {r['buffer']:>6}  {r['total']:>11}  {r['messages']:>13}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
