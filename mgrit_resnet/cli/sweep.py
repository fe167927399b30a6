"""The ``sweep`` verb: ``solve`` (or ``train``) at every point of a grid of config keys; one CSV row per point.

The grid, the resume logic and the runs are :mod:`mgrit_resnet.studies.sweep`;
this module reads the options, checks everything before the first point and prints.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import ConfigError, parse_overrides
from ._common import add_config_arguments, check_config_file, check_output, progress, write_json

HELP = "run solve (or train) at every point of a grid of config keys; one CSV row per point"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``sweep``."""
    add_config_arguments(parser)
    parser.add_argument(
        "--grid", action="append", default=[], metavar="KEY=V1,V2,...", help="a dotted key and its values; repeat for more keys"
    )
    parser.add_argument("--out", metavar="FILE.csv", required=True, help="the CSV table; rows already in it are not run again")
    parser.add_argument("--verb", dest="sweep_verb", choices=("solve", "train"), default="solve", help="what to run per point")


def prepare(args: argparse.Namespace, comm: Any, rank: int) -> Callable[[], int]:
    """Check the grid, every point's config and the CSV; return the job that runs the missing points."""
    from ..studies import sweep

    check_output("--out", args.out)
    verb = args.sweep_verb
    out = Path(args.out)
    if out.suffix != ".csv":
        raise ConfigError(f"--out must name a .csv file; got {args.out!r}")
    if out.exists() and not out.is_file():
        raise ConfigError(f"--out {args.out!r} exists and is not a file")
    overrides = parse_overrides(args.set)
    check_config_file(args.config)
    grid = sweep.parse_grid(args.grid, overrides)
    points = sweep.grid_points(args.config, overrides, grid, verb)
    sweep.check_points(points, verb, comm)
    todo, keep = sweep.pending(out, list(grid), verb, points, comm, rank)

    def run() -> int:
        if rank == 0:
            print(f"sweep: {len(points)} point(s), {len(points) - len(todo)} already in {out}, {len(todo)} to run", flush=True)
            sidecar = {"verb": verb, "config": args.config, "set": args.set, "grid": args.grid, "title": sweep_title(verb, points, grid)}
            write_json(sidecar_path(out), sidecar, rank)
        with progress(rank, len(todo), f"sweep {verb}", "point") as bar:

            def on_point(i: int, point: Any, row: dict[str, Any]) -> None:
                bar.update()
                bar.write(f"[{i}/{len(todo)}] {point.label}: {point_text(verb, row)}")

            sweep.run_points(out, keep, list(grid), verb, todo, comm, rank, on_point)
        if rank == 0:
            print(f"wrote {out}")
        return 0

    return run


def sidecar_path(table: Path) -> Path:
    """``FILE.csv`` -> ``FILE.sweep.json``: what the sweep ran (config, overrides, grid) and the title ``plot`` gives its figure."""
    return table.with_suffix(".sweep.json")


def sweep_title(verb: str, points: list[Any], grid: dict[str, Any]) -> str:
    """One line on what the grid runs on: the problem of a solve sweep, the network and data of a train sweep."""
    cfg = points[0].config
    varied = ", ".join(key for key in grid if key.partition(".")[0] in (("problem",) if verb == "solve" else ("network", "data")))
    if verb == "solve":
        from .. import problems

        text = f"solve {cfg.problem.kind}: {problems.from_config(cfg.problem).describe()}"
    else:
        n = cfg.network
        text = f"train {cfg.data.name}: {n.kind} network, depth {n.depth}, width {n.width}, {cfg.train.strategy}"
    return f"{text} ({varied} as in the grid)" if varied else text


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)


def point_text(verb: str, row: dict[str, Any]) -> str:
    """The printed summary of one finished point."""
    if verb == "solve":
        state = "converged" if row["converged"] else "not converged"
        return (
            f"{state}, {row['iterations']} iteration(s), residual {_number(row['final_residual'], '.3e')}, "
            f"mean factor {_number(row['mean_factor'], '.4f')} (theory {_number(row['theory_bound'], '.4f')}), {row['wall_time']:.3f} s"
        )
    return (
        f"train acc {_number(row['train_accuracy'], '.4f')}, val acc {_number(row['val_accuracy'], '.4f')}, "
        f"loss {_number(row['final_loss'], '.4f')}, {row['wall_time']:.1f} s"
    )
