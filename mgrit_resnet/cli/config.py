"""The ``config`` verb: the resolved config, every key with where its value came from."""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import SCHEMA, config_text, parse_overrides
from ._common import add_config_arguments, load

HELP = "print the resolved config (TOML), each key with its source: the file, --set, or the default"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The config file and its ``--set`` overrides."""
    add_config_arguments(parser)


def sources(path: str | Path, overrides: list[str]) -> dict[str, str]:
    """Dotted key -> ``"--set"``, ``"file"`` or ``"default"``: where its resolved value came from."""
    raw = tomllib.loads(Path(path).read_text())
    given = {dotted.partition(".")[0] + "." + dotted.partition(".")[2].partition(".")[0] for dotted in parse_overrides(overrides)}
    found = {}
    for section, keys in SCHEMA.items():
        table = raw.get(section, {})
        for key in keys:
            dotted = f"{section}.{key}"
            found[dotted] = "--set" if dotted in given else "file" if key in table else "default"
    return found


def prepare(args: argparse.Namespace, comm: Any, rank: int) -> Callable[[], int]:
    """Load and check the config on every rank; the job prints it on rank 0."""
    cfg = load(args)
    notes = sources(args.config, args.set)

    def run() -> int:
        if rank == 0:
            print(f"# the resolved config of {args.config}" + (" with " + " ".join(f"--set {s}" for s in args.set) if args.set else ""))
            print(config_text(cfg, key_notes=notes), end="")
        return 0

    return run
