"""The ``predict`` verb: predicted wall time, speedup and efficiency over rank counts."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ..comm.provenance import now, provenance
from ._common import (
    add_config_arguments,
    check_output,
    load,
    parse_int_list,
    parse_ranks,
    progress,
    reporting_write_errors,
    world_size,
    write_json,
)

__all__ = ["HELP", "DEFAULT_RANKS", "add_arguments", "prepare", "parse_int_list", "parse_ranks"]

HELP = "predict wall time, speedup and efficiency at any number of ranks from a one-rank calibration"
DEFAULT_RANKS = "1,2,4,8,16,32,64,128,256,512,1024"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``predict``."""
    add_config_arguments(parser)
    parser.add_argument("--ranks", default=DEFAULT_RANKS, help="rank counts, comma-separated")
    parser.add_argument(
        "--of", choices=("train", "solve"), default="train", help="a one-shot training step of [network], or the solve of [problem]"
    )
    parser.add_argument("--alpha", type=float, default=None, help="seconds per message (default 2e-6)")
    parser.add_argument("--beta", type=float, default=None, help="seconds per byte (default 1e-10, i.e. 10 GB/s)")
    parser.add_argument("--measure-network", action="store_true", help="measure alpha and beta by a ping-pong between ranks 0 and 1")
    parser.add_argument("--json", metavar="FILE", help="write the prediction and the calibration as JSON")
    parser.add_argument("--out", metavar="FILE", help="draw time and speedup against ranks (PNG, PDF or SVG)")


def prepare(args: argparse.Namespace, comm: Any, rank: int) -> Callable[[], int]:
    """Check the input on every rank; the job calibrates and predicts on rank 0."""
    from ..studies import perfmodel

    for option in ("json", "out"):
        check_output(f"--{option}", getattr(args, option))
    cfg = load(args)
    ranks = parse_ranks(args.ranks)
    if args.measure_network and world_size(comm) < 2:
        raise ValueError("--measure-network times a ping-pong between two ranks: run under mpiexec -n 2 (or more)")
    if args.measure_network and (args.alpha is not None or args.beta is not None):
        raise ValueError("give either --measure-network or --alpha/--beta, not both")
    for name in ("alpha", "beta"):
        value = getattr(args, name)
        if value is not None and not value >= 0:
            raise ValueError(f"--{name} must be a number of seconds >= 0; got {value!r}")
    if args.of == "train":
        # A rank count that cannot run the step is skipped (the prediction notes why); a config whose
        # step cannot run at the fewest ranks it allows (one per data group) runs nowhere: refused.
        try:
            perfmodel.check_training_ranks(cfg, cfg.train.data_parallel)
        except ValueError as error:
            raise ValueError(f"--of train: a one-shot training step of this config cannot run at any rank count: {error}") from None
    alpha = perfmodel.CLUSTER_NETWORK[0] if args.alpha is None else args.alpha
    beta = perfmodel.CLUSTER_NETWORK[1] if args.beta is None else args.beta

    def run() -> int:
        started = now()
        from ..comm import backend_for
        from ..comm.clocked import measure_network

        network = measure_network(backend_for(comm)) if args.measure_network else (alpha, beta)
        if rank != 0:
            return 0
        with progress(rank, len(ranks), "predict", "P") as bar:
            calibration, rows = perfmodel.predict(cfg, ranks, of=args.of, network=network, progress=lambda p: bar.update())
        source = "measured by ping-pong" if args.measure_network else "given"
        one_rank, serial = calibration.one_rank_time * 1e3, calibration.serial_time * 1e3
        print(f"{calibration.what}, calibrated on one rank: {one_rank:.3f} ms; serial {serial:.3f} ms")
        if isinstance(calibration.costs, perfmodel.StagedCosts):
            print(perfmodel.format_stages(calibration.costs))
        print(f"network ({source}): alpha = {network[0] * 1e6:.3g} us per message, beta = {network[1] * 1e9:.3g} ns per byte")
        print(perfmodel.format_table(rows))
        document = {"of": args.of, "network": {"alpha": network[0], "beta": network[1]}, "calibration": calibration.as_dict()}
        document["rows"] = [row.as_dict() for row in rows]
        document["provenance"] = provenance(cfg, world_size(comm), started)
        write_json(args.json, document, rank)
        if args.out:
            from ..studies.plot import plot_scaling

            with reporting_write_errors(args.out):
                print(f"wrote {plot_scaling(rows, args.out, f'{calibration.what} (predicted)')}")
        return 0

    return run
