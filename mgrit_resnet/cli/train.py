"""The ``train`` verb: checks, the progress bar, the per-epoch report."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..config import load_config, parse_overrides


def check_out_dir(out: Path | None, option: str = "--out") -> None:
    """Fail before the work when ``out`` (created with its parents) cannot be a writable folder."""
    if out is None:
        return
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option}: {str(out)!r} exists and is not a folder")
    existing = out.resolve()
    while not existing.exists():  # the folder and any missing parents are created
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ValueError(f"{option}: cannot create {str(out)!r}: {str(existing)!r} is not a writable folder")


def prepare_train(args: argparse.Namespace, comm: Any, rank: int) -> Callable[[], int]:
    """Validate the config, the output folder and the ranks, load data and build the model; return the job."""
    from ..training.loop import prepare, train

    cfg = load_config(args.config, parse_overrides(args.set))
    out = None if args.out is None else Path(args.out)
    if args.resume and out is None:
        raise ValueError("--resume needs --out DIR (the folder holding checkpoint.pt)")
    check_out_dir(out)
    prepared = prepare(cfg, comm, resume_from=out / "checkpoint.pt" if args.resume else None)

    def run() -> int:
        if out is not None and rank == 0:
            out.mkdir(parents=True, exist_ok=True)
        if comm is not None:
            comm.Barrier()  # the folder exists before anyone needs it
        with training_progress(rank, cfg.train.epochs, f"train {cfg.train.strategy}") as (on_step, on_epoch):
            result = train(cfg, comm, out, resume=args.resume, on_step=on_step, on_epoch=on_epoch, prepared=prepared)
        if rank == 0:
            s = result.summary
            print(
                f"{s['strategy']} on {s['ranks']} rank(s): train accuracy {s['train_accuracy']:.4f}, "
                f"validation accuracy {s['val_accuracy'] if s['val_accuracy'] is None else round(s['val_accuracy'], 4)}, "
                f"{s['wall_time']:.1f} s"
            )
        return 0

    return run


@contextlib.contextmanager
def training_progress(rank: int, epochs: int, desc: str) -> Iterator[tuple[Callable, Callable]]:
    """``(on_step, on_epoch)`` for the training loops: a bar on rank 0 when stderr is a terminal, one printed line per epoch."""
    from tqdm import tqdm

    bar = tqdm(total=epochs, desc=desc, unit="epoch", disable=rank != 0 or not sys.stderr.isatty(), leave=False)

    def on_step(info: dict[str, Any]) -> None:
        bar.total = info.get("epochs", bar.total)  # sequential local schedules have an epoch per block
        bar.n = info["epoch"] - 1 + info["step"] / info["steps"]
        postfix = {"loss": f"{info['loss']:.4f}"}
        if info.get("fwd_residual") is not None:
            postfix["res"] = f"{info['fwd_residual']:.1e}/{info['adj_residual']:.1e}"
        bar.set_postfix(postfix, refresh=False)
        bar.refresh()

    def on_epoch(row: dict[str, Any]) -> None:
        if rank == 0:
            val = "-" if row["val_accuracy"] is None else f"{row['val_accuracy']:.4f}"
            line = f"epoch {row['epoch']:>3}  loss {row['train_loss']:.4f}  train acc {row['train_accuracy']:.4f}  val acc {val}"
            if row.get("head_val_accuracy"):
                line += f"  blocks {row['blocks_trained']} heads " + "/".join(f"{a:.3f}" for a in row["head_val_accuracy"])
            (bar.write if not bar.disable else print)(line + f"  ({row['epoch_time']:.1f} s)")
            sys.stdout.flush()

    try:
        yield on_step, on_epoch
    finally:
        bar.close()
