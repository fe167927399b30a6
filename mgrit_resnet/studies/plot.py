"""Convergence plots (matplotlib, imported on first use, drawn off-screen).

Every figure is laid out tightly (no clipped labels) and written atomically:
into a temporary file beside the target, then renamed over it, so that a
failed write never leaves an empty or torn image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._files import atomic_path
from ..result import SolveResult

DPI = 120


def _save(fig: Any, path: str | Path) -> Path:
    """Lay ``fig`` out tightly, write it to ``path`` atomically (format by suffix) and close it."""
    import matplotlib
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    try:
        with atomic_path(path) as temporary:
            fig.savefig(temporary, format=path.suffix[1:] or matplotlib.rcParams["savefig.format"], dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def plot_residuals(result: SolveResult, path: str | Path, predicted: float | None = None, title: str = "") -> Path:
    """Draw the residual history of ``result`` on a log scale and save it as an image.

    Parameters
    ----------
    result
        A finished solve.
    path
        Output file; the format follows the suffix (``.png``, ``.pdf``, ``.svg``).
    predicted
        A convergence factor to draw as a reference slope from the first residual.
    title
        Figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = 0 if result.initial_residual is not None else 1
    values = ([result.initial_residual] if start == 0 else []) + list(result.residuals)
    iterations = list(range(start, start + len(values)))
    shown = [(k, r) for k, r in zip(iterations, values) if r > 0]  # exact zeros cannot be drawn on a log scale
    fig, ax = plt.subplots(figsize=(6, 4), dpi=DPI)
    if shown:
        ax.semilogy(*zip(*shown), "o-", label="measured residual")
    if predicted is not None and shown:
        k0, r0 = shown[0]
        ax.semilogy(iterations, [r0 * predicted ** (k - k0) for k in iterations], "--", label=f"two-level theory, factor {predicted:.3g}")
    zeros = [k for k, r in zip(iterations, values) if r == 0]
    if zeros:
        ax.axvline(zeros[0], color="grey", linestyle=":", label=f"exactly zero from iteration {zeros[0]}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("fine-level C-point residual (2-norm)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_training(run_dir: str | Path, path: str | Path) -> Path:
    """Loss and accuracy per epoch, and the last MGRIT residuals, of a ``train --out`` folder.

    Parameters
    ----------
    run_dir
        A folder written by ``mgrit-resnet train --out``; ``metrics.jsonl`` is read.
    path
        Output image (``.png``, ``.pdf``, ``.svg``).
    """
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics_file = Path(run_dir) / "metrics.jsonl"
    if not metrics_file.is_file():
        raise ValueError(f"plot: {str(metrics_file)!r} does not exist (is {str(run_dir)!r} a train --out folder?)")
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"plot: {str(metrics_file)!r} has no epochs yet")
    summary_file = Path(run_dir) / "summary.json"
    strategy = json.loads(summary_file.read_text()).get("strategy", "") if summary_file.is_file() else ""
    if rows[0].get("head_val_accuracy") is not None or "block_train_loss" in rows[0]:
        return _plot_blockwise(rows, f"{Path(run_dir).name}: {strategy}" if strategy else Path(run_dir).name, path)
    epochs = [r["epoch"] for r in rows]
    has_solver = any(r.get("fwd_residual") is not None for r in rows)
    adaptive = any(r.get("iters_schedule") for r in rows)  # train.fwd_iters / bwd_iters = "auto"
    columns = 3 if has_solver else 2
    fig, grid = plt.subplots(2 if adaptive else 1, columns, figsize=(13 if has_solver else 9, 7.6 if adaptive else 3.8), squeeze=False)
    axes = grid[0]
    if adaptive:
        _plot_adaptive(rows, grid[1])
    axes[0].plot(epochs, [r["train_loss"] for r in rows], marker="o")
    axes[0].set(xlabel="epoch", ylabel="training loss", yscale="log", title="loss")
    axes[1].plot(epochs, [r["train_accuracy"] for r in rows], marker="o", label="training (running)")
    if rows[0].get("val_accuracy") is not None:
        axes[1].plot(epochs, [r["val_accuracy"] for r in rows], marker="s", label="validation")
    axes[1].set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    axes[1].legend()
    if has_solver:
        for name, label in (("fwd_residual", "forward"), ("adj_residual", "adjoint")):
            values = [r.get(name) for r in rows]
            axes[2].semilogy(epochs, [v if v else float("nan") for v in values], marker="o", label=label)
        axes[2].set(xlabel="epoch", ylabel="residual after the last step's solve", title="MGRIT residuals")
        axes[2].legend()
    for ax in grid.flat:
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{Path(run_dir).name}: {strategy}" if strategy else Path(run_dir).name)
    return _save(fig, path)


def _plot_adaptive(rows: list[dict], axes: Sequence[Any]) -> None:
    """An ``"auto"`` one-shot run: the iterations chosen, the gradient error (estimated, measured, target) and the work.

    Steps are placed at fractional epochs (step ``s`` of an epoch of ``S``
    steps at ``epoch - 1 + (s - 1) / S``), so every change of the counts and
    every exact check shows where it happened.
    """
    where = []  # (x, fwd, bwd) from each change of the counts on
    checks = []  # (x, estimate, measured, probe)
    for r in rows:
        steps = max(r.get("steps") or 1, 1)
        start = r["epoch"] - 1
        where += [(start + (step - 1) / steps, fwd, bwd) for step, fwd, bwd in r.get("iters_schedule") or []]
        checks += [(start + (c["step"] - 1) / steps, c["estimate"], c["measured"], c.get("probe")) for c in r.get("grad_checks") or []]
    end = rows[-1]["epoch"]
    if where:
        xs = [w[0] for w in where] + [end]
        for k, (label, style) in enumerate((("forward", "-"), ("adjoint", "--")), 1):
            axes[0].step(xs, [w[k] for w in where] + [where[-1][k]], style, where="post", label=label)
    axes[0].set(xlabel="epoch", ylabel="MGRIT iterations per step", title="iterations chosen (auto)")
    axes[0].yaxis.get_major_locator().set_params(integer=True)
    axes[0].legend(fontsize=8)

    def positive(values: list) -> list:
        return [v if v is not None and v > 0 else float("nan") for v in values]

    shown = [c for c in checks if c[2] is not None]
    if shown:
        axes[1].semilogy([c[0] for c in shown], positive([c[2] for c in shown]), "o", ms=3, label="measured (exact checks)")
        axes[1].semilogy([c[0] for c in shown], positive([c[1] for c in shown]), "x", ms=4, label="estimated before the check")
    epochs = [r["epoch"] for r in rows]
    axes[1].semilogy([e - 0.5 for e in epochs], positive([r.get("grad_error_estimate") for r in rows]), "-", label="estimate, epoch mean")
    targets = positive([r.get("grad_error_target") for r in rows])
    axes[1].step([e - 1 for e in epochs] + [end], targets + targets[-1:], "k--", where="post", lw=1, label="target")
    axes[1].set(xlabel="epoch", ylabel="relative gradient error", title="gradient error")
    axes[1].legend(fontsize=7)
    if len(axes) > 2:
        axes[2].plot(epochs, [r.get("total_layer_steps") for r in rows], marker="o")
        axes[2].set(xlabel="epoch", ylabel="layer steps since the start", title="work (forward + adjoint layer steps)")


def _plot_blockwise(rows: list[dict], title: str, path: str | Path) -> Path:
    """A block-wise (``local``, ``trgl``) run: every block's training loss and every head's validation accuracy, per row.

    A row is one epoch of the blocks that trained in it (all of them under
    ``parallel``, one at a time under ``sequential`` and ``multilap``); the
    stages are shaded, so the stagnation of early heads shows.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["epoch"] for r in rows]
    blocks = len(rows[0]["block_train_loss"])
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    colours = plt.get_cmap("viridis")([k / max(blocks - 1, 1) for k in range(blocks)])
    for k in range(blocks):
        loss = [r["block_train_loss"][k] if k in r["blocks_trained"] else float("nan") for r in rows]
        loss_ax.plot(x, loss, marker="o", color=colours[k], label=f"block {k}")
        if rows[0].get("head_val_accuracy") is not None:
            acc_ax.plot(x, [r["head_val_accuracy"][k] for r in rows], marker="s", color=colours[k], label=f"head {k}")
    for start, r in enumerate(rows):  # shade every other stage
        if r["stage"] % 2:
            for ax in (loss_ax, acc_ax):
                ax.axvspan(x[start] - 0.5, x[start] + 0.5, color="gray", alpha=0.08, linewidth=0)
    loss_ax.set(xlabel="row of metrics.jsonl (an epoch of the blocks training)", ylabel="training loss of its head", yscale="log")
    loss_ax.set_title("loss per block (while it trains)")
    acc_ax.set(xlabel="row of metrics.jsonl (an epoch of the blocks training)", ylabel="validation accuracy", title="accuracy per head")
    for ax in (loss_ax, acc_ax):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title + " (shading: stages of the schedule)")
    return _save(fig, path)


def plot_sweep(table: Any, path: str | Path, title: str = "") -> Path:
    """One panel per grid key of a ``sweep`` table: the measured quantity against that key.

    Solve sweeps show the mean convergence factor (the two-level theory bound
    dashed, in the same colour, where defined); train sweeps show the
    validation accuracy (the training accuracy dotted). Each line holds the
    other grid keys fixed; its label gives their values. A coarsening factor,
    and any positive integer key whose values span a factor 4 or more, is
    drawn on a log2 axis.

    Parameters
    ----------
    table
        A :class:`~mgrit_resnet.studies.sweep.Table` (``mgrit_resnet.studies.sweep.read_table``).
    path
        Output image (``.png``, ``.pdf``, ``.svg``).
    title
        The figure's title: what was swept (the problem, or the network and data).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not table.rows:
        raise ValueError("plot: the sweep table has no rows yet")
    if table.verb == "solve":
        curves = (("mean_factor", "o-"), ("theory_bound", "--"))
        ylabel, panel = "mean convergence factor", "factor (dashed: two-level theory)"
    else:
        curves = (("val_accuracy", "o-"), ("train_accuracy", "s:"))
        ylabel, panel = "accuracy", "validation accuracy (dotted: training)"
    keys = table.grid_keys
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        positions, ticks = _axis_positions([row[key] for row in table.rows])
        others = [k for k in keys if k != key]
        groups: dict[tuple[str, ...], list[dict[str, str]]] = {}
        for row in table.rows:
            groups.setdefault(tuple(row[k] for k in others), []).append(row)
        for group, rows in groups.items():
            rows = sorted(rows, key=lambda r: positions[r[key]])
            label = ", ".join(f"{k.partition('.')[2]}={v}" for k, v in zip(others, group))
            color = None
            for column, style in curves:
                y = [float(r[column]) if r[column] else float("nan") for r in rows]
                if all(math.isnan(v) for v in y):
                    continue
                named = color is None and label
                (line,) = ax.plot([positions[r[key]] for r in rows], y, style, color=color, label=label if named else None)
                color = line.get_color()
        if ticks:
            ax.set_xticks(range(len(ticks)), ticks, rotation=20 if max(len(t) for t in ticks) > 6 else 0)
        elif _log2_axis(key, list(positions.values())):
            ax.set_xscale("log", base=2)
            values = sorted(set(positions.values()))
            ax.set_xticks(values, [f"{v:g}" for v in values])
            ax.minorticks_off()
        values = [v for line in ax.get_lines() for v in line.get_ydata() if not math.isnan(v)]
        if table.verb == "solve" and values and min(values) > 0 and max(values) / min(values) > 20:
            ax.set_yscale("log")
        ax.set(xlabel=key, ylabel=ylabel)
        ax.set_title(f"{panel} vs {key}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        if others:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _log2_axis(key: str, values: list[float]) -> bool:
    """Whether a numeric grid key belongs on a log2 axis: a coarsening factor, or positive integers spanning 4x or more."""
    if not values or min(values) <= 0:
        return False
    if key.rpartition(".")[2] == "coarsening":
        return True
    return all(float(v).is_integer() for v in values) and max(values) >= 4 * min(values)


def _axis_positions(cells: list[str]) -> tuple[dict[str, float], list[str]]:
    """x positions of a key's values: the numbers themselves, or (for text and lists) 0, 1, ... in order of appearance."""
    distinct = list(dict.fromkeys(cells))
    try:
        return {c: float(c) for c in distinct}, []
    except ValueError:
        return {c: float(i) for i, c in enumerate(distinct)}, distinct


def plot_scaling(rows: Sequence[Any], path: str | Path, title: str = "") -> Path:
    """Predicted time and speedup against the number of ranks (log-log), with ideal scaling for reference.

    Parameters
    ----------
    rows
        :class:`~mgrit_resnet.studies.perfmodel.ScalingRow` objects; rows without a time are left out.
    path
        Output image (``.png``, ``.pdf``, ``.svg``).
    title
        Figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r.time is not None]
    if not shown:
        raise ValueError("plot_scaling: no rank count has a predicted time")
    ranks = [r.ranks for r in shown]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.loglog(ranks, [r.time for r in shown], "o-", label="predicted")
    left.axhline(shown[0].serial_time, color="gray", linestyle=":", label="serial")
    left.set(xlabel="ranks P", ylabel="wall time [s]", title="time")
    right.loglog(ranks, [r.speedup for r in shown], "o-", label="predicted speedup")
    right.loglog(ranks, ranks, "--", color="gray", label="ideal (P)")
    right.set(xlabel="ranks P", ylabel="speedup over serial", title="speedup")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_compare(results: list[dict], path: str | Path) -> Path:
    """The figure of the ``compare`` verb: validation accuracy over the training budget for every strategy,
    the final accuracy of every block's head, and the heads' accuracy over the budget for the local strategies.

    Every strategy keeps one colour in every panel (blocks differ by line
    style), and every accuracy axis shows the whole range 0 to 1, so that
    small differences are not drawn as cliffs.

    Parameters
    ----------
    results
        The per-strategy records of ``compare.json``.
    path
        Output image (``.png``, ``.pdf``, ``.svg``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colour = {r["strategy"]: f"C{i}" for i, r in enumerate(results)}
    block_styles = ("-", "--", "-.", ":")
    local = [r for r in results if r.get("head_val_accuracy")]
    fig, axes = plt.subplots(1, 3 if local else 1, figsize=(16 if local else 6, 4.4), squeeze=False)
    axes = axes[0]
    for r in results:
        curve = [p for p in _trained(r["curve"], -1) if p.get("val_accuracy") is not None]
        axes[0].plot(
            [p["progress"] for p in curve],
            [p["val_accuracy"] for p in curve],
            marker=".",
            color=colour[r["strategy"]],
            label=r["strategy"] if not curve else f"{r['strategy']} ({curve[-1]['val_accuracy']:.3f})",  # the value the axis cannot resolve
        )
    axes[0].set(
        xlabel="share of the training budget done",
        ylabel="validation accuracy (final network)",
        title="final network (once its last block trains)",
    )
    axes[0].legend(fontsize=8, loc="lower right")
    if local:
        for r in results:  # the whole-network strategies as reference lines, in their colours
            if r["val_accuracy"] is not None and not r.get("head_val_accuracy"):
                axes[1].axhline(
                    r["val_accuracy"],
                    linestyle=":",
                    color=colour[r["strategy"]],
                    label=f"{r['strategy']} (whole network, {r['val_accuracy']:.3f})",
                )
        for r in local:
            heads = r["head_val_accuracy"]
            best = f"{max(heads):.3f}" if heads else "-"
            axes[1].plot(range(len(heads)), heads, marker="o", color=colour[r["strategy"]], label=f"{r['strategy']} (best head {best})")
            for k in range(len(heads)):
                history = [p for p in _trained(r["curve"], k) if p.get("head_val_accuracy")]
                axes[2].plot(
                    [p["progress"] for p in history],
                    [p["head_val_accuracy"][k] for p in history],
                    linestyle=block_styles[k % len(block_styles)],
                    color=colour[r["strategy"]],
                    label=f"{r['strategy']}, block {k}",
                )
        axes[1].set(xlabel="block k", ylabel="validation accuracy of head k", title="per-block heads at the end")
        axes[1].set_xticks(range(max(len(r["head_val_accuracy"]) for r in local)))
        axes[1].legend(fontsize=8, loc="lower right")
        axes[2].set(
            xlabel="share of the training budget done",
            ylabel="validation accuracy of head k",
            title="per-block heads (from their first epoch)",
        )
        axes[2].legend(fontsize=7, ncol=len(local), loc="lower right")
    for ax in axes:
        ax.set_ylim(0.0, 1.02)  # accuracies on their whole range: a 1 % difference is not a cliff
        ax.grid(True, alpha=0.3)
    return _save(fig, path)


def _trained(curve: list[dict], block: int) -> list[dict]:
    """The points of ``curve`` from the first epoch in which ``block`` (-1: the last) trained on; all of them for whole-network runs."""
    for i, point in enumerate(curve):
        trained = point.get("blocks_trained")
        if trained is None or (block if block >= 0 else len(point["head_val_accuracy"]) - 1) in trained:
            return curve[i:]
    return []


def plot_tune(rows: Sequence[Any], path: str | Path, chosen: Any = None, max_error: float | None = None) -> Path:
    """Gradient error against predicted step time, one point per hierarchy, the Pareto front joined.

    Parameters
    ----------
    rows
        :class:`~mgrit_resnet.studies.tune.TuneRow` objects.
    path
        Output image (``.png``, ``.pdf``, ``.svg``).
    chosen
        The recommended row, circled.
    max_error
        The gradient error a recommendation may have (``tune --max-error``), drawn as a line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("plot_tune: no hierarchy to draw")
    floor = min([r.grad_error for r in rows if r.grad_error > 0], default=1e-16) / 10  # an exact gradient sits on the floor
    error = lambda r: max(r.grad_error, floor)  # noqa: E731
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ax.scatter([r.time * 1e3 for r in rows], [error(r) for r in rows], color="tab:blue", zorder=3)
    front = sorted((r for r in rows if r.pareto), key=lambda r: r.time)
    if front:
        ax.plot([r.time * 1e3 for r in front], [error(r) for r in front], "--", color="tab:orange", label="Pareto front")
    if chosen is not None:
        ax.scatter([chosen.time * 1e3], [error(chosen)], s=160, facecolors="none", edgecolors="tab:red", label="recommended", zorder=4)
    if max_error is not None:
        ax.axhline(max_error, color="tab:red", linestyle=":", label=f"--max-error {max_error:g}")
    ax.set_yscale("log")
    ax.margins(x=0.12, y=0.12)  # room for the labels of the outermost points
    ax.set(
        xlabel=f"predicted one-shot step at P = {rows[0].ranks} [ms]",
        ylabel="relative gradient error",
        title=f"MGRIT hierarchies (serial step {rows[0].serial_time * 1e3:.2f} ms)",
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()  # the final axes, so that the labels are placed where they will be drawn
    _place_labels(fig, ax, [(r.time * 1e3, error(r), f"{r.levels}L m{r.coarsening}") for r in rows])
    return _save(fig, path)


# Offsets (points) tried in turn for a point's label: right, above, left, below, then further out.
_LABEL_OFFSETS = [(5, 3), (5, -11), (-5, 3), (-5, -11), (0, 9), (0, -17), (12, 12), (12, -20), (-12, 12), (-12, -20), (20, 2), (-20, 2)]


def _place_labels(fig: Any, ax: Any, points: Sequence[tuple[float, float, str]]) -> None:
    """Annotate every ``(x, y, text)`` at the first offset whose label overlaps no other label, no point and stays inside the axes."""
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    markers = [ax.transData.transform((x, y)) for x, y, _ in points]
    placed: list[Any] = []
    for x, y, text in sorted(points, key=lambda p: (p[0], p[1])):
        best, best_cost = None, math.inf
        for dx, dy in _LABEL_OFFSETS:
            label = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=8, ha="left" if dx >= 0 else "right")
            box = label.get_window_extent(renderer).expanded(1.05, 1.1)
            cost = sum(box.overlaps(other) for other in placed) * 10
            cost += sum(box.contains(mx, my) for mx, my in markers) * 5
            cost += 0 if (box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0 and box.y1 <= frame.y1) else 3
            if cost < best_cost:
                if best is not None:
                    best.remove()
                best, best_cost, best_box = label, cost, box
            else:
                label.remove()
            if cost == 0:
                break
        placed.append(best_box)
