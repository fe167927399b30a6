"""
A parameter sweep and its plot
==============================

``mgrit-resnet sweep`` runs the ``solve`` verb (or ``train``) at every point of
a cartesian grid of config keys, inside one ``mpiexec`` job, and writes one
CSV row per point (:doc:`../guide/cli`). This tutorial sweeps the coarsening
factor and the relaxation of two-level MGRIT on the Dahlquist problem of
``examples/dahlquist.toml`` on two ranks, then reads the table back and plots
the measured mean convergence factor against the two-level theory written in
the same rows.
"""

import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

import mgrit_resnet as mr
from mgrit_resnet.studies.sweep import read_table

ROOT = Path(mr.__file__).resolve().parents[1]
mpiexec = Path(sys.executable).parent / "mpiexec"
env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
table = Path(tempfile.mkdtemp()) / "dahlquist.csv"

# %%
# The sweep: 5 coarsening factors times 2 relaxations, 10 points, on 2 ranks.
# Every point's config is checked before the first one runs; each finished
# row is written at once, so running the same command again after an
# interruption only runs the missing points.

command = [str(mpiexec), "-n", "2", sys.executable, "-m", "mgrit_resnet", "sweep", str(ROOT / "examples" / "dahlquist.toml")]
command += ["--grid", "mgrit.coarsening=2,4,8,16,32", "--grid", "mgrit.relax=F,FCF", "--out", str(table)]
proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=True)
print(proc.stdout)

# %%
# The table holds the grid values, then the results: iterations, the final
# residual, the mean convergence factor :math:`(r_j/r_0)^{1/j}` and the
# two-level theory for the point (defined here: two levels, a scalar problem).

with table.open() as f:
    rows = list(csv.DictReader(f))
print(f"{'m':>3} {'relax':>5} {'iterations':>10} {'mean factor':>12} {'theory':>8}")
for row in rows:
    m, relax = row["mgrit.coarsening"], row["mgrit.relax"]
    print(f"{m:>3} {relax:>5} {row['iterations']:>10} {float(row['mean_factor']):>12.4f} {float(row['theory_bound']):>8.4f}")

# %%
# ``mgrit-resnet plot dahlquist.csv`` draws these columns against each grid
# key; here the same numbers by hand. The measured factors (solid) stay just
# below the theory (dashed) at every point; FCF-relaxation pays off more the
# larger the coarsening.

parsed = read_table(table)
fig, ax = plt.subplots(figsize=(6.5, 4))
for relax in ("F", "FCF"):
    mine = [r for r in parsed.rows if r["mgrit.relax"] == relax]
    m = [int(r["mgrit.coarsening"]) for r in mine]
    (line,) = ax.plot(m, [float(r["mean_factor"]) for r in mine], "o-", label=f"{relax}: measured")
    ax.plot(m, [float(r["theory_bound"]) for r in mine], "--", color=line.get_color(), label=f"{relax}: two-level theory")
ax.set(xscale="log", yscale="log", xlabel="coarsening factor m", ylabel="mean convergence factor")
ax.set_xticks([2, 4, 8, 16, 32], labels=["2", "4", "8", "16", "32"])
ax.set_title("Dahlquist z = -1, backward Euler, N = 2048, 2 ranks")
ax.grid(True, which="both", alpha=0.3)
ax.legend()
plt.show()
