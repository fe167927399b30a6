"""The ``train`` verb: checks, the progress bar, the per-epoch report."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import load_config, parse_overrides


def prepare_train(args: argparse.Namespace, comm: Any, rank: int) -> Callable[[], int]:
    """Validate the config, the output folder and the ranks, load data and build the model; return the job."""
    from .training.loop import prepare, train

    cfg = load_config(args.config, parse_overrides(args.set))
    out = None if args.out is None else Path(args.out)
    if args.resume and out is None:
        raise ValueError("--resume needs --out DIR (the folder holding checkpoint.pt)")
    if out is not None:
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out: {str(out)!r} exists and is not a folder")
        if args.resume and not (out / "checkpoint.pt").is_file():
            raise ValueError(f"--resume: no checkpoint at {str(out / 'checkpoint.pt')!r}")
        existing = out.resolve()
        while not existing.exists():  # the folder and any missing parents are created
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK):
            raise ValueError(f"--out: cannot create {str(out)!r}: {str(existing)!r} is not a writable folder")
    prepared = prepare(cfg, comm)

    def run() -> int:
        from tqdm import tqdm

        if out is not None and rank == 0:
            out.mkdir(parents=True, exist_ok=True)
        if comm is not None:
            comm.Barrier()  # the folder exists before anyone needs it
        t = cfg.train
        bar = tqdm(total=t.epochs, desc=f"train {t.strategy}", unit="epoch", disable=rank != 0 or not sys.stderr.isatty(), leave=False)

        def on_step(info: dict[str, Any]) -> None:
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
                (bar.write if not bar.disable else print)(line + f"  ({row['epoch_time']:.1f} s)")
                sys.stdout.flush()

        try:
            result = train(cfg, comm, out, resume=args.resume, on_step=on_step, on_epoch=on_epoch, prepared=prepared)
        finally:
            bar.close()
        if rank == 0:
            s = result.summary
            print(
                f"{s['strategy']} on {s['ranks']} rank(s): train accuracy {s['train_accuracy']:.4f}, "
                f"validation accuracy {s['val_accuracy'] if s['val_accuracy'] is None else round(s['val_accuracy'], 4)}, "
                f"{s['wall_time']:.1f} s"
            )
        return 0

    return run
