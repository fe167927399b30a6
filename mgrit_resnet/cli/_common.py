"""What the verbs share: the parser, argument helpers, the output check, progress and the JSON writer.

Every check here raises (``ValueError`` or :class:`~mgrit_resnet.config.ConfigError`)
instead of exiting, so that :func:`mgrit_resnet.cli.main` ends every rank the same way;
a file that cannot be written raises :class:`OutputError`, which ``main`` turns into
the same exit code and one message.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._files import atomic_path
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
    check_config_file(args.config)
    return load_config(args.config, parse_overrides(args.set))


def check_config_file(path: str | Path) -> None:
    """Raise :class:`ConfigError` naming ``path`` when it is a folder, unreadable, or not UTF-8 text.

    A missing file and bad TOML are left to :func:`~mgrit_resnet.config.load_config`, which names them.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {str(path)!r} is a folder, not a TOML file")
    try:
        path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"config file {str(path)!r} is not UTF-8 text (TOML files are UTF-8): {error.reason} at byte {error.start}"
        ) from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {str(path)!r}: {error.strerror or error}") from None


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
    # A file on the way (``--json FILE/x``) is the reason, not a missing folder.
    if existing.is_dir() and existing != home and not folder:  # only a folder option creates missing folders
        raise ValueError(f"{option}: the folder {str(home)!r} does not exist")
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ValueError(f"{option}: cannot create {str(path)!r}: {str(existing)!r} is not a writable folder")


def check_previous_run(out: str | Path | None, markers: tuple[str, ...], force: bool, keep: str = "") -> None:
    """Refuse an output folder ``out`` that holds a previous run (any of the files ``markers``) unless ``force``.

    Parameters
    ----------
    out
        The ``--out`` folder, or ``None`` (nothing written: passes).
    markers
        File names that only a run writes there.
    force
        ``--force`` was given: the run will be replaced.
    keep
        How to continue the run instead (``"--resume to continue it"``), for the message.

    Raises
    ------
    ValueError
        Naming the folder, the files found and the options.
    """
    if out is None or force or not Path(out).is_dir():
        return
    found = [name for name in markers if (Path(out) / name).exists()]
    if found:
        instead = f"{keep}, " if keep else ""
        raise ValueError(
            f"--out: {str(out)!r} holds a previous run ({', '.join(found)}); give {instead}--force to replace it, or another --out"
        )


class OutputError(Exception):
    """A file could not be written (a full disk, a folder removed under the run, ...); the message names it."""


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; on success it replaces ``path`` in one step.

    The temporary file is flushed to disk before the rename, so ``path`` holds
    either its old content or the whole new one: never an empty or torn file.
    On any error the temporary file is removed and ``path`` is left as it was;
    an ``OSError`` becomes an :class:`OutputError` ``cannot write PATH: ...``.
    """
    try:
        with atomic_path(path) as temporary:
            yield temporary
    except OSError as error:
        raise OutputError(f"cannot write {str(path)!r}: {error.strerror or error}") from None


@contextlib.contextmanager
def reporting_write_errors(path: str | Path) -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``path`` (a figure, say) into an :class:`OutputError` naming it."""
    try:
        yield
    except OSError as error:
        raise OutputError(f"cannot write {str(path)!r}: {error.strerror or error}") from None


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_output`)."""
    path = Path(path)
    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return path


def write_json(path: str | Path | None, document: Any, rank: int) -> Path | None:
    """Write ``document`` as indented JSON to ``path`` on rank 0 (nothing elsewhere, nor without a path).

    The file is written atomically (:func:`atomic_output`): a failed write
    leaves no empty or torn file and raises :class:`OutputError`.
    """
    if path is None or rank != 0:
        return None
    return write_text(path, json.dumps(document, indent=2) + "\n")


# ---------------------------------------------------------------------- progress
LOG_EVERY_ENV = "MGRIT_RESNET_LOG_EVERY"
DEFAULT_LOG_EVERY = 30.0


@dataclass
class Settings:
    """How much the verbs report; :func:`mgrit_resnet.cli.main` sets it from ``-q``, ``-v`` and ``--log-every`` on every call.

    Attributes
    ----------
    verbosity
        ``-1`` (``-q``): results only, no progress; ``0``: a bar on a terminal,
        else a progress line at most every ``log_every`` seconds; ``1`` (``-v``):
        also a line for every step.
    log_every
        Seconds between two progress lines when stderr is not a terminal
        (``None``: from the environment variable ``MGRIT_RESNET_LOG_EVERY``, else 30).
    """

    verbosity: int = 0
    log_every: float | None = None

    def interval(self) -> float:
        """The seconds between progress lines: ``log_every``, else the environment's, else the default."""
        if self.log_every is not None:
            return self.log_every
        return parse_log_every(os.environ.get(LOG_EVERY_ENV), f"the environment variable {LOG_EVERY_ENV}")


SETTINGS = Settings()


def parse_log_every(text: str | None, source: str = "--log-every") -> float:
    """Seconds between progress lines from ``text`` (``None`` or empty: the default); a clear error naming ``source``."""
    if text is None or not str(text).strip():
        return DEFAULT_LOG_EVERY
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{source} must be a number of seconds >= 0 between progress lines; got {text!r}")
    return value


def format_residual(value: float | None) -> str:
    """A residual as ``1.2e-05``; ``-`` when there is none (a solve that converged at iteration 0, a serial run)."""
    return format_number(value, ".1e")


def format_number(value: Any, spec: str = ".4g") -> str:
    """``value`` formatted with ``spec``, or ``-`` for ``None`` or NaN; text is returned as it is."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    try:
        if math.isnan(value):
            return "-"
    except TypeError:
        return str(value)
    return format(value, spec)


def _duration(seconds: float) -> str:
    """``75`` -> ``1:15``, ``4000`` -> ``1:06:40``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class Progress:
    """Progress of one job on rank 0; every method is harmless elsewhere.

    On a terminal it is a tqdm bar. Elsewhere (``mpiexec`` output, a Slurm
    log) it is a line on stderr at most every :attr:`Settings.log_every`
    seconds (``desc: 3.5/10 epoch (35 %), loss 0.41, res 1.2e-05/-, 0.8 epoch/s,
    elapsed 0:04, ETA 0:08``) and, when such lines were written, a last one at
    the end; with ``-v`` one line per step. With ``-q`` it shows nothing.
    Lines written with :meth:`write` go to stdout (above the bar, if one is shown).
    """

    def __init__(self, rank: int, total: float, desc: str, unit: str, settings: Settings | None = None) -> None:
        settings = SETTINGS if settings is None else settings
        self.rank = rank
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n: float = 0
        self.fields: dict[str, str] = {}
        self._quiet = rank != 0 or settings.verbosity < 0
        self._verbose = settings.verbosity > 0
        self._bar: Any = None
        self._every = settings.interval() if not self._quiet else math.inf
        self._start = self._last = time.monotonic()
        self._logged: tuple | None = None  # (count, fields) of the last progress line written
        if not self._quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=False)

    @property
    def shown(self) -> bool:
        """Whether anything is shown (rank 0, not ``-q``)."""
        return not self._quiet

    def update(self, n: float = 1, **fields: Any) -> None:
        """Advance by ``n``, showing ``fields`` (numbers, text or ``None``) beside the count."""
        self.goto(self.n + n, None, **fields)

    def goto(self, n: float, total: float | None = None, **fields: Any) -> None:
        """Move to ``n`` (of ``total``, when it changes), showing ``fields`` (numbers, text or ``None``) beside it."""
        if total is not None:
            self.total = total
        self.n = n
        if fields:
            self.fields = {key: format_number(value) for key, value in fields.items()}
        if self._quiet:
            return
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.n = n
            if self.fields:
                self._bar.set_postfix(self.fields, refresh=False)
            self._bar.refresh()
            return
        now = time.monotonic()
        if self._verbose or now - self._last >= self._every:
            self._log(now)

    def write(self, line: str) -> None:
        """Print ``line`` on rank 0 (above the bar, if one is shown) and flush; nothing with ``-q``."""
        if self._quiet:
            return
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line)
            self._last = time.monotonic()  # a line just written shows life: the next progress line can wait
        sys.stdout.flush()

    def line(self, now: float | None = None) -> str:
        """The progress line: count, share, fields, rate, elapsed time and ETA."""
        now = time.monotonic() if now is None else now
        elapsed = now - self._start
        parts = [f"{self.desc}: {format_number(self.n, '.4g')}/{format_number(self.total, '.4g')} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f} %)"
        parts += [f"{key} {value}" for key, value in self.fields.items()]
        if self.n > 0 and elapsed > 0:
            parts.append(f"{self.n / elapsed:.3g} {self.unit}/s")
        parts.append(f"elapsed {_duration(elapsed)}")
        if self.n > 0 and self.total and self.n < self.total:
            parts.append(f"ETA {_duration(elapsed / self.n * (self.total - self.n))}")
        return ", ".join(parts)

    def close(self) -> None:
        """Close the bar, or write the last line when progress lines were written and the last one is not it."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._logged is not None and self._logged != (self.n, self.fields):
            self._log(time.monotonic())

    def _log(self, now: float) -> None:
        sys.stderr.write(self.line(now) + "\n")  # one write: a log that merges stdout and stderr keeps the line whole
        sys.stderr.flush()
        self._last = now
        self._logged = (self.n, dict(self.fields))


@contextlib.contextmanager
def progress(rank: int, total: float, desc: str, unit: str) -> Iterator[Progress]:
    """A :class:`Progress` over ``total`` ``unit`` on rank 0 (see there), closed on leaving.

    The verbs' ``-q``, ``-v`` and ``--log-every`` (:data:`SETTINGS`) decide what it shows.
    """
    bar = Progress(rank, total, desc, unit)
    try:
        yield bar
    finally:
        bar.close()
