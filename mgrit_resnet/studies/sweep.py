"""Parameter sweeps: ``solve`` (or ``train``) at every point of a cartesian grid of config keys (the ``sweep`` verb).

``--grid KEY=V1,V2,...`` gives a dotted config key and its values. Each value
is read like a ``--set`` value (a TOML value, else a bare string); the list is
split on the commas that stand outside brackets and quotes, so a value that is
itself a list keeps its brackets: ``--grid 'mgrit.coarsening=2,[2,4]'`` has the
two values ``2`` and ``[2, 4]``. Points run in ``itertools.product`` order,
the last ``--grid`` key varying fastest.

Every point's config is checked (its solver built, or its training checked
against the ranks) before the first point runs. Rank 0 appends one CSV row per finished point and syncs
the file, so a killed job loses at most the point it was running; run again
with the same arguments, it skips the points whose grid values (compared as
validated config values, so ``2`` and ``2.0`` are one real value) already have
a row.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import comm as comm_module
from .. import problems, theory
from ..config import SCHEMA, Config, ConfigError, get_dotted, load_config, parse_value, toml_value, validate_section
from ..mgrit import MGRIT

SOLVE_COLUMNS = ("ranks", "iterations", "converged", "initial_residual", "final_residual", "mean_factor", "theory_bound", "wall_time")
TRAIN_COLUMNS = ("ranks", "strategy", "epochs", "train_accuracy", "val_accuracy", "final_loss", "fwd_residual", "adj_residual", "wall_time")
RESULT_COLUMNS = {"solve": SOLVE_COLUMNS, "train": TRAIN_COLUMNS}
SECTIONS = {"solve": ("problem", "mgrit"), "train": ("network", "mgrit", "data", "train")}
_GRID_USAGE = "--grid takes KEY=V1,V2,... with a dotted key, such as mgrit.coarsening=2,4,8"


def split_values(key: str, text: str) -> list[str]:
    """Split ``text`` on the commas outside brackets and quotes; each part stripped."""
    parts, current, depth, quote = [], [], 0, None
    for char in text:
        if quote is not None:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth < 0:
                raise ConfigError(f"--grid {key}: a closing bracket without an opening one in {text!r}")
        elif char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    if depth or quote:
        raise ConfigError(f"--grid {key}: an unclosed {'quote' if quote else 'bracket'} in {text!r}")
    parts.append("".join(current).strip())
    return parts


def parse_grid(items: list[str], overrides: dict[str, Any] | None = None) -> dict[str, list[Any]]:
    """Turn ``["mgrit.levels=2,3", ...]`` into ``{"mgrit.levels": [2, 3], ...}`` (keys in the order given).

    A grid key may not also be an override: its values come from ``--grid`` only.
    Raises :class:`~mgrit_resnet.config.ConfigError` on a malformed item, an empty
    list or value, a key given twice, or a key also in ``overrides``.
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{_GRID_USAGE}; got {item!r}")
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice; list all its values in one --grid {key}=V1,V2,...")
        if key in (overrides or {}):
            raise ConfigError(f"{key} is in both --set and --grid; a grid key takes its values from --grid only")
        if not text.strip():
            raise ConfigError(f"--grid {key}= has no values; give at least one, as in {key}=V1,V2")
        values = split_values(key, text)
        if not all(values):
            raise ConfigError(f"--grid {key}: an empty value in {text!r} (two commas in a row, or one at an end)")
        grid[key] = [parse_value(v) for v in values]
    if not grid:
        raise ConfigError(f"sweep needs at least one --grid; {_GRID_USAGE}")
    return grid


def cell(value: Any) -> str:
    """A CSV cell: strings bare, lists and other values as TOML, ``None`` and ``nan`` empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, complex):
        return str(value).strip("()")
    return toml_value(value)


def normalised(key: str, value: Any) -> str:
    """The cell of ``value`` after the config check of ``key`` (so ``2`` and ``2.0`` agree for a real key)."""
    section, _, name = key.partition(".")
    if "." in name:  # a key inside a table passed through unchecked (network.options.*)
        return cell(value)
    return cell(validate_section(section, {name: value})[name])


@dataclass(frozen=True)
class Point:
    """One grid point: its validated config, the cells of its grid values, and ``KEY=VALUE ...`` for messages."""

    config: Config
    cells: tuple[str, ...]
    label: str


def grid_points(config: str | Path, overrides: dict[str, Any], grid: dict[str, list[Any]], verb: str) -> list[Point]:
    """Every point of ``grid``, its config loaded and validated (raises ConfigError at the first bad one)."""
    for key in grid:
        section = key.partition(".")[0]
        if section in SCHEMA and section not in SECTIONS[verb]:
            raise ConfigError(f"--grid {key}: {verb} does not read [{section}]; it reads {', '.join(f'[{s}]' for s in SECTIONS[verb])}")
    points, seen = [], set()
    for values in itertools.product(*grid.values()):
        cfg = load_config(config, {**overrides, **dict(zip(grid, values))})
        cells = tuple(cell(get_dotted(cfg, key)) for key in grid)
        label = " ".join(f"{key}={text}" for key, text in zip(grid, cells))
        if cells in seen:
            raise ConfigError(f"--grid lists a value twice: the point {label} comes up again")
        seen.add(cells)
        points.append(Point(cfg, cells, label))
    return points


@dataclass
class Table:
    """A sweep CSV: its grid keys, the verb whose results it holds, its rows as text cells."""

    grid_keys: list[str]
    verb: str
    rows: list[dict[str, str]]


def _read_csv(path: Path) -> tuple[list[list[str]], int]:
    """The complete lines of ``path`` as CSV rows, and their length in bytes (a row cut off by a kill is left out)."""
    data = path.read_bytes() if path.exists() else b""
    complete = data[: data.rfind(b"\n") + 1]
    return list(csv.reader(io.StringIO(complete.decode()))), len(complete)


def read_table(path: str | Path) -> Table:
    """Read a CSV written by ``sweep`` (raises ValueError when it is not one)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"plot: {str(path)!r} does not exist")
    rows, _ = _read_csv(path)
    header = rows[0] if rows else []
    for verb, columns in RESULT_COLUMNS.items():
        keys = header[: len(header) - len(columns)]
        if keys and tuple(header[len(keys) :]) == columns:
            return Table(keys, verb, [dict(zip(header, row)) for row in rows[1:] if len(row) == len(header)])
    raise ValueError(
        f"plot: {str(path)!r} is not a sweep table: its header must be the grid keys followed by "
        f"{', '.join(SOLVE_COLUMNS)} (solve) or {', '.join(TRAIN_COLUMNS)} (train)"
    )


def done_points(path: Path, header: list[str], grid_keys: list[str]) -> tuple[set[tuple[str, ...]], int]:
    """The grid values (normalised cells) of the rows already in ``path``, and the bytes to keep.

    Raises ConfigError when the file's header is not ``header`` or a row cannot be read.
    """
    rows, keep = _read_csv(path)
    if not rows:
        return set(), 0
    if rows[0] != header:
        raise ConfigError(
            f"--out {str(path)!r} has the columns {','.join(rows[0])}; this sweep writes {','.join(header)}. "
            "Give the same --grid keys in the same order and the same --verb to resume, or another --out"
        )
    done = set()
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ConfigError(f"--out {str(path)!r}: line {line} has {len(row)} fields; the header has {len(header)}")
        try:
            done.add(tuple(normalised(key, parse_value(text)) for key, text in zip(grid_keys, row)))
        except ConfigError as error:
            raise ConfigError(f"--out {str(path)!r}: line {line}: {error}") from None
    return done, keep


def build_solver(cfg: Config, comm: Any) -> MGRIT:
    """The solver of the ``[problem]`` and ``[mgrit]`` tables of ``cfg`` (raises ValueError on bad input)."""
    return MGRIT.from_config(problems.from_config(cfg.problem), cfg.mgrit, comm)


def check_points(points: Sequence[Point], verb: str, comm: Any) -> None:
    """The checks a run of ``verb`` makes first, for every point before any runs.

    ``solve`` builds each point's solver (cheap: nothing is solved); ``train``
    checks each point's config against the ranks (:func:`mgrit_resnet.training.check`:
    no model is built, no data loaded). Raises :class:`~mgrit_resnet.config.ConfigError`
    naming the first bad point.
    """
    if verb == "train":
        from ..training import check

        size = comm_module.backend_for(comm).size
    for point in points:
        try:
            if verb == "solve":
                build_solver(point.config, comm)
            else:
                check(point.config, size)
        except (ValueError, TypeError, ImportError) as error:
            raise ConfigError(f"grid point {point.label}: {error}") from None


def solve_point(cfg: Config, comm: Any) -> dict[str, Any]:
    """Solve one point; its :data:`SOLVE_COLUMNS`."""
    solver = build_solver(cfg, comm)
    result = solver.solve()
    return {
        "ranks": result.ranks,
        "iterations": result.iterations,
        "converged": result.converged,
        "initial_residual": result.initial_residual,
        "final_residual": (result.residuals or [result.initial_residual])[-1],
        "mean_factor": result.mean_factor,
        "theory_bound": theory.solver_prediction(solver),
        "wall_time": result.wall_time,
    }


def train_point(cfg: Config, comm: Any) -> dict[str, Any]:
    """Train one point; its :data:`TRAIN_COLUMNS`."""
    from ..training.loop import train

    result = train(cfg, comm)
    last = result.metrics[-1] if result.metrics else {}
    return {
        **{key: result.summary[key] for key in TRAIN_COLUMNS if key in result.summary},
        "fwd_residual": last.get("fwd_residual"),
        "adj_residual": last.get("adj_residual"),
    }


def header(grid_keys: Sequence[str], verb: str) -> list[str]:
    """The CSV header of a sweep: the grid keys, then the result columns of ``verb``."""
    return [*grid_keys, *RESULT_COLUMNS[verb]]


def pending(out: Path, grid_keys: Sequence[str], verb: str, points: Sequence[Point], comm: Any, rank: int) -> tuple[list[Point], int]:
    """Collective: the points without a row in ``out`` (read on rank 0, the same answer on every rank), and the bytes to keep.

    Raises ConfigError on every rank when ``out`` cannot be resumed (rank 0's message names why).
    """
    flags = np.zeros(len(points) + 1, dtype=np.int64)  # [failed, done per point]
    keep, problem = 0, None
    if rank == 0:
        try:
            done, keep = done_points(out, header(grid_keys, verb), list(grid_keys))
            flags[1:] = [point.cells in done for point in points]
        except ConfigError as error:
            flags[0], problem = 1, error
    comm_module.backend_for(comm).bcast_buffer(flags, root=0)
    if flags[0]:
        raise problem or ConfigError(f"--out {str(out)!r} cannot be resumed (rank 0 says why)")
    return [point for point, done in zip(points, flags[1:]) if not done], keep


def run_points(
    out: Path,
    keep: int,
    grid_keys: Sequence[str],
    verb: str,
    todo: Sequence[Point],
    comm: Any,
    rank: int,
    on_point: Callable[[int, Point, dict[str, Any]], None] | None = None,
) -> None:
    """Collective: run every point of ``todo``; rank 0 appends its row to ``out`` and syncs the file.

    ``keep`` is the number of bytes of ``out`` to keep (from :func:`pending`).
    ``on_point(i, point, row)`` is called on every rank after the ``i``-th point (from 1) is written.
    """
    run_point = solve_point if verb == "solve" else train_point
    table = _open_table(out, keep, header(grid_keys, verb)) if rank == 0 else None
    try:
        for i, point in enumerate(todo, start=1):
            row = run_point(point.config, comm)
            if table is not None:
                csv.writer(table, lineterminator="\n").writerow([*point.cells, *(cell(row[c]) for c in RESULT_COLUMNS[verb])])
                table.flush()
                os.fsync(table.fileno())
            if on_point is not None:
                on_point(i, point, row)
    finally:
        if table is not None:
            table.close()


def _open_table(path: Path, keep: int, header: list[str]) -> io.TextIOWrapper:
    """Open the CSV for appending: a row cut off by a killed job is dropped, a new file gets the header."""
    table = open(path, "a+", newline="")
    table.truncate(keep)
    if keep == 0:
        csv.writer(table, lineterminator="\n").writerow(header)
    return table
