"""The ``compare`` verb: several training strategies on the same network, data, seed and epoch budget; table and figure.

The runs and their measurements are :mod:`mgrit_resnet.studies.compare`; this
module reads the options, checks every strategy's config before any runs,
prints the table and writes ``compare.md``, ``compare.csv``, ``compare.json`` and ``compare.png``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..comm.provenance import now, provenance
from ..config import STRATEGIES, ConfigError, load_config, parse_overrides
from ._common import (
    add_config_arguments,
    atomic_output,
    check_config_file,
    check_output,
    check_previous_run,
    reporting_write_errors,
    world_size,
    write_json,
    write_text,
)
from .train import training_progress

HELP = "train several strategies on the same network, data, seed and epoch budget; table and figure"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``compare``."""
    add_config_arguments(parser)
    parser.add_argument(
        "--strategies",
        default="serial,one_shot,local,trgl",
        help=f"comma-separated, from {', '.join(STRATEGIES)} (default %(default)s)",
    )
    parser.add_argument("--out", metavar="DIR", help="output folder (compare.md, compare.csv, compare.json, compare.png)")
    parser.add_argument("--force", action="store_true", help="replace the comparison that DIR holds")


def parse_strategies(text: str) -> list[str]:
    """``"serial,local"`` -> ``["serial", "local"]``; unknown or repeated names are a :class:`ConfigError`."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ConfigError(f"--strategies takes a comma-separated list of {', '.join(STRATEGIES)}; got {text!r}")
    for name in names:
        if name not in STRATEGIES:
            raise ConfigError(f"--strategies: unknown strategy {name!r}; allowed: {', '.join(STRATEGIES)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"--strategies names a strategy twice: {text!r}")
    return names


def prepare(args: argparse.Namespace, comm: Any, rank: int) -> Callable[[], int]:
    """Check the strategies, every strategy's config against the ranks, and the output folder; return the job."""
    from ..studies import compare
    from ..training import check

    names = parse_strategies(args.strategies)
    overrides = parse_overrides(args.set)
    check_config_file(args.config)
    configs = {name: load_config(args.config, {**overrides, "train.strategy": name}) for name in names}
    out = None if args.out is None else Path(args.out)
    check_output("--out", out, folder=True)
    check_previous_run(out, ("compare.json", "compare.md", "compare.csv"), args.force)
    for cfg in configs.values():
        check(cfg, world_size(comm))  # every strategy checked before any runs; nothing is built here
    compare.warm_up()

    def run() -> int:
        results = []
        for cfg in configs.values():
            started = now()
            with training_progress(rank, cfg.train.epochs, f"compare {cfg.train.strategy}") as (on_step, on_epoch):
                results.append(compare.measure(cfg, comm, on_step, on_epoch))
            results[-1]["provenance"] = provenance(cfg, world_size(comm), started)
        if rank == 0:
            table = compare.markdown_table(results)
            print(table)
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                write_json(out / "compare.json", results, rank)
                write_text(out / "compare.md", table + "\n")
                with atomic_output(out / "compare.csv") as csv_file:
                    compare.write_csv(results, csv_file)
                from ..studies.plot import plot_compare

                with reporting_write_errors(out / "compare.png"):
                    figure = plot_compare(results, out / "compare.png")
                print(f"wrote {out / 'compare.md'}, compare.csv, compare.json and {figure}")
        return 0

    return run
