"""What the verbs share: the parser, argument helpers, the output check, progress bars and the JSON writer.

Every check here raises (``ValueError`` or :class:`~mgrit_resnet.config.ConfigError`)
instead of exiting, so that :func:`mgrit_resnet.cli.main` ends every rank the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError, load_config, parse_overrides


class Parser(argparse.ArgumentParser):
    """An argument parser that raises :class:`ConfigError` where argparse would exit."""

    def error(self, message: str) -> None:  # argparse exits; raise instead so every rank leaves the same way
        raise ConfigError(f"{message}\n{self.format_usage().strip()}")


def add_config_arguments(parser: argparse.ArgumentParser, config_help: str = "TOML config file") -> None:
    """The positional ``config`` and the repeatable ``--set KEY=VALUE`` of every verb that reads a config."""
    parser.add_argument("config", help=config_help)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a dotted config key")


def load(args: argparse.Namespace) -> Config:
    """The validated config of ``args.config`` with the ``--set`` overrides of ``args.set``."""
    return load_config(args.config, parse_overrides(args.set))


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


def world_size(comm: Any) -> int:
    """The number of ranks of ``comm`` (``None``: one)."""
    return 1 if comm is None else comm.Get_size()


# ---------------------------------------------------------------------- outputs
def check_output(option: str, path: str | Path | None, folder: bool = False) -> None:
    """Fail before the work, not after it, when the output ``path`` of ``option`` cannot be written.

    Parameters
    ----------
    option
        The option that named ``path`` (``"--json"``), for the message.
    path
        The output; ``None`` (option not given) passes.
    folder
        ``False``: ``path`` is a file, written into a folder that must exist.
        ``True``: ``path`` is a folder, created with any missing parents.

    Raises
    ------
    ValueError
        The message names the option and the folder that is missing or cannot be written.
    """
    if path is None:
        return
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise ValueError(f"{option}: {str(path)!r} exists and is not a folder")
    home = path.resolve() if folder else path.resolve().parent  # the folder that will hold the output
    existing = home
    while not existing.exists():
        existing = existing.parent
    if existing != home and not folder:  # only a folder option creates missing folders
        raise ValueError(f"{option}: the folder {str(home)!r} does not exist")
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ValueError(f"{option}: cannot create {str(path)!r}: {str(existing)!r} is not a writable folder")


def write_json(path: str | Path | None, document: Any, rank: int) -> Path | None:
    """Write ``document`` as indented JSON to ``path`` on rank 0 (nothing elsewhere, nor without a path)."""
    if path is None or rank != 0:
        return None
    path = Path(path)
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


# ---------------------------------------------------------------------- progress
class Progress:
    """A progress bar on rank 0 when stderr is a terminal; every method is harmless elsewhere.

    Lines written with :meth:`write` appear on rank 0 above the bar (or plainly,
    when there is no bar), so batch logs get the lines and no bar.
    """

    def __init__(self, bar: Any, rank: int) -> None:
        self._bar = bar
        self.rank = rank

    def update(self, n: float = 1) -> None:
        """Advance by ``n``."""
        self._bar.update(n)

    def goto(self, n: float, total: float | None = None, **postfix: str) -> None:
        """Move to ``n`` (of ``total``, when it changes), showing ``postfix`` beside the bar."""
        if total is not None:
            self._bar.total = total
        self._bar.n = n
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)
        self._bar.refresh()

    def write(self, line: str) -> None:
        """Print ``line`` on rank 0 (above the bar, if one is shown) and flush."""
        if self.rank != 0:
            return
        if self._bar.disable:
            print(line)
        else:
            self._bar.write(line)
        sys.stdout.flush()


@contextlib.contextmanager
def progress(rank: int, total: float, desc: str, unit: str) -> Iterator[Progress]:
    """A :class:`Progress` over ``total`` ``unit`` (a bar on rank 0 when stderr is a terminal), closed on leaving."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, disable=rank != 0 or not sys.stderr.isatty(), leave=False)
    try:
        yield Progress(bar, rank)
    finally:
        bar.close()
