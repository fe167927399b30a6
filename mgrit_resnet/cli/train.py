"""The ``train`` verb: checks, the progress bar, the per-epoch report."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ._common import add_config_arguments, check_output, check_previous_run, format_residual, load, progress, world_size

HELP = "train the [network] on the [data] with the [train] strategy"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``train``."""
    add_config_arguments(parser)
    parser.add_argument("--out", metavar="DIR", help="output folder (metrics.jsonl, summary.json, config.toml, checkpoint.pt)")
    parser.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
    parser.add_argument("--force", action="store_true", help="start over in DIR, replacing the run it holds")


def prepare(args: argparse.Namespace, comm: Any, rank: int) -> Callable[[], int]:
    """Validate the config, the output folder and the ranks, then load data and build the model; return the job."""
    cfg = load(args)  # a bad config is one message before torch is even imported
    from ..training import check
    from ..training.loop import RESUME_NEEDS_OUT, train
    from ..training.loop import prepare as build

    out = None if args.out is None else Path(args.out)
    if args.resume and out is None:
        raise ValueError(RESUME_NEEDS_OUT)
    if args.resume and args.force:
        raise ValueError("--resume continues the run in --out and --force replaces it: give one of them")
    check_output("--out", out, folder=True)
    if not args.resume:
        check_previous_run(out, ("metrics.jsonl", "checkpoint.pt"), args.force, "--resume to continue it")
    check(cfg, world_size(comm))
    prepared = build(cfg, comm, resume_from=out / "checkpoint.pt" if args.resume else None)

    def run() -> int:
        if out is None and rank == 0:
            print("mgrit-resnet: note: no --out, so nothing of this run is saved (no checkpoint, metrics or summary)", file=sys.stderr)
        if out is not None and rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            if args.force:  # start over: nothing of the replaced run may be taken for this one's
                for name in ("checkpoint.pt", "summary.json", "metrics.jsonl"):
                    (out / name).unlink(missing_ok=True)
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
    with progress(rank, epochs, desc, "epoch") as bar:

        def on_step(info: dict[str, Any]) -> None:
            postfix = {"loss": f"{info['loss']:.4f}"}
            if info.get("fwd_residual") is not None:
                postfix["res"] = f"{format_residual(info['fwd_residual'])}/{format_residual(info.get('adj_residual'))}"
            # sequential local schedules have an epoch per block: the loop says how many there are
            bar.goto(info["epoch"] - 1 + info["step"] / info["steps"], info.get("epochs"), **postfix)

        def on_epoch(row: dict[str, Any]) -> None:
            val = "-" if row["val_accuracy"] is None else f"{row['val_accuracy']:.4f}"
            line = f"epoch {row['epoch']:>3}  loss {row['train_loss']:.4f}  train acc {row['train_accuracy']:.4f}  val acc {val}"
            if row.get("head_val_accuracy"):
                line += f"  blocks {row['blocks_trained']} heads " + "/".join(f"{a:.3f}" for a in row["head_val_accuracy"])
            bar.write(line + f"  ({row['epoch_time']:.1f} s)")

        yield on_step, on_epoch
