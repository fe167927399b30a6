"""Bookkeeping overhead of MGRIT: its wall time against the same step calls made bare.

Runs a fixed number of MGRIT iterations on heat 1D (backward Euler, one sparse
LU solve per step) and, side by side in the same process, replays exactly the
step calls that MGRIT made -- same count, same (start, stop, level) mix, same
problem object with its cached LU factorisations -- in a bare loop. The ratio
MGRIT / bare is what the solver adds on top of the propagator: relaxation and
restriction logic, FAS right-hand sides (``Phi(u) + g``, ``phi - Phi_c(u)``),
residual norms, channel handling and, at P > 1, messages and waiting.

Target (reported, not asserted; the script exits 0 either way): at P = 1 the
bookkeeping adds at most 30 %, i.e. ratio <= 1.3.

Usage::

    python benchmarks/mgrit_overhead.py [--n-steps 4096] [--nx 256] [--json out.json]
    mpiexec -n 2 python benchmarks/mgrit_overhead.py

Under ``mpiexec -n P`` every rank times its own share: the MGRIT time of one
repeat is the slowest rank's solve, the bare time the slowest rank's replay of
its own step list; the best repeat of each is reported. Only rank 0 prints.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mgrit_resnet import MGRIT
from mgrit_resnet.comm import world
from mgrit_resnet.problems import Heat1D

TARGET = 0.30  # the bookkeeping may add at most 30 % at P = 1

# Default nx. Measured bare step times (one SuperLU solve, OMP_NUM_THREADS=1,
# 2-core x86 box): nx = 32: 6.7 us, 64: 4.6 us, 128: 6.3 us, 256: 8.0 us,
# 512: 12.8 us, 1024: 33 us. Up to nx ~ 128 a step is almost only the fixed
# cost of calling into SuperLU (dict lookup, argument checks, allocating the
# result), so the solver's per-step Python cost would be judged against an
# unrealistically cheap propagator. From 256 on the triangular solves are the
# larger part of a step, while a step is still cheap (~7-10 us) and the
# per-step bookkeeping stays visible: the demanding end of the representative
# range. A bigger nx only lowers the ratio (measured at N = 4096, 3 levels,
# FCF, 5 iterations: ~1.3 at nx = 256, ~1.24 at nx = 512).
DEFAULT_NX = 256


class StepRecorder:
    """A thin proxy around a problem that records every ``step`` call.

    Everything but ``step`` is forwarded unchanged; ``step`` appends
    ``(start, stop, level)`` to :attr:`calls` and forwards too, so the wrapped
    problem's caches (the LU factorisations) are filled as in a plain run.
    """

    def __init__(self, problem: Any) -> None:
        self._problem = problem
        self.calls: list[tuple[int, int, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._problem, name)

    def step(self, u: Any, start: int, stop: int, level: int) -> Any:
        self.calls.append((start, stop, level))
        return self._problem.step(u, start, stop, level)


def replay(problem: Any, calls: Sequence[tuple[int, int, int]], state: Any) -> tuple[float, float]:
    """Wall and CPU seconds to make the recorded step calls bare, one after the other.

    Every call gets ``state``: a linear step costs the same whatever the values
    (MGRIT's inputs hold no subnormals on this problem), and feeding one state
    keeps the loop free of anything but the calls themselves.
    """
    step = problem.step
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    for start, stop, level in calls:
        step(state, start, stop, level)
    return time.perf_counter() - start_wall, time.process_time() - start_cpu


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--n-steps", type=int, default=4096, help="fine time steps N")
    parser.add_argument("--nx", type=int, default=DEFAULT_NX, help="interior grid points (sets the cost of one step)")
    parser.add_argument("--levels", type=int, default=3, help="maximum number of MGRIT levels")
    parser.add_argument("--coarsening", type=int, default=4, help="coarsening factor")
    parser.add_argument("--relax", default="FCF", help="relaxation: F, FCF, FCFCF, ...")
    parser.add_argument("--iterations", type=int, default=5, help="fixed number of MGRIT iterations (tol = 0)")
    parser.add_argument("--repeat", type=int, default=7, help="timed repeats; the best is kept")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the figures as JSON (rank 0)")
    args = parser.parse_args(argv)
    for name in ("n_steps", "nx", "levels", "coarsening", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.iterations < 0:
        parser.error("--iterations must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark; returns the figures (the same dict on every rank)."""
    args = parse_args(argv)
    comm = world()
    rank = comm.Get_rank() if comm is not None else 0
    size = comm.Get_size() if comm is not None else 1

    def barrier() -> None:
        if comm is not None:
            comm.Barrier()

    def gathered(value: Any) -> list:
        return comm.allgather(value) if comm is not None else [value]

    problem = Heat1D(nx=args.nx, n_steps=args.n_steps)
    options = dict(levels=args.levels, coarsening=args.coarsening, relax=args.relax, tol=0.0, max_iter=args.iterations, comm=comm)

    # Warm-up solve through the recording proxy: it records this rank's step
    # calls and fills the problem's LU cache for every level. The proxy is
    # the problem of this solve only; the timed solves step the bare problem.
    solver = MGRIT(problem, **options)
    recorder = StepRecorder(problem)
    warm = solver.solve(problem=recorder)
    calls = list(recorder.calls)
    steps = warm.steps_per_rank[rank]
    if len(calls) != steps:
        raise RuntimeError(f"rank {rank}: recorded {len(calls)} step calls, the solver counted {steps}")

    state = problem.initial_value()
    # Per repeat: the slowest rank's wall and CPU seconds; per rank: its own.
    mgrit_times: list[float] = []
    bare_times: list[float] = []
    mgrit_cpu: list[float] = []
    bare_cpu: list[float] = []
    mine_mgrit: list[float] = []
    mine_bare: list[float] = []
    result = warm
    for _ in range(args.repeat):
        gc.collect()
        barrier()
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        result = solver.solve()
        wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
        if result.steps_per_rank[rank] != steps:
            raise RuntimeError(f"rank {rank}: the timed solve made {result.steps_per_rank[rank]} steps, the warm-up {steps}")
        mine_mgrit.append(wall)
        mgrit_times.append(max(gathered(wall)))
        mgrit_cpu.append(max(gathered(cpu)))

        gc.collect()
        barrier()
        wall, cpu = replay(problem, calls, state)
        mine_bare.append(wall)
        bare_times.append(max(gathered(wall)))
        bare_cpu.append(max(gathered(cpu)))

    mgrit_time = min(mgrit_times)
    bare_time = min(bare_times)
    ratio = _ratio(mgrit_time, bare_time)
    overhead = ratio - 1.0
    steps_per_rank = list(result.steps_per_rank)
    most_steps = max(max(steps_per_rank), 1)
    mix_rank0 = gathered(sorted(Counter((stop - start, level) for start, stop, level in calls).items()))[0]
    figures = {
        "ranks": size,
        "n_steps": args.n_steps,
        "nx": args.nx,
        "levels": len(result.points_per_level),
        "coarsening": args.coarsening,
        "relax": args.relax,
        "iterations": result.iterations,
        "repeat": args.repeat,
        "steps": steps_per_rank[0],
        "steps_per_rank": steps_per_rank,
        "mgrit_time": mgrit_time,
        "bare_time": bare_time,
        "ratio": ratio,
        "overhead": overhead,
        "step_time_us": 1e6 * bare_time / most_steps,
        "mgrit_time_per_step_us": 1e6 * mgrit_time / most_steps,
        "target": TARGET,
        "passed": overhead <= TARGET,
        "cpu_ratio": _ratio(min(mgrit_cpu), min(bare_cpu)),
        "mgrit_times": mgrit_times,
        "bare_times": bare_times,
        "mgrit_cpu_times": mgrit_cpu,
        "bare_cpu_times": bare_cpu,
        "mgrit_time_per_rank": gathered(min(mine_mgrit)),
        "bare_time_per_rank": gathered(min(mine_bare)),
        "step_mix_rank0": [{"width": w, "level": lv, "calls": n} for (w, lv), n in mix_rank0],
    }

    if rank == 0:
        report(figures)
        if args.json is not None:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0.0 else math.nan


def report(f: dict) -> None:
    verdict = "PASS" if f["passed"] else "over target"
    scope = "" if f["ranks"] == 1 else " (the target is set for P = 1)"
    header = (
        f"{'ranks':>5} {'N':>6} {'nx':>5} {'levels':>6} {'iters':>5} {'steps':>8} "
        f"{'MGRIT [s]':>10} {'bare [s]':>10} {'ratio':>6} {'overhead':>9}  target {f['target']:.0%}"
    )
    row = (
        f"{f['ranks']:>5} {f['n_steps']:>6} {f['nx']:>5} {f['levels']:>6} {f['iterations']:>5} {max(f['steps_per_rank']):>8} "
        f"{f['mgrit_time']:>10.4f} {f['bare_time']:>10.4f} {f['ratio']:>6.3f} {f['overhead']:>+9.1%}  {verdict}{scope}"
    )
    print(f"MGRIT bookkeeping overhead: heat 1D, {f['relax']} relaxation, coarsening {f['coarsening']}, best of {f['repeat']}")
    print(header)
    print(row)
    print(f"step time: {f['step_time_us']:.2f} us bare, {f['mgrit_time_per_step_us']:.2f} us per step inside MGRIT")
    mix = ", ".join(f"level {m['level']} (width {m['width']}): {m['calls']}" for m in f["step_mix_rank0"])
    print(f"step mix (rank 0): {mix}")
    print(f"CPU-time ratio (less sensitive to other load on the machine): {f['cpu_ratio']:.3f}")
    if f["ranks"] > 1:
        print("times are the slowest rank's; steps is the largest per-rank count")
        print(f"steps per rank: {f['steps_per_rank']}")
        print(f"best MGRIT time per rank [s]: {', '.join(f'{t:.4f}' for t in f['mgrit_time_per_rank'])}")
        print(f"best bare time per rank [s]:  {', '.join(f'{t:.4f}' for t in f['bare_time_per_rank'])}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
