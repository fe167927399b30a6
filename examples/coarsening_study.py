"""A solver-parameter study: two-level MGRIT on the Dahlquist problem, coarsening x relaxation.

Runs the ``sweep`` verb over ``mgrit.coarsening`` and ``mgrit.relax`` on
``dahlquist.toml`` (the measured mean convergence factor beside the two-level
theory in one CSV row per point), then ``plot`` on the table. Run it again and
it runs only what the table lacks; works unchanged under ``mpiexec -n P``.

Usage: python examples/coarsening_study.py [OUT_DIR]   (default runs/coarsening_study)
"""

import sys
from pathlib import Path

from mgrit_resnet.cli import main as cli

CONFIG = Path(__file__).with_name("dahlquist.toml")
GRID = ["--grid", "mgrit.coarsening=2,4,8,16,32", "--grid", "mgrit.relax=F,FCF,FCFCF"]


def main(out_dir: str = "runs/coarsening_study") -> int:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "dahlquist.csv"
    return cli(["sweep", str(CONFIG), *GRID, "--out", str(table)]) or cli(["plot", str(table)])


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
