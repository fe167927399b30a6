"""Training strategies side by side on the same network, data, seed and epoch budget (the ``compare`` verb).

Every strategy runs on all ranks, one after the other, from the same config
with only ``train.strategy`` changed. For each one :func:`measure` records the
metrics, the wall time, the bytes each rank sent and each rank's measured
peak memory; :func:`markdown_table` and :func:`write_csv` lay the records out.
"""

from __future__ import annotations

import csv
import ctypes
import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import Config

_MIB = 2**20


def measure(cfg: Config, comm: Any, on_step: Callable | None = None, on_epoch: Callable | None = None) -> dict[str, Any]:
    """Collective: train ``cfg`` on every rank and measure it; the record of one strategy (the same on every rank).

    The record holds the accuracies (per-block heads too), the wall time, each
    rank's peak memory and memory growth, the bytes each rank sent, the summary
    and the validation curve. ``on_step`` and ``on_epoch`` are passed to the training loop.
    """
    from .. import comm as comm_module
    from ..training.loop import prepare, train

    backend = comm_module.backend_for(comm)
    start_kib, measured = _reset_peak()
    result = train(cfg, comm, on_step=on_step, on_epoch=on_epoch, prepared=prepare(cfg, comm))
    peak_kib = _status_kib("VmHWM") if measured else _status_kib("VmRSS")
    s, rows = result.summary, result.metrics
    sent = [sum(r["bytes_sent"][p] for r in rows) for p in range(s["ranks"])]
    return {
        "strategy": s["strategy"],
        "val_accuracy": s["val_accuracy"],
        "train_accuracy": s["train_accuracy"],
        "head_val_accuracy": s.get("head_val_accuracy"),
        "best_head": s.get("best_head"),
        "best_head_val_accuracy": s.get("best_head_val_accuracy"),
        "wall_time": s["wall_time"],
        "ranks": s["ranks"],
        "peak_memory_mib": [kib / 1024 for kib in backend.allgather(peak_kib)],
        "memory_growth_mib": [kib / 1024 for kib in backend.allgather(peak_kib - start_kib)],
        "memory_measure": "VmHWM" if measured else "VmRSS after the run (VmHWM could not be reset)",
        "bytes_sent": sent,
        "summary": s,
        "curve": [{"progress": r.get("progress", r["epoch"] / s["epochs"]), **_curve_point(r)} for r in rows],
    }


def _curve_point(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("epoch", "val_accuracy", "train_loss", "head_val_accuracy", "kinetic", "blocks_trained")
    return {k: row[k] for k in keys if k in row}


def warm_up() -> None:
    """One tiny Adam step, so that the first strategy does not pay torch's one-time set-up in its memory figure."""
    import torch

    layer = torch.nn.Linear(4, 4)
    optimizer = torch.optim.Adam(layer.parameters())
    torch.nn.functional.cross_entropy(layer(torch.ones(2, 4)), torch.zeros(2, dtype=torch.long)).backward()
    optimizer.step()


def _status_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (0 where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_peak() -> tuple[int, bool]:
    """Give freed memory back to the system and restart the high-water mark; ``(RSS now in KiB, whether the reset worked)``."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed blocks; without this a later run reuses them unseen
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    return _status_kib("VmRSS"), reset


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(results: list[dict[str, Any]]) -> str:
    """One row per strategy: accuracies, per-block head accuracies, time, memory and bytes per rank."""
    lines = [
        "| strategy | val acc (final net) | best head | val acc per block head | wall time [s] | peak RSS per rank [MiB] "
        "| RSS growth per rank [MiB] | sent per rank [MiB] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        heads = r["head_val_accuracy"]
        best = "-" if r["best_head"] is None else f"{r['best_head']}: {_fmt(r['best_head_val_accuracy'])}"
        per_block = "-" if heads is None else " / ".join(_fmt(a, 3) for a in heads)
        lines.append(
            f"| {r['strategy']} | {_fmt(r['val_accuracy'])} | {best} | {per_block} | {r['wall_time']:.1f} "
            f"| {' / '.join(f'{m:.0f}' for m in r['peak_memory_mib'])} | {' / '.join(f'{m:.1f}' for m in r['memory_growth_mib'])} "
            f"| {' / '.join(f'{b / _MIB:.2f}' for b in r['bytes_sent'])} |"
        )
    return "\n".join(lines)


def write_csv(results: list[dict[str, Any]], path: str | Path) -> None:
    """``compare.csv``: one row per strategy; the per-block and per-rank lists as space-separated numbers."""
    columns = ["strategy", "val_accuracy", "train_accuracy", "best_head", "best_head_val_accuracy", "wall_time", "ranks"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*columns, "head_val_accuracy", "peak_memory_mib", "memory_growth_mib", "bytes_sent"])
        for r in results:
            lists = [r["head_val_accuracy"] or [], r["peak_memory_mib"], r["memory_growth_mib"], r["bytes_sent"]]
            writer.writerow([r[c] for c in columns] + [" ".join(f"{v:.6g}" for v in values) for values in lists])
