"""The ``plot`` verb: draw a ``train --out`` folder or a ``sweep`` CSV table."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._common import check_output

HELP = "draw a train --out folder (loss, accuracy, residuals) or a sweep CSV (factor or accuracy)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``plot``."""
    parser.add_argument("run_dir", metavar="DIR|FILE.csv", help="a folder written by train --out, or a CSV file written by sweep")
    parser.add_argument("--out", metavar="FILE", help="image file (default DIR/training.png, or FILE.png beside the CSV)")


def prepare(args: argparse.Namespace, comm: Any, rank: int) -> Callable[[], int]:
    """Check the source and the image file; return the job that draws on rank 0."""
    from ..studies.plot import plot_sweep, plot_training

    source = Path(args.run_dir)
    if source.suffix == ".csv":
        from ..studies.sweep import read_table

        target = args.out or str(source.with_suffix(".png"))
        check_output("--out", target)
        draw = functools.partial(plot_sweep, read_table(source), target)
    else:
        target = args.out or str(source / "training.png")
        check_output("--out", target)
        if not (source / "metrics.jsonl").is_file():
            raise ValueError(f"plot: {args.run_dir!r} has no metrics.jsonl (is it a train --out folder, or a sweep .csv file?)")
        draw = functools.partial(plot_training, source, target)

    def run() -> int:
        if rank == 0:
            print(f"wrote {draw()}")
        return 0

    return run
