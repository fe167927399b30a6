"""``.. benchmarks-readme::``: ``benchmarks/README.md`` with its measured tables drawn as figures and split into narrow tables.

The directive is ``.. include::`` (same options: give ``:parser:
myst_parser.sphinx_``) with one step added: every table of the file that
follows a marker line::

    <!-- figure NAME: TITLE -->

is replaced by a figure drawn at build time from the table's own numbers
(matplotlib, a PNG in the build folder that Sphinx copies to ``_images``) and
by the same numbers as one or more narrow tables. So the README stays the one
record of the measured figures: what GitHub shows and what the docs draw are
the same numbers. ``TITLE`` is the figure's title (say the machine and the
network there); ``NAME`` picks how it is drawn (:data:`FIGURES`), and the
table's header must be the one that name expects, or the build fails naming
both. Tables without a marker are included as they are.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from os.path import relpath
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from sphinx.application import Sphinx
from sphinx.directives.other import Include

MARKER = re.compile(r"^<!--\s*figure\s+([\w-]+)\s*:\s*(.*?)\s*-->\s*$")
NUMBER = re.compile(r"[-+−]?\d+(?:,\d{3})*(?:\.\d+)?(?:e[-+]?\d+)?")
DPI = 110
FOLDER = "benchmark_figures"
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


@dataclass
class Table:
    """A markdown table of the README: its header and rows of cell texts (markdown)."""

    name: str
    title: str
    header: list[str]
    rows: list[list[str]]

    def column(self, index: int) -> list[str]:
        return [row[index] for row in self.rows]

    def filled(self, index: int) -> list[str]:
        """Column ``index`` with empty cells taking the value above (rows that continue a group)."""
        out, last = [], ""
        for cell in self.column(index):
            last = cell or last
            out.append(last)
        return out


def number(cell: str) -> float:
    """The first number of a cell (``1,024`` is 1024; ``2.37x``, ``127 ms`` and ``7 -> 0`` give 2.37, 127 and 7)."""
    numbers = numbers_in(cell)
    if not numbers:
        raise ValueError(f"no number in the cell {cell!r}")
    return numbers[0]


def numbers_in(cell: str) -> list[float]:
    return [float(m.replace(",", "").replace("−", "-")) for m in NUMBER.findall(cell)]


def parts(cell: str) -> list[str]:
    """The values of a cell that holds several (``a / b`` or ``a; b``)."""
    return [p.strip() for p in re.split(r"\s*(?:;|\s/\s)\s*", cell) if p.strip()]


# --- tables as reStructuredText -----------------------------------------------------------------------------------


def rst_cell(text: str) -> str:
    """A markdown cell as reST: inline code ``x`` in double back-quotes, the rest as it is."""
    return re.sub(r"(?<!`)`([^`]+)`(?!`)", r"``\1``", text.strip())


def list_table(header: list[str], rows: list[list[str]], caption: str = "") -> str:
    lines = [f".. list-table:: {rst_cell(caption)}".rstrip(), "   :header-rows: 1", ""]
    for row in [header, *rows]:
        cells = [rst_cell(c) for c in row]
        lines.append(f"   * - {cells[0]}".rstrip())
        lines += [f"     - {c}".rstrip() for c in cells[1:]]
    return "\n".join(lines) + "\n"


# --- figures -----------------------------------------------------------------------------------------------------


def _title(fig: Figure, text: str) -> None:
    fig.suptitle("\n".join(textwrap.wrap(text, 110)), fontsize=10.5)


def _rank_axis(ax, ranks: list[float]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(ranks)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("ranks P")


def _decades(ax, axis: str = "y") -> None:
    """Log axis with plain labels (0.5, 1, 10, 100) where the numbers are small."""
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


def draw_mgrit_overhead(table: Table, fig: Figure) -> list[str]:
    ax = fig.subplots()
    labels = [f"P = {p}" for p in table.column(0)]
    y = range(len(labels))
    mgrit, bare = [number(c) for c in table.column(2)], [number(c) for c in table.column(3)]
    ax.barh([i - 0.2 for i in y], mgrit, 0.4, label="MGRIT iterations", color=COLOURS[0])
    ax.barh([i + 0.2 for i in y], bare, 0.4, label="the same step calls, bare", color=COLOURS[1])
    for i, (m, ratio) in enumerate(zip(mgrit, table.column(4))):
        ax.annotate(f"ratio {ratio.split(' (')[0]}", (m, i - 0.2), xytext=(4, 0), textcoords="offset points", va="center", fontsize=9)
    ax.set_yticks(list(y), labels)
    ax.invert_yaxis()
    ax.set_xlabel("wall time [s]")
    ax.set_xlim(0, max(mgrit) * 1.3)
    ax.legend(loc="lower right", fontsize=9)
    return [list_table(table.header, table.rows)]


def draw_model_validation(table: Table, fig: Figure) -> list[str]:
    cases, ranks = table.filled(0), [number(c) for c in table.column(1)]
    names = list(dict.fromkeys(cases))
    axes = fig.subplots(1, len(names) + 1)
    for ax, name in zip(axes, names):
        rows = [i for i, c in enumerate(cases) if c == name]
        p = [ranks[i] for i in rows]
        for column, label, style in ((2, "model", "o-"), (3, "measured", "s"), (4, "virtual clock", "^--")):
            points = [(ranks[i], number(table.rows[i][column])) for i in rows if table.rows[i][column]]
            ax.plot(*zip(*points), style, label=label, ms=6)
        ax.set_yscale("log")
        _decades(ax)
        _rank_axis(ax, p)
        ax.set_ylabel("time [ms]")
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=8)
    ax = axes[-1]
    for k, name in enumerate(names):
        rows = [i for i, c in enumerate(cases) if c == name]
        for column, label, marker in ((5, "model / measured", "s"), (6, "model / clock", "^")):
            points = [(ranks[i], number(table.rows[i][column])) for i in rows if table.rows[i][column]]
            ax.plot(*zip(*points), marker, ls=":", color=COLOURS[k], label=f"{name}: {label}", ms=6)
    ax.axhspan(0.85, 1.15, color="0.9", label="within 15 %")
    ax.axhline(1.0, color="0.5", lw=0.8)
    _rank_axis(ax, sorted(set(ranks)))
    ax.set_ylim(0.8, 1.2)
    ax.set_ylabel("ratio")
    ax.set_title("ratios", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    tables = []
    for name in names:
        rows = [r[1:] for r, c in zip(table.rows, cases) if c == name]
        tables.append(list_table(table.header[1:], rows, caption=name))
    return tables


def draw_scaling(table: Table, fig: Figure) -> list[str]:
    p_columns = [i for i, h in enumerate(table.header) if h.startswith("P = ")]
    ranks = [number(table.header[i]) for i in p_columns]
    ax = fig.subplots()
    labels = []
    for k, row in enumerate(table.rows):
        label = f"N = {row[0]}, width {row[1]} ({row[2]}; serial step {row[3]})"
        labels.append(f"N = {row[0]}, width {row[1]}")
        points = [(p, number(row[i])) for p, i in zip(ranks, p_columns) if numbers_in(row[i])]
        ax.plot(*zip(*points), "o-", ms=4, color=COLOURS[k], label=label)
    ax.plot(ranks, [p / 2 for p in ranks], ":", color="0.6", label="P / 2 (half the ideal)")
    ax.axhline(16, color="0.4", lw=0.8, ls="--")
    ax.annotate("target: 16x at P = 64 (N = 4096)", (1, 16), xytext=(0, 3), textcoords="offset points", fontsize=8)
    _rank_axis(ax, ranks)
    ax.set_yscale("log")
    _decades(ax)
    ax.set_ylabel("speedup over the serial step")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, 0.93))
    cases = list_table(table.header[:4], [row[:4] for row in table.rows], caption="cases")
    speedups = [[table.header[i].removeprefix("P = ")] + [row[i] for row in table.rows] for i in p_columns]
    return [cases, list_table(["P", *labels], speedups, caption="speedup over the serial step")]


def draw_adjoint_fix(table: Table, fig: Figure) -> list[str]:
    ax = fig.subplots()
    labels = [f"N = {n}\nP = {p}" for n, p in zip(table.column(0), table.column(1))]
    x = range(len(labels))
    before, after = [number(c) for c in table.column(2)], [number(c) for c in table.column(3)]
    ax.bar([i - 0.2 for i in x], before, 0.4, label="before", color=COLOURS[3])
    ax.bar([i + 0.2 for i in x], after, 0.4, label="after", color=COLOURS[2])
    ax.set_xticks(list(x), labels)
    ax.set_yscale("log")
    _decades(ax)
    ax.set_ylabel("predicted one-shot step [ms]")
    ax.legend(fontsize=9)
    return [list_table(table.header, table.rows)]


def draw_collectives(table: Table, fig: Figure) -> list[str]:
    ax = fig.subplots()
    labels = [f"P = {p}, {it}" for p, it in zip(table.column(0), table.column(1))]
    for i, row in enumerate(table.rows):
        pickled, buffer = numbers_in(row[2]), numbers_in(row[3])
        for j, (x, when) in enumerate(((i - 0.2, "before"), (i + 0.2, "after"))):
            ax.bar(x, pickled[j], 0.38, color=COLOURS[3], label="pickled collectives" if i == 0 and j == 0 else None)
            ax.bar(x, buffer[j], 0.38, bottom=pickled[j], color=COLOURS[0], label="buffer collectives" if i == 0 and j == 0 else None)
            ax.annotate(when, (x, pickled[j] + buffer[j]), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=8)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlabel("ranks, forward / adjoint iterations")
    ax.set_ylabel("collectives per step (busiest rank)")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.1)
    ax.legend(fontsize=9, loc="upper left")
    return [list_table(table.header, table.rows)]


def draw_train_accuracy(table: Table, fig: Figure) -> list[str]:
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.2, 1]})
    cases = table.column(0)
    y = list(range(len(cases)))
    for column, label, marker, shift in ((1, "serial", "o", -0.12), (2, "one-shot", "s", 0.12)):
        left.plot([number(c) for c in table.column(column)], [i + shift for i in y], marker, ms=7, ls="", label=label)
    left.set_yticks(y, [textwrap.fill(c, 40) for c in cases], fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("validation accuracy")
    left.grid(axis="x", color="0.9")
    left.legend(fontsize=8)
    serial, one_shot = [number(c) for c in table.column(4)], [number(c) for c in table.column(5)]
    right.barh([i - 0.2 for i in y], serial, 0.4, label="serial, 1 rank")
    right.barh([i + 0.2 for i in y], one_shot, 0.4, label="one-shot, 2 ranks")
    right.set_yticks(y, [""] * len(y))
    right.invert_yaxis()
    right.set_xscale("log")
    _decades(right, "x")
    right.set_xlabel("wall time [s]")
    right.legend(fontsize=8)
    return [list_table(table.header, table.rows)]


def draw_layer_parallel(table: Table, fig: Figure) -> list[str]:
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.4, 1]})
    settings = table.column(0)
    errors = [number(c) for c in table.column(3)]
    for column, label, marker in ((2, "P = 1", "o"), (5, "P = 2", "s")):
        cost = [number(c) for c in table.column(column)]
        left.plot(errors, cost, marker, label=label, ms=7)
        for e, c, s in zip(errors, cost, settings):
            left.annotate(s, (e, c), xytext=(-6, 0), textcoords="offset points", ha="right", va="center", fontsize=8)
    left.set_xscale("log")
    left.set_yscale("log")
    _decades(left)
    left.invert_xaxis()
    left.set_xlabel("gradient error against serial autograd (more accurate →)")
    left.set_ylabel("step time / serial step")
    left.legend(fontsize=8)
    x = range(len(settings))
    right.bar(list(x), [number(c) for c in table.column(6)], 0.6, color=COLOURS[2])
    right.axhline(2.0, color="0.5", ls="--", lw=0.8)
    right.annotate("ideal", (len(settings) - 1, 2.0), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=8)
    right.set_xticks(list(x), [textwrap.fill(s, 8) for s in settings], fontsize=8)
    right.set_ylim(0, 2.25)
    right.set_xlabel("forward / adjoint iterations")
    right.set_ylabel("2-rank speedup")
    p1, p2 = [], []
    for row in table.rows:
        steps1, _, steps2 = row[7].partition(";")
        p1.append([row[0], row[1], row[2], row[3], steps1.strip()])
        p2.append([row[0], row[4], row[5], row[6], steps2.strip(), row[8]])
    return [
        list_table(["fwd/adj", "time [s]", "× serial", "grad error", "steps per call (fwd, adj)"], p1, caption="one rank"),
        list_table(
            ["fwd/adj", "time [s]", "× serial", "speedup", "steps per call, rank 0/1 (fwd, adj)", "MiB sent per rank"],
            p2,
            caption="two ranks",
        ),
    ]


def draw_one_shot_settings(table: Table, fig: Figure) -> list[str]:
    ax = fig.subplots()
    for k, row in enumerate(table.rows):
        costs, errors = [number(c) for c in parts(row[2])], [number(c) for c in parts(row[3])]
        tags = [str(k + 1)] if len(costs) == 1 else [f"{k + 1}{chr(ord('a') + j)}" for j in range(len(costs))]
        ax.plot(costs, errors, "o", color=COLOURS[k % len(COLOURS)], ms=6)
        for c, e, tag in zip(costs, errors, tags):
            ax.annotate(tag, (c, e), xytext=(4, 3 if k % 2 == 0 else -10), textcoords="offset points", fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("step time / serial step (P = 1)")
    ax.set_ylabel("gradient error against serial autograd")
    ax.grid(color="0.92")
    rows = [[str(k + 1), *row] for k, row in enumerate(table.rows)]
    return [list_table(["#", *table.header], rows)]


def draw_compare(table: Table, fig: Figure) -> list[str]:
    ax = fig.subplots()
    cases = table.column(0)
    y = list(range(len(cases)))
    for k, (column, marker) in enumerate(zip(range(1, 5), "osD^")):
        points = [(number(row[column]), i + 0.1 * (k - 1.5)) for i, row in enumerate(table.rows) if row[column]]
        ax.plot(*zip(*points), marker, ls="", ms=6, color=COLOURS[k], label=table.header[column].split(" (")[0])
    ax.set_yticks(y, cases, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("validation accuracy of the final network")
    ax.grid(axis="x", color="0.9")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    final = [[row[0], *(c.split(" (")[0] for c in row[1:])] for row in table.rows]
    heads = [[row[0], *(c.partition(" (")[2].rstrip(")") for c in row[3:5])] for row in table.rows]
    return [
        list_table(["case", *(h.split(" (")[0] for h in table.header[1:])], final, caption="final network"),
        list_table(["case", "local: heads of blocks 0 / 1 / 2 / 3", "trgl: heads of blocks 0 / 1 / 2 / 3"], heads, caption="block heads"),
    ]


@dataclass(frozen=True)
class Kind:
    header: tuple[str, ...]
    draw: Callable[[Table, Figure], list[str]]
    size: tuple[float, float]


def _p_header(*head: str) -> tuple[str, ...]:
    return (*head, *(f"P = {2**k}" for k in range(11)))


#: Figure name -> the header its table must have, how it is drawn (returning the narrow tables as reST) and its size.
FIGURES = {
    "mgrit-overhead": Kind(("P", "steps per rank", "MGRIT [s]", "bare [s]", "ratio"), draw_mgrit_overhead, (8, 2.6)),
    "model-validation": Kind(
        ("case", "P", "model [ms]", "measured [ms]", "virtual clock [ms]", "model / measured", "model / clock"),
        draw_model_validation,
        (13, 4),
    ),
    "scaling": Kind(_p_header("N", "width", "hierarchy", "serial step"), draw_scaling, (9, 5.5)),
    "adjoint-fix": Kind(("N", "P", "before", "after"), draw_adjoint_fix, (7, 3.6)),
    "collectives": Kind(
        ("P", "iterations", "pickled collectives", "buffer collectives", "all collectives", "messages sent"), draw_collectives, (8, 3.6)
    ),
    "train-accuracy": Kind(
        ("case", "serial val", "one-shot val", "diff [pt]", "serial [s]", "one-shot [s]"), draw_train_accuracy, (11, 3.6)
    ),
    "layer-parallel": Kind(
        (
            "fwd/adj",
            "P = 1 [s]",
            "× serial",
            "grad error",
            "P = 2 [s]",
            "× serial",
            "speedup",
            "steps per call (P = 1; P = 2 fwd, adj)",
            "MiB sent per rank (P = 2)",
        ),
        draw_layer_parallel,
        (12, 4.2),
    ),
    "one-shot-settings": Kind(
        ("options", "steps per call", "× serial", "grad error", "P = 2: × serial, speedup"), draw_one_shot_settings, (8, 4.5)
    ),
    "compare": Kind(("case", "serial", "one_shot", "local (heads)", "trgl (heads)"), draw_compare, (9, 4.2)),
}


# --- the README --------------------------------------------------------------------------------------------------


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def marked_tables(text: str) -> list[tuple[int, int, Table]]:
    """``(first line, end line, table)`` of every marked table in ``text`` (lines counted from 0; the marker is the first)."""
    lines, found, i = text.splitlines(), [], 0
    while i < len(lines):
        match = MARKER.match(lines[i])
        if not match:
            i += 1
            continue
        start, i = i, i + 1
        while i < len(lines) and not lines[i].strip():
            i += 1
        if i + 1 >= len(lines) or not lines[i].startswith("|") or not re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1].strip()):
            raise ValueError(f"the marker {lines[start]!r} is not followed by a markdown table")
        header, i = _cells(lines[i]), i + 2
        rows = []
        while i < len(lines) and lines[i].startswith("|"):
            rows.append(_cells(lines[i]))
            i += 1
        bad = [r for r in rows if len(r) != len(header)]
        if bad:
            raise ValueError(f"table {match[1]!r}: a row with {len(bad[0])} cells, the header has {len(header)}: {bad[0]}")
        found.append((start, i, Table(match[1], match[2], header, rows)))
    return found


def render(text: str, folder: Path, link: str) -> str:
    """``text`` with every marked table replaced by a figure written to ``folder`` (its path from the page: ``link``) and narrow tables."""
    lines = text.splitlines()
    for start, end, table in reversed(marked_tables(text)):
        kind = FIGURES.get(table.name)
        if kind is None:
            raise ValueError(f"unknown figure {table.name!r} in a marker; known: {', '.join(FIGURES)}")
        if tuple(table.header) != kind.header:
            raise ValueError(f"table {table.name!r}: header {table.header} is not the one it is drawn from: {list(kind.header)}")
        fig = Figure(figsize=kind.size, layout="constrained")
        try:
            tables = kind.draw(table, fig)
        except (ValueError, IndexError) as error:
            raise ValueError(f"table {table.name!r}: {error}") from error
        _title(fig, table.title)
        folder.mkdir(parents=True, exist_ok=True)
        fig.savefig(folder / f"{table.name}.png", dpi=DPI, bbox_inches="tight")
        figure = [
            f".. figure:: {link}/{table.name}.png",
            f"   :alt: {table.title}",
            "   :width: 100%",
            "",
            "   Drawn at build time from the numbers below (``benchmarks/README.md``).",
            "",
        ]
        block = ["```{eval-rst}", *figure, *(t + "\n" for t in tables), "```"]
        lines[start:end] = "\n".join(block).splitlines()
    return "\n".join(lines) + "\n"


class BenchmarksReadme(Include):
    """``.. include::`` that draws the marked tables of the file (see the module docstring)."""

    def read_file(self, path) -> str:
        text = super().read_file(path)
        folder = Path(self.env.app.doctreedir).parent / FOLDER
        page = Path(self.env.doc2path(self.env.current_document.docname)).parent
        try:
            return render(text, folder, Path(relpath(folder, page)).as_posix())
        except ValueError as error:
            raise self.severe(f"{self.name}: {path}: {error}") from error


def setup(app: Sphinx) -> dict:
    app.add_directive("benchmarks-readme", BenchmarksReadme)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
