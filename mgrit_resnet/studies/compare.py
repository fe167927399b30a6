"""The ``compare`` verb: several training strategies on the same network, data, seed and epoch budget.

Every strategy runs on all ranks, one after the other, from the same config
with only ``train.strategy`` changed. For each one the verb records the
metrics, the wall time, the bytes each rank sent and each rank's measured
peak memory, and writes a table and a figure.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import gc
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import STRATEGIES, ConfigError, load_config, parse_overrides

_MIB = 2**20


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


def prepare_compare(args: argparse.Namespace, comm: Any, rank: int) -> Callable[[], int]:
    """Check the strategies, every strategy's config against the ranks, and the output folder; return the job."""
    from ..cli.train import check_out_dir
    from ..training.loop import prepare

    names = parse_strategies(args.strategies)
    overrides = parse_overrides(args.set)
    configs = {name: load_config(args.config, {**overrides, "train.strategy": name}) for name in names}
    out = None if args.out is None else Path(args.out)
    check_out_dir(out)
    for cfg in configs.values():
        prepare(cfg, comm)  # every check before any strategy runs; the models are built again, measured, in run()
    _warm_up()

    def run() -> int:
        results = [_run_one(cfg, comm, rank) for cfg in configs.values()]
        if rank == 0:
            table = markdown_table(results)
            print(table)
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                (out / "compare.json").write_text(json.dumps(results, indent=2) + "\n")
                (out / "compare.md").write_text(table + "\n")
                _write_csv(results, out / "compare.csv")
                from .plot import plot_compare

                print(f"wrote {out / 'compare.md'}, compare.csv, compare.json and {plot_compare(results, out / 'compare.png')}")
        return 0

    return run


def _run_one(cfg: Any, comm: Any, rank: int) -> dict[str, Any]:
    from .. import comm as comm_module
    from ..cli.train import training_progress
    from ..training.loop import prepare, train

    backend = comm_module.backend_for(comm)
    start_kib, measured = _reset_peak()
    with training_progress(rank, cfg.train.epochs, f"compare {cfg.train.strategy}") as (on_step, on_epoch):
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


def _warm_up() -> None:
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


def _write_csv(results: list[dict[str, Any]], path: Path) -> None:
    columns = ["strategy", "val_accuracy", "train_accuracy", "best_head", "best_head_val_accuracy", "wall_time", "ranks"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*columns, "head_val_accuracy", "peak_memory_mib", "memory_growth_mib", "bytes_sent"])
        for r in results:
            lists = [r["head_val_accuracy"] or [], r["peak_memory_mib"], r["memory_growth_mib"], r["bytes_sent"]]
            writer.writerow([r[c] for c in columns] + [" ".join(f"{v:.6g}" for v in values) for values in lists])
