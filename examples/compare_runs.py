"""Print a table of ``train --out`` folders side by side: strategy, ranks, accuracies, wall time.

Usage: python examples/compare_runs.py DIR [DIR ...]
"""

import json
import sys
from pathlib import Path


def main(dirs: list[str]) -> int:
    print(f"{'run':<28} {'strategy':<9} {'ranks':>5} {'train acc':>9} {'val acc':>8} {'wall [s]':>9}")
    for d in dirs:
        s = json.loads((Path(d) / "summary.json").read_text())
        accuracies = f"{s['train_accuracy']:>9.4f} {s['val_accuracy']:>8.4f}"
        print(f"{Path(d).name:<28} {s['strategy']:<9} {s['ranks']:>5} {accuracies} {s['wall_time']:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
