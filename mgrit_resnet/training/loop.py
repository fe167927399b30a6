"""The epoch loop of every strategy, run identically on every rank (SPMD), and its output folder.

The strategies (:mod:`.registry`) train and evaluate; this loop walks their
epoch plan and owns what is the same for all of them: resume, ``config.toml``,
``metrics.jsonl``, ``checkpoint.pt`` (every ``train.checkpoint_every`` epochs and after the last)
and ``summary.json``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..comm.provenance import now, plain_config, provenance
from ..config import config_text
from . import checkpoint
from .errors import OutputNotWritten, TrainingDiverged
from .registry import strategy_class
from .strategy import Strategy

RESUME_NEEDS_OUT = "--resume needs --out DIR (the folder holding checkpoint.pt)"


@dataclass
class TrainResult:
    """What a training run produced (the same on every rank)."""

    summary: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)


def layer_bounds(owned: range | list[range]) -> list:
    """``[start, stop]`` of a rank's layers; of a network of stages, one such pair per stage."""
    return [owned.start, owned.stop] if isinstance(owned, range) else [[r.start, r.stop] for r in owned]


def prepare(cfg: Any, comm: Any, seed: int | None = None, resume_from: str | Path | None = None, data: Any = None) -> tuple:
    """:func:`~mgrit_resnet.training.check` the config against the ranks, then load the data and build the model.

    Returns what :func:`train` takes as ``prepared``; raises ValueError on bad
    input. ``resume_from`` names a checkpoint to check, too: one the run can continue from;
    ``data`` is data given from Python, as :func:`train` takes it.
    """
    return strategy_class(cfg.train.strategy).prepare(cfg, comm, seed, resume_from, data)


def train(
    cfg: Any,
    comm: Any = None,
    out: str | Path | None = None,
    resume: bool = False,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    prepared: tuple | None = None,
    data: Any = None,
) -> TrainResult:
    """Train ``cfg.network`` on ``cfg.data`` with ``cfg.train``; collective over ``comm``.

    Every strategy writes a metrics row per row of its epoch plan: one per
    epoch for the whole network; for block-wise training one per epoch of
    every stage of the schedule (``K x train.epochs`` rows for ``sequential`` and ``multilap``).

    Parameters
    ----------
    cfg
        A validated :class:`~mgrit_resnet.Config`.
    comm
        An mpi4py communicator, or ``None`` for one rank.
    out
        Output folder: ``metrics.jsonl``, ``summary.json``, ``config.toml`` and
        ``checkpoint.pt`` (rewritten atomically after every ``train.checkpoint_every``
        epochs and after the last), written by rank 0. ``metrics.jsonl`` holds the rows
        of the epochs the checkpoint holds.
    resume
        Continue from ``out/checkpoint.pt`` exactly where it stopped (any rank count).
    on_step
        Called on every rank after every optimisation step with a dict of
        ``epoch``, ``epochs``, ``step``, ``steps``, ``loss`` and the solver statistics.
    on_epoch
        Called on every rank with each epoch's metrics row.
    prepared
        The result of :func:`prepare`, when the caller checked the input already
        (it holds the data: give ``data`` to :func:`prepare` then).
    data
        Your own data in place of the ``[data]`` set: a
        :class:`~mgrit_resnet.training.data.Dataset`; a tuple ``(x_train, y_train)``
        or ``(x_train, y_train, x_val, y_val)`` of tensors or NumPy arrays (inputs
        ``(samples, ...)``, integer labels in ``[0, network.n_classes)``); or a
        ``torch.utils.data.Dataset`` of ``(x, y)`` pairs, or a tuple ``(train, val)``
        of them. It is taken exactly as the arrays of ``[data] name = "npz"``
        would be: the same checks, the same cut to ``data.n_train`` and
        ``data.n_val`` samples (a stratified split of the training arrays when
        no validation arrays are given), hence the same batches, metrics and
        checkpoints. ``data.name`` and ``data.path`` are not read. To resume, give the same data again.

    Examples
    --------
    Your own network (``network.module`` a function ``build(options)``) on your own tensors::

        cfg = mr.load_config("net.toml", overrides={"network.module": build, "data.n_train": 800, "data.n_val": 200})
        result = train(cfg, comm, out="runs/mine", data=(x, y))
    """
    if resume and out is None:
        raise ValueError(RESUME_NEEDS_OUT)
    start_time = now()
    if prepared is not None and data is not None:
        raise ValueError("train: give data to prepare(), not beside prepared (the prepared run holds its data already)")
    kind = strategy_class(cfg.train.strategy)
    if prepared is None:
        prepared = kind.prepare(cfg, comm, resume_from=Path(out) / "checkpoint.pt" if resume else None, data=data)
    run = kind(cfg, prepared)
    data_given = run.dataset.name == "given"
    world, out = run.groups.world, None if out is None else Path(out)
    metrics: list[dict[str, Any]] = []
    elapsed = 0.0
    if resume:
        saved = kind.resumable(cfg, run.groups.layer_ranks, out / "checkpoint.pt")
        run.restore(saved)
        metrics, elapsed = saved["metrics"], saved["wall_time"]
    if out is not None:  # a full disk here is one message on every rank, before any work
        kept = f"the checkpoint of epoch {len(metrics)} is kept" if metrics else "nothing was trained"
        written_by_rank0(run.groups, lambda: start_output(out, cfg, metrics, data_given), f"cannot start the run in {out}", kept)

    started = time.perf_counter() - elapsed

    saved_rows = len(metrics)  # the rows the checkpoint on disk holds

    def diverged(row: int, step: int | None, loss: float | None) -> TrainingDiverged:
        run.close()
        return TrainingDiverged(row + 1, step, loss, saved_rows if out is not None else 0, None if out is None else str(out))

    for row in range(len(metrics), len(run.plan)):
        epoch_start, bytes_before = time.perf_counter(), run.bytes_sent
        step = None
        for step, info in enumerate(run.train_epoch(row), 1):
            # a whole network's step loss is the same on every rank; a block-wise one is this rank's (checked below)
            if not run.blockwise and not math.isfinite(info["loss"]):
                raise diverged(row, step, info["loss"])
            if on_step is not None:
                on_step({"epoch": row + 1, "epochs": len(run.plan), "step": step, "steps": run.steps, **info})
        metric = {
            "epoch": row + 1,
            **run.end_epoch(row),
            "epoch_time": time.perf_counter() - epoch_start,
            "bytes_sent": run.bytes_sent - bytes_before,
            **run.solver_stats(),
        }
        metric["epoch_time"] = max(world.allgather(metric["epoch_time"]))
        metric["bytes_sent"] = world.allgather(metric["bytes_sent"])
        bad = non_finite_loss(metric)  # from sums over every rank: the same everywhere
        if bad is not None:
            raise diverged(row, step, bad)
        metrics.append(metric)
        if on_epoch is not None:
            on_epoch(metric)
        # the same on every rank: no checkpoint, so none of its gathers
        if out is not None and checkpoint_due(row, len(run.plan), cfg.train.checkpoint_every):
            if not save(out, run, cfg, metrics, time.perf_counter() - started, saved_rows):
                del metrics[saved_rows:]
                raise diverged(row, step, None)
            saved_rows = len(metrics)

    train_accuracy, val_accuracy, extra = run.final()
    summary = {
        "train_accuracy": train_accuracy,
        "val_accuracy": val_accuracy,
        "final_loss": metrics[-1]["train_loss"] if metrics else None,
        "epochs": cfg.train.epochs,
        "wall_time": max(world.allgather(time.perf_counter() - started)),
        "ranks": run.groups.size,
        "data_parallel": run.groups.data_parallel,
        "strategy": cfg.train.strategy,
        "owned_layers": world.allgather(layer_bounds(run.owned_layers)),
        **extra,
        "provenance": provenance(cfg, run.groups.size, start_time),
    }
    run.close()
    if out is not None:
        written_by_rank0(
            run.groups,
            lambda: checkpoint.write_text_atomically(out / "summary.json", json.dumps(summary, indent=2) + "\n"),
            f"cannot write {out / 'summary.json'}",
            f"the checkpoint of epoch {len(metrics)} is kept",
        )
    return TrainResult(summary, metrics)


def non_finite_loss(metric: dict[str, Any]) -> float | None:
    """The first NaN or infinite training loss of an epoch's metrics row (whole and per block), or ``None``."""
    losses = [metric.get("train_loss")] + list(metric.get("block_train_loss") or [])
    return next((v for v in losses if v is not None and not math.isfinite(v)), None)


def checkpoint_due(row: int, rows: int, every: int) -> bool:
    """Whether the epoch-plan row ``row`` (0-based, of ``rows``) ends with a checkpoint: every ``every`` rows, and the last."""
    return (row + 1) % every == 0 or row + 1 == rows


def save(out: Path, run: Strategy, cfg: Any, metrics: list[dict[str, Any]], wall_time: float, saved_rows: int) -> bool:
    """Collective: ``out/checkpoint.pt`` written atomically by rank 0, then the rows it adds appended to ``metrics.jsonl``.

    A row is in ``metrics.jsonl`` only once the checkpoint that holds it is on
    disk: the rows after the first ``saved_rows`` (those of the checkpoint
    before). Returns ``False`` on every rank, writing nothing, when a tensor
    of the state is not finite: the last good checkpoint stays.
    """
    state = run.state()
    finite = state is None or checkpoint.all_finite(state)
    if not run.groups.world.allgather(finite)[0]:
        return False

    def write() -> None:  # on rank 0, which holds the whole state
        payload = {
            "strategy": cfg.train.strategy,
            **state,
            "metrics": metrics,
            "epoch": len(metrics),
            "wall_time": wall_time,
            "config": plain_config(cfg),
        }
        checkpoint.save_atomically(payload, out / "checkpoint.pt")
        written.append(True)
        append_line(out / "metrics.jsonl", "\n".join(json.dumps(m) for m in metrics[saved_rows:]))

    written: list[bool] = []
    epoch = len(metrics)

    def kept() -> str:
        if written:
            return f"checkpoint.pt holds epoch {epoch}, metrics.jsonl ends before it: --resume restores the rows from the checkpoint"
        return f"the last checkpoint (epoch {saved_rows}) is kept" if saved_rows else "no checkpoint was kept"

    written_by_rank0(run.groups, write, f"cannot save epoch {epoch} to {out}", kept)
    return True


def append_line(path: Path, line: str) -> None:
    """Append ``line`` and a newline to ``path`` whole or not at all: a failed write is cut back, so no row is torn."""
    data = (line + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
        except OSError:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def written_by_rank0(groups: Any, write: Callable[[], None], what: str, kept: str | Callable[[], str]) -> None:
    """Collective: ``write()`` on rank 0; if it fails, :class:`OutputNotWritten` on every rank (no rank is left waiting).

    ``kept`` says what is left on disk (a callable: asked after the failure).
    """
    failure = None
    if groups.rank == 0:
        try:
            write()
        except (OSError, RuntimeError) as error:  # torch.save reports a full disk as a RuntimeError
            failure = f"{what}: {error}; {kept() if callable(kept) else kept}"
    failure = groups.world.allgather(failure)[0]
    if failure is not None:
        raise OutputNotWritten(failure)


def start_output(out: Path, cfg: Any, metrics: list[dict[str, Any]], data_given: bool = False) -> None:
    """Create ``out`` with ``config.toml`` and a ``metrics.jsonl`` holding ``metrics`` (those of a resumed run); rank 0 only.

    Both files are written whole or not at all: a full disk leaves them as they were.
    """
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.remove_orphans(out)
    write_config(cfg, out / "config.toml", data_given)
    checkpoint.write_text_atomically(out / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in metrics))


def write_config(cfg: Any, path: Path, data_given: bool = False) -> None:
    """``cfg`` as a TOML file that :func:`~mgrit_resnet.load_config` reads back to the same config.

    The text is :func:`~mgrit_resnet.config.config_text`'s; ``data_given`` notes that the run trained on data from Python.
    """
    notes = {"data": "the run trained on data given from Python (train(..., data=...)), not on this [data] set"} if data_given else {}
    checkpoint.write_text_atomically(Path(path), config_text(cfg, section_notes=notes))
