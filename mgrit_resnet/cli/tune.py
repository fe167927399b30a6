"""The ``tune`` verb: MGRIT hierarchies for a one-shot training step, predicted time at P ranks against gradient error.

The candidates, the predictions and the measurements are :mod:`mgrit_resnet.studies.tune`;
this module reads the options, checks them and prints the table and the recommendation.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable
from typing import Any

from ..comm.provenance import now, provenance
from ._common import add_config_arguments, check_output, load, parse_int_list, progress, reporting_write_errors, world_size, write_json

HELP = "MGRIT hierarchies for a one-shot training step: predicted time at P ranks against measured gradient error"
DEFAULT_LEVELS = "2,3,4"
DEFAULT_COARSENING = "2,4,8"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``tune``."""
    add_config_arguments(parser)
    parser.add_argument("--ranks", required=True, help="the rank count P to predict for")
    parser.add_argument("--levels", default=DEFAULT_LEVELS, help="numbers of levels to try, comma-separated (default %(default)s)")
    parser.add_argument("--coarsening", default=DEFAULT_COARSENING, help="coarsening factors to try, comma-separated (default %(default)s)")
    parser.add_argument("--steps", type=int, default=8, help="optimiser steps per hierarchy for the gradient error (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="calibrations per hierarchy, the shortest kept (default %(default)s)")
    parser.add_argument("--max-error", type=float, default=0.01, help="gradient error a recommendation may have (default %(default)s)")
    parser.add_argument("--json", metavar="FILE", help="write every row and the recommendation as JSON")
    parser.add_argument("--out", metavar="FILE", help="draw gradient error against predicted time (PNG, PDF or SVG)")


def prepare(args: argparse.Namespace, comm: Any, rank: int) -> Callable[[], int]:
    """Check the input on every rank; the job calibrates, measures and prints on rank 0."""
    from ..studies.perfmodel import check_training_ranks
    from ..studies.tune import candidate_configs, format_rows, recommend, tune

    for option in ("json", "out"):
        check_output(f"--{option}", getattr(args, option))
    cfg = load(args)
    ranks = parse_int_list("--ranks", args.ranks, minimum=1)
    if len(ranks) != 1:
        raise ValueError(f"--ranks takes one rank count for tune; got {args.ranks!r}")
    ranks = ranks[0]
    levels = parse_int_list("--levels", args.levels, minimum=2)
    coarsening = parse_int_list("--coarsening", args.coarsening, minimum=2)
    if args.steps < 2:
        raise ValueError(f"--steps must be at least 2 (the error is taken over the second half); got {args.steps}")
    if args.rounds < 1:
        raise ValueError(f"--rounds must be at least 1; got {args.rounds}")
    if not args.max_error > 0:
        raise ValueError(f"--max-error must be a number > 0; got {args.max_error!r}")
    depths = cfg.network.depths
    layers = f"stages of {'/'.join(map(str, depths))} layers (every stage)" if depths else f"{cfg.network.depth} layers"
    hierarchies = candidate_configs(cfg, levels, coarsening)
    if not hierarchies:
        raise ValueError(
            f"no multilevel hierarchy from --levels {args.levels} and --coarsening {args.coarsening} on {layers} "
            f"with mgrit.min_coarse = {cfg.mgrit.min_coarse}"
        )
    for candidate in hierarchies.values():
        try:
            check_training_ranks(candidate, ranks)
        except ValueError as error:
            raise ValueError(f"--ranks {ranks}: {error}") from None

    def run() -> int:
        started = now()
        if rank != 0:
            return 0
        with progress(rank, len(hierarchies) * (args.rounds + 1), "tune", "run") as bar:  # rounds calibrations + one measurement each
            rows = tune(cfg, ranks, levels, coarsening, args.steps, rounds=args.rounds, progress=lambda what: bar.update())
        chosen = recommend(rows, args.max_error)
        t = cfg.train
        print(
            f"one-shot step ({t.fwd_iters} forward / {t.bwd_iters} adjoint iterations) at P = {ranks}, "
            f"serial step {rows[0].serial_time * 1e3:.3f} ms; gradient error over {args.steps} steps"
        )
        print(format_rows(rows, chosen))
        print("* on the Pareto front (no other hierarchy is both faster and more accurate)")
        if chosen is None:
            print(f"no hierarchy reaches --max-error {args.max_error:g}: add iterations (train.fwd_iters, train.bwd_iters)")
        else:
            options = " ".join(f"--set {shlex.quote(o)}" for o in chosen.overrides())
            print(f"< fastest with gradient error <= {args.max_error:g}: {options}")
        document = {"ranks": ranks, "max_error": args.max_error, "rows": [r.as_dict() for r in rows]}
        document["recommended"] = None if chosen is None else chosen.as_dict()
        document["provenance"] = provenance(cfg, world_size(comm), started)
        write_json(args.json, document, rank)
        if args.out:
            from ..studies.plot import plot_tune

            with reporting_write_errors(args.out):
                print(f"wrote {plot_tune(rows, args.out, chosen, max_error=args.max_error)}")
        return 0

    return run
