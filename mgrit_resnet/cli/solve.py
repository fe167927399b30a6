"""The ``solve`` verb: MGRIT on the ``[problem]`` of a config with its ``[mgrit]`` options; a residual table."""

from __future__ import annotations

import argparse
import math
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import comm as comm_module
from .. import problems, theory
from .._checks import check_memory
from ..comm.provenance import now, provenance
from ..config import Config, ConfigError, parse_overrides
from ..mgrit import MGRIT, check_coarse_grid
from ._common import add_config_arguments, check_output, load, progress, reporting_write_errors, world_size, write_json

HELP = "run MGRIT on the [problem] of CONFIG with the [mgrit] options"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``solve``."""
    add_config_arguments(parser)
    parser.add_argument("--json", metavar="FILE", help="write the result as JSON")
    parser.add_argument("--plot", metavar="FILE", help="draw the residual history (PNG, PDF or SVG by suffix)")
    parser.add_argument(
        "--virtual-clock",
        metavar="ALPHA,BETA",
        help="also report the wall time with one core per rank and a network of ALPHA s per message, BETA s per byte",
    )


def check_solve_memory(problem: Any, ranks: int) -> None:
    """Refuse a ``[problem]`` whose states cannot fit in memory, before any is made.

    A rank holds its share of the fine points and about as many again on the
    coarse levels and in the FAS right-hand sides; each state is an array of
    one number (Dahlquist), ``nx`` or ``nx**2`` numbers, plus about 112 bytes of array object.
    """
    numbers = 2 if problem.kind == "dahlquist" else problem.nx if problem.kind == "heat1d" else problem.nx**2
    points = -(-(problem.n_steps + 1) // ranks)
    check_memory(2 * points * (8 * numbers + 112), f"solving problem.n_steps = {problem.n_steps} ({problem.kind}) on {ranks} rank(s)")


def prepare(args: argparse.Namespace, comm: Any, rank: int) -> Callable[[], int]:
    """Check the outputs and the config and build the solver; return the job that solves, prints and writes."""
    for option in ("json", "plot"):
        check_output(f"--{option}", getattr(args, option))
    cfg = load(args)
    require_problem(args.config, args.set)
    check_solve_memory(cfg.problem, world_size(comm))
    clocked = None
    if args.virtual_clock is not None:
        from ..comm.clocked import ClockedBackend, VirtualClock

        clocked = ClockedBackend(comm_module.backend_for(comm), VirtualClock(*parse_network(args.virtual_clock)))
    problem = problems.from_config(cfg.problem)
    solver = MGRIT.from_config(problem, cfg.mgrit, comm if clocked is None else clocked)
    check_coarse_grid(cfg.mgrit, problem.n_steps, "problem.n_steps")  # the rule train has: no silent one-level solve

    def run() -> int:
        started = now()
        with progress(rank, solver.max_iter, "MGRIT", "it") as bar:
            result = solver.solve(callback=lambda iteration, residual: bar.goto(iteration, residual=f"{residual:.3e}"))
        document = result.to_json()
        document["provenance"] = provenance(cfg, world_size(comm), started)
        if clocked is not None:
            from ..comm.clocked import virtual_time

            document["virtual_time"] = virtual_time(clocked)
        if rank == 0:
            predicted = theory.solver_prediction(solver)
            print(report(cfg, problem.describe(), solver, result, predicted))
            if clocked is not None:
                print(f"virtual clock: {document['virtual_time']:.4f} s with one core per rank (wall time {result.wall_time:.4f} s)")
            write_json(args.json, document, rank)
            if args.plot:
                from ..studies.plot import plot_residuals

                title = f"{cfg.problem.kind}: {problem.describe()}\n{mgrit_text(cfg, solver, result)}"
                with reporting_write_errors(args.plot):
                    plot_residuals(result, args.plot, predicted, title)
        return 0

    return run


def require_problem(config: str, overrides: list[str]) -> None:
    """Refuse a config with no ``[problem]`` table and no ``--set problem.KEY=VALUE``: solve would run the default problem unasked.

    The config has been loaded (so it exists and is valid TOML); this reads its tables as written.
    """
    if any(key.startswith("problem.") for key in parse_overrides(overrides)):
        return
    if "problem" not in tomllib.loads(Path(config).read_text(encoding="utf-8")):
        raise ConfigError(
            f'solve: the config {config!r} has no [problem] table: add one (kind = "dahlquist", "heat1d" or "heat2d", '
            "and its keys), or give them with --set problem.KEY=VALUE"
        )


def parse_network(text: str) -> tuple[float, float]:
    """``"ALPHA,BETA"`` -> two numbers of seconds >= 0, or a clear error."""
    try:
        alpha, beta = (float(part) for part in text.split(","))
    except ValueError:
        alpha = beta = -1.0
    if not (alpha >= 0 and beta >= 0):
        raise ValueError(f"--virtual-clock must be ALPHA,BETA: seconds per message and per byte, both >= 0 (e.g. 2e-6,1e-10); got {text!r}")
    return alpha, beta


def mgrit_text(cfg: Config, solver: MGRIT, result: Any) -> str:
    """One line on the hierarchy and the options of a finished solve."""
    h = solver.hierarchy
    return (
        f"MGRIT: {h.n_levels} level(s), points {result.points_per_level}, coarsening {list(h.factors)}, "
        f"relax {cfg.mgrit.relax}, {cfg.mgrit.cycle}-cycle, {result.ranks} rank(s)"
    )


def report(cfg: Config, problem: str, solver: MGRIT, result: Any, predicted: float | None) -> str:
    """The printed table: the problem, the hierarchy, the residual and factor per iteration, the theory beside them."""
    lines = [
        f"problem {cfg.problem.kind}: {problem}",
        mgrit_text(cfg, solver, result),
        f"{'iter':>4}  {'residual':>12}  {'factor':>8}",
    ]
    if result.initial_residual is not None:
        lines.append(f"{0:>4}  {result.initial_residual:12.4e}  {'':>8}")
    for k, (r, f) in enumerate(zip(result.residuals, result.convergence_factors), start=1):
        lines.append(f"{k:>4}  {r:12.4e}  {'-' if math.isnan(f) else f'{f:8.4f}':>8}")
    state = "converged" if result.converged else "not converged"
    lines.append(f"{state} after {result.iterations} iteration(s) in {result.wall_time:.3f} s; steps per rank {result.steps_per_rank}")
    measured = [f for f in result.convergence_factors if not math.isnan(f) and f > 0]
    if predicted is not None and measured:
        lines.append(
            f"two-level theory (Southworth 2019): factor {predicted:.4f}; measured: first {measured[0]:.4f}, max {max(measured):.4f}"
        )
    return "\n".join(lines)
