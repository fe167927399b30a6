"""The ``plot`` verb: draw a ``train --out`` folder or a ``sweep`` CSV table."""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._common import check_output, reporting_write_errors

HELP = "draw a train --out folder (loss, accuracy, residuals) or a sweep CSV (factor or accuracy)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``plot``."""
    parser.add_argument("run_dir", metavar="DIR|FILE.csv", help="a folder written by train --out, or a CSV file written by sweep")
    parser.add_argument("--out", metavar="FILE", help="image file (default DIR/training.png, or FILE.png beside the CSV)")


def prepare(args: argparse.Namespace, comm: Any, rank: int) -> Callable[[], int]:
    """Check the source and the image file; return the job that draws on rank 0."""
    from ..studies.plot import plot_sweep, plot_training

    source = Path(args.run_dir)
    # The source first: a missing one is the user's DIR or FILE.csv, not an --out they may never have given.
    if source.suffix == ".csv":
        if not source.is_file():
            what = "is not a file" if source.exists() else "does not exist"
            raise ValueError(f"plot: the sweep table {args.run_dir!r} {what}")
    elif not source.is_dir():
        what = "is neither a folder nor a .csv file" if source.exists() else "does not exist"
        raise ValueError(f"plot: {args.run_dir!r} {what} (plot takes a train --out folder or a sweep .csv file)")
    elif not (source / "metrics.jsonl").is_file():
        raise ValueError(f"plot: {args.run_dir!r} has no metrics.jsonl (is it a train --out folder, or a sweep .csv file?)")
    target = args.out or str(source.with_suffix(".png") if source.suffix == ".csv" else source / "training.png")
    # Without --out the image goes beside the source, which the user named.
    check_output("--out" if args.out else f"plot {args.run_dir}", target)
    if source.suffix == ".csv":
        from ..studies.sweep import read_table
        from .sweep import sidecar_path

        draw = functools.partial(plot_sweep, read_table(source), target, sweep_title(source, sidecar_path(source)))
    else:
        draw = functools.partial(plot_training, source, target)

    def run() -> int:
        if rank == 0:
            with reporting_write_errors(target):
                print(f"wrote {draw()}")
        return 0

    return run


def sweep_title(table: Path, sidecar: Path) -> str:
    """The figure title of a sweep table: its name and what ``sweep`` recorded beside it (its name alone without a record)."""
    try:
        recorded = json.loads(sidecar.read_text(encoding="utf-8")).get("title", "")
    except (OSError, ValueError, AttributeError):
        recorded = ""
    return f"{table.name}: {recorded}" if recorded else table.name
