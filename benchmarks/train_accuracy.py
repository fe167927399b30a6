"""Serial vs one-shot layer-parallel training: validation accuracy and wall time, side by side.

For each case, trains the same network on the same data with the same seed
and epochs twice: ``serial`` (plain autograd, one rank) and ``one_shot``
(LayerParallel on P ranks, 3 levels, coarsening 4, 2 forward / 1 adjoint
MGRIT iterations per step, warm-started per batch), both with Adam. Prints
validation accuracy, the difference in points, and wall time.

Target (reported, not asserted): one_shot within 1 point of serial.

Usage::

    python benchmarks/train_accuracy.py [--ranks 2] [--cases peaks64,peaks256,digits] [--epochs 20] [--out runs/accuracy]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ONE_SHOT = ["mgrit.levels=3", "mgrit.coarsening=4", "train.fwd_iters=2", "train.bwd_iters=1", "train.optimizer=adam"]
CASES = {
    "peaks64": ("examples/peaks.toml", ["network.depth=64"]),
    "peaks256": ("examples/peaks.toml", ["network.depth=256"]),
    "digits": ("examples/digits.toml", []),
    "digits_conv": ("examples/digits.toml", ['network.kind="conv"', "network.width=8", "network.t_final=5"]),
}
TARGET_POINTS = 1.0


def _train(config: str, sets: list[str], ranks: int, out: Path, epochs: int | None) -> dict:
    mpiexec = Path(sys.executable).parent / "mpiexec"
    cmd = [str(mpiexec), "-n", str(ranks), sys.executable, "-m", "mgrit_resnet", "train", config, "--out", str(out)]
    for s in sets + ([f"train.epochs={epochs}"] if epochs else []):
        cmd += ["--set", s]
    subprocess.run(cmd, cwd=ROOT, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2, help="ranks of the one-shot runs (default 2)")
    parser.add_argument("--cases", default="peaks64,peaks256,digits", help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs of every case")
    parser.add_argument("--out", default="runs/accuracy", help="folder for the training runs")
    parser.add_argument("--json", help="write the table to this file")
    args = parser.parse_args(argv)
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"--cases: unknown case {unknown[0]!r}; allowed: {', '.join(CASES)}")
    rows = []
    for name in names:
        config, sets = CASES[name]
        serial = _train(config, sets + ["train.strategy=serial"], 1, ROOT / args.out / f"{name}-serial", args.epochs)
        one_shot = _train(
            config, sets + ["train.strategy=one_shot", *ONE_SHOT], args.ranks, ROOT / args.out / f"{name}-one_shot", args.epochs
        )
        rows.append(
            {
                "case": name,
                "epochs": serial["epochs"],
                "serial_val": serial["val_accuracy"],
                "one_shot_val": one_shot["val_accuracy"],
                "points": 100 * (one_shot["val_accuracy"] - serial["val_accuracy"]),
                "serial_s": serial["wall_time"],
                "one_shot_s": one_shot["wall_time"],
                "ranks": args.ranks,
            }
        )
        r = rows[-1]
        print(
            f"{name}: serial {r['serial_val']:.4f} ({r['serial_s']:.0f} s), one_shot {r['one_shot_val']:.4f} ({r['one_shot_s']:.0f} s)",
            flush=True,
        )
    print(f"\nAdam, equal epochs; one_shot: P = {args.ranks}, 3 levels, coarsening 4, 2 forward / 1 adjoint iterations, warm starts")
    print(f"{'case':<12} {'epochs':>6} {'serial val':>10} {'one_shot val':>12} {'diff [pt]':>9} {'serial [s]':>10} {'one_shot [s]':>12}")
    for r in rows:
        verdict = "PASS" if r["points"] >= -TARGET_POINTS else "below target"
        print(
            f"{r['case']:<12} {r['epochs']:>6} {r['serial_val']:>10.4f} {r['one_shot_val']:>12.4f} {r['points']:>+9.2f} "
            f"{r['serial_s']:>10.1f} {r['one_shot_s']:>12.1f}  {verdict}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
