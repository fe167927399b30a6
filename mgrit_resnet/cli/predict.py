"""The ``predict`` verb: predicted wall time, speedup and efficiency over rank counts."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import load_config, parse_overrides

DEFAULT_RANKS = "1,2,4,8,16,32,64,128,256,512,1024"


def parse_int_list(option: str, text: str, minimum: int) -> list[int]:
    """``"4,1,2,2"`` -> ``[1, 2, 4]``; a clear error naming ``option`` for anything but integers >= ``minimum``."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < minimum:
        example = ",".join(str(minimum * 2**k) for k in range(4))
        raise ValueError(f"{option} must be a comma-separated list of integers >= {minimum} (e.g. {example}); got {text!r}")
    return sorted(set(values))


def parse_ranks(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]``; a clear error for anything but positive integers."""
    return parse_int_list("--ranks", text, minimum=1)


def prepare_predict(args: argparse.Namespace, comm: Any, rank: int) -> Callable[[], int]:
    """Check the input on every rank; the job calibrates and predicts on rank 0."""
    from ..comm import backend_for
    from ..studies import perfmodel

    cfg = load_config(args.config, parse_overrides(args.set))
    ranks = parse_ranks(args.ranks)
    size = 1 if comm is None else comm.Get_size()
    if args.measure_network and size < 2:
        raise ValueError("--measure-network times a ping-pong between two ranks: run under mpiexec -n 2 (or more)")
    if args.measure_network and (args.alpha is not None or args.beta is not None):
        raise ValueError("give either --measure-network or --alpha/--beta, not both")
    for name in ("alpha", "beta"):
        value = getattr(args, name)
        if value is not None and not value >= 0:
            raise ValueError(f"--{name} must be a number of seconds >= 0; got {value!r}")
    alpha = perfmodel.CLUSTER_NETWORK[0] if args.alpha is None else args.alpha
    beta = perfmodel.CLUSTER_NETWORK[1] if args.beta is None else args.beta

    def run() -> int:
        from tqdm import tqdm

        from ..comm.clocked import measure_network

        backend = backend_for(comm)
        network = measure_network(backend) if args.measure_network else (alpha, beta)
        if rank != 0:
            return 0
        bar = tqdm(total=len(ranks), desc="predict", unit="P", disable=not sys.stderr.isatty(), leave=False)
        try:
            calibration, rows = perfmodel.predict(cfg, ranks, of=args.of, network=network, progress=lambda p: bar.update(1))
        finally:
            bar.close()
        source = "measured by ping-pong" if args.measure_network else "given"
        one_rank, serial = calibration.one_rank_time * 1e3, calibration.serial_time * 1e3
        print(f"{calibration.what}, calibrated on one rank: {one_rank:.3f} ms; serial {serial:.3f} ms")
        print(f"network ({source}): alpha = {network[0] * 1e6:.3g} us per message, beta = {network[1] * 1e9:.3g} ns per byte")
        print(perfmodel.format_table(rows))
        document = {"of": args.of, "network": {"alpha": network[0], "beta": network[1]}, "calibration": calibration.as_dict()}
        document["rows"] = [row.as_dict() for row in rows]
        if args.json:
            Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
        if args.out:
            from ..studies.plot import plot_scaling

            print(f"wrote {plot_scaling(rows, args.out, f'{calibration.what} (predicted)')}")
        return 0

    return run
