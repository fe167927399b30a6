"""Print a table of ``train --out`` folders side by side: strategy, ranks, accuracies, wall time.

Usage: python examples/compare_runs.py DIR [DIR ...]

With two or more folders, the first is the reference: each other run is given
as a multiple of its wall time and a difference in validation accuracy. The
last line says how many cores the machine gave the runs: wall times compare
only where every rank had a core of its own (``make demo`` prints the load
before it starts).
"""

import json
import os
import sys
from pathlib import Path


def main(dirs: list[str]) -> int:
    summaries = [json.loads((Path(d) / "summary.json").read_text()) for d in dirs]
    print(f"{'run':<28} {'strategy':<9} {'ranks':>5} {'train acc':>9} {'val acc':>8} {'wall [s]':>9}")
    for d, s in zip(dirs, summaries):
        accuracies = f"{s['train_accuracy']:>9.4f} {s['val_accuracy']:>8.4f}"
        print(f"{Path(d).name:<28} {s['strategy']:<9} {s['ranks']:>5} {accuracies} {s['wall_time']:>9.1f}")
    reference = summaries[0]
    for d, s in zip(dirs[1:], summaries[1:]):
        ratio = s["wall_time"] / reference["wall_time"]
        diff = 100 * (s["val_accuracy"] - reference["val_accuracy"])
        verdict = "faster" if ratio < 1 else "slower"
        print(f"{Path(d).name}: {ratio:.2f}x the wall time of {Path(dirs[0]).name} ({verdict}), validation accuracy {diff:+.1f} points")
    print(machine_line(max(s["ranks"] for s in summaries)))
    return 0


def machine_line(ranks: int) -> str:
    """How many cores this process may use, against the most ranks of a run."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    room = "one core per rank" if cores >= ranks else f"fewer than the {ranks} ranks: they shared them"
    return f"machine: {cores} cores ({room})"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
