"""The ``mgrit-resnet`` command line.

Verbs: ``solve``, ``train``, ``compare``, ``sweep``, ``plot``, ``predict``, ``tune``, ``verify`` and ``info``.

Every verb runs unchanged under ``mpiexec -n P``; only rank 0 prints and
writes files. Bad input ends every rank with exit code 2 and one message; an
unexpected exception on any rank aborts all of them.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .. import comm as comm_module
from .. import problems, theory
from ..config import ConfigError, load_config, parse_overrides
from ..mgrit import MGRIT
from ..studies.plot import plot_residuals
from ..studies.tune import DEFAULT_COARSENING, DEFAULT_LEVELS
from .predict import DEFAULT_RANKS

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits; raise instead so every rank leaves the same way
        raise ConfigError(f"{message}\n{self.format_usage().strip()}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mgrit-resnet", description="Layer-parallel ResNets and parallel-in-time MGRIT.")
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)

    def verb(name: str, help: str, config_help: str = "TOML config file") -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=help)
        sub.add_argument("config", help=config_help)
        sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a dotted config key")
        return sub

    solve = verb("solve", "run MGRIT on the [problem] of CONFIG with the [mgrit] options")
    solve.add_argument("--json", metavar="FILE", help="write the result as JSON")
    solve.add_argument("--plot", metavar="FILE", help="draw the residual history (PNG, PDF or SVG by suffix)")
    solve.add_argument(
        "--virtual-clock",
        metavar="ALPHA,BETA",
        help="also report the wall time with one core per rank and a network of ALPHA s per message, BETA s per byte",
    )
    train = verb("train", "train the [network] on the [data] with the [train] strategy")
    train.add_argument("--out", metavar="DIR", help="output folder (metrics.jsonl, summary.json, config.toml, checkpoint.pt)")
    train.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
    compare = verb("compare", "train several strategies on the same network, data, seed and epoch budget; table and figure")
    compare.add_argument(
        "--strategies",
        default="serial,one_shot,local,trgl",
        help="comma-separated, from serial, exact, one_shot, local, trgl (default %(default)s)",
    )
    compare.add_argument("--out", metavar="DIR", help="output folder (compare.md, compare.csv, compare.json, compare.png)")
    sweep = verb("sweep", "run solve (or train) at every point of a grid of config keys; one CSV row per point")
    sweep.add_argument(
        "--grid", action="append", default=[], metavar="KEY=V1,V2,...", help="a dotted key and its values; repeat for more keys"
    )
    sweep.add_argument("--out", metavar="FILE.csv", required=True, help="the CSV table; rows already in it are not run again")
    sweep.add_argument("--verb", dest="sweep_verb", choices=("solve", "train"), default="solve", help="what to run per point")
    plot = verbs.add_parser("plot", help="draw a train --out folder (loss, accuracy, residuals) or a sweep CSV (factor or accuracy)")
    plot.add_argument("run_dir", metavar="DIR|FILE.csv", help="a folder written by train --out, or a CSV file written by sweep")
    plot.add_argument("--out", metavar="FILE", help="image file (default DIR/training.png, or FILE.png beside the CSV)")
    verify = verb("verify", "compare the layer-parallel network with its serial twin", "TOML config file ([network] and [mgrit] are used)")
    verify.add_argument("--json", metavar="FILE", help="write the comparison as JSON")
    verify.add_argument("--batch", type=int, default=8, help="number of random input samples (default 8)")
    verify.add_argument(
        "--tol", type=float, default=None, help="largest relative difference that passes (default 1e-6 in float64, 1e-3 in float32)"
    )
    predict = verb("predict", "predict wall time, speedup and efficiency at any number of ranks from a one-rank calibration")
    predict.add_argument("--ranks", default=DEFAULT_RANKS, help="rank counts, comma-separated")
    predict.add_argument(
        "--of", choices=("train", "solve"), default="train", help="a one-shot training step of [network], or the solve of [problem]"
    )
    predict.add_argument("--alpha", type=float, default=None, help="seconds per message (default 2e-6)")
    predict.add_argument("--beta", type=float, default=None, help="seconds per byte (default 1e-10, i.e. 10 GB/s)")
    predict.add_argument("--measure-network", action="store_true", help="measure alpha and beta by a ping-pong between ranks 0 and 1")
    predict.add_argument("--json", metavar="FILE", help="write the prediction and the calibration as JSON")
    predict.add_argument("--out", metavar="FILE", help="draw time and speedup against ranks (PNG, PDF or SVG)")
    tune = verb("tune", "MGRIT hierarchies for a one-shot training step: predicted time at P ranks against measured gradient error")
    tune.add_argument("--ranks", required=True, help="the rank count P to predict for")
    tune.add_argument("--levels", default=DEFAULT_LEVELS, help="numbers of levels to try, comma-separated (default %(default)s)")
    tune.add_argument("--coarsening", default=DEFAULT_COARSENING, help="coarsening factors to try, comma-separated (default %(default)s)")
    tune.add_argument("--steps", type=int, default=8, help="optimiser steps per hierarchy for the gradient error (default %(default)s)")
    tune.add_argument("--rounds", type=int, default=2, help="calibrations per hierarchy, the shortest kept (default %(default)s)")
    tune.add_argument("--max-error", type=float, default=0.01, help="gradient error a recommendation may have (default %(default)s)")
    tune.add_argument("--json", metavar="FILE", help="write every row and the recommendation as JSON")
    tune.add_argument("--out", metavar="FILE", help="draw gradient error against predicted time (PNG, PDF or SVG)")
    verbs.add_parser("info", help="versions, ranks, threads and devices")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    comm = comm_module.world()
    comm_module.install_abort_on_error(comm)
    rank = 0 if comm is None else comm.Get_rank()
    try:
        # Everything that checks input happens here, identically on every rank and
        # before any communication, so bad input ends every rank the same way.
        args = build_parser().parse_args(argv)
        if args.verb == "solve":
            job = _prepare_solve(args, comm, rank)
        elif args.verb == "train":
            from .train import prepare_train

            job = prepare_train(args, comm, rank)
        elif args.verb == "sweep":
            from ..studies.sweep import prepare_sweep

            _check_output_path("--out", args.out)
            job = prepare_sweep(args, comm, rank)
        elif args.verb == "predict":
            from .predict import prepare_predict

            for option in ("json", "out"):
                _check_output_path(f"--{option}", getattr(args, option))
            job = prepare_predict(args, comm, rank)
        elif args.verb == "tune":
            from ..studies.tune import prepare_tune

            for option in ("json", "out"):
                _check_output_path(f"--{option}", getattr(args, option))
            job = prepare_tune(args, comm, rank)
        elif args.verb == "compare":
            from ..studies.compare import prepare_compare

            job = prepare_compare(args, comm, rank)
        elif args.verb == "plot":
            job = _prepare_plot(args, rank)
        elif args.verb == "verify":
            from .verify import prepare_verify

            _check_output_path("--json", args.json)
            job = prepare_verify(args, comm, rank)
        else:
            job = lambda: _info(comm, rank)  # noqa: E731
    except (ConfigError, ValueError, TypeError, ImportError) as error:
        if rank == 0:
            print(f"mgrit-resnet: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return job()


def _prepare_solve(args: argparse.Namespace, comm: Any, rank: int) -> Callable[[], int]:
    for option in ("json", "plot"):
        _check_output_path(f"--{option}", getattr(args, option))
    cfg = load_config(args.config, parse_overrides(args.set))
    clocked = None
    if args.virtual_clock is not None:
        from ..comm.clocked import ClockedBackend, VirtualClock

        clocked = ClockedBackend(comm_module.backend_for(comm), VirtualClock(*_network(args.virtual_clock)))
    solver = build_solver(cfg, comm if clocked is None else clocked)

    def run() -> int:
        with _progress(rank, solver.max_iter) as callback:
            result = solver.solve(callback=callback)
        document = result.to_json()
        if clocked is not None:
            from ..comm.clocked import virtual_time

            document["virtual_time"] = virtual_time(clocked)
        if rank == 0:
            predicted = theory.solver_prediction(solver)
            print(_report(cfg, solver, result, predicted))
            if clocked is not None:
                print(f"virtual clock: {document['virtual_time']:.4f} s with one core per rank (wall time {result.wall_time:.4f} s)")
            if args.json:
                Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
            if args.plot:
                title = f"{cfg.problem.kind}: {problem_text(cfg.problem)}\n{_mgrit_text(cfg, solver, result)}"
                plot_residuals(result, args.plot, predicted, title)
        return 0

    return run


def _network(text: str) -> tuple[float, float]:
    """``"ALPHA,BETA"`` -> two numbers of seconds >= 0, or a clear error."""
    try:
        alpha, beta = (float(part) for part in text.split(","))
    except ValueError:
        alpha = beta = -1.0
    if not (alpha >= 0 and beta >= 0):
        raise ValueError(f"--virtual-clock must be ALPHA,BETA: seconds per message and per byte, both >= 0 (e.g. 2e-6,1e-10); got {text!r}")
    return alpha, beta


def build_solver(cfg: Any, comm: Any) -> MGRIT:
    """The :class:`~mgrit_resnet.MGRIT` solver of a config's ``[problem]`` and ``[mgrit]`` tables (checks them)."""
    return MGRIT(problems.from_config(cfg.problem), comm=comm, **cfg.mgrit.as_dict())


@contextlib.contextmanager
def _progress(rank: int, total: int) -> Iterator[Callable[[int, float], None]]:
    """A progress bar on rank 0 when stderr is a terminal (batch logs get the table only)."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc="MGRIT", unit="it", disable=rank != 0 or not sys.stderr.isatty(), leave=False)

    def update(iteration: int, residual: float) -> None:
        bar.update(iteration - bar.n)
        bar.set_postfix(residual=f"{residual:.3e}")

    try:
        yield update
    finally:
        bar.close()


def _prepare_plot(args: argparse.Namespace, rank: int) -> Callable[[], int]:
    from ..studies.plot import plot_sweep, plot_training

    source = Path(args.run_dir)
    if source.suffix == ".csv":
        from ..studies.sweep import read_table

        target = args.out or str(source.with_suffix(".png"))
        _check_output_path("--out", target)
        draw = functools.partial(plot_sweep, read_table(source), target)
    else:
        target = args.out or str(source / "training.png")
        _check_output_path("--out", target)
        if not (source / "metrics.jsonl").is_file():
            raise ValueError(f"plot: {args.run_dir!r} has no metrics.jsonl (is it a train --out folder, or a sweep .csv file?)")
        draw = functools.partial(plot_training, source, target)

    def run() -> int:
        if rank == 0:
            print(f"wrote {draw()}")
        return 0

    return run


def _check_output_path(option: str, path: str | None) -> None:
    """Fail before the work, not after it, when an output file cannot be written."""
    if path is None:
        return
    folder = Path(path).resolve().parent
    if not folder.is_dir():
        raise ValueError(f"{option}: the folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{option}: the folder {str(folder)!r} is not writable")


def _mgrit_text(cfg: Any, solver: MGRIT, result: Any) -> str:
    h = solver.hierarchy
    return (
        f"MGRIT: {h.n_levels} level(s), points {result.points_per_level}, coarsening {list(h.factors)}, "
        f"relax {cfg.mgrit.relax}, {cfg.mgrit.cycle}-cycle, {result.ranks} rank(s)"
    )


def _report(cfg: Any, solver: MGRIT, result: Any, predicted: float | None) -> str:
    lines = [
        f"problem {cfg.problem.kind}: {problem_text(cfg.problem)}",
        _mgrit_text(cfg, solver, result),
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


def problem_text(section: Any) -> str:
    p = section.as_dict()
    if p["kind"] == "dahlquist":
        return f"z = {p['z']}, {p['scheme']}, T = {p['t_final']}, {p['n_steps']} steps"
    return f"nx = {p['nx']}, diffusivity {p['diffusivity']}, backward_euler, T = {p['t_final']}, {p['n_steps']} steps"


def _info(comm: Any, rank: int) -> int:
    import platform

    import numpy
    import scipy

    size = 1 if comm is None else comm.Get_size()
    rows = {"python": platform.python_version(), "numpy": numpy.__version__, "scipy": scipy.__version__}
    try:
        import torch

        rows["torch"] = torch.__version__
        rows["torch threads"] = str(torch.get_num_threads())
        rows["cuda devices"] = str(torch.cuda.device_count() if torch.cuda.is_available() else 0)
    except ImportError:
        rows["torch"] = "not installed"
    rows.update(comm_module.mpi_versions())
    try:
        import petsc4py

        rows["petsc4py"] = petsc4py.__version__
    except ImportError:
        rows["petsc4py"] = "not installed (make petsc, or pip install mgrit_resnet[petsc])"
    rows["ranks"] = str(size)
    rows["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "unset")
    if rank == 0:
        width = max(len(k) for k in rows)
        print("\n".join(f"{k:<{width}}  {v}" for k, v in rows.items()))
    return 0


def run() -> None:
    sys.exit(main())
