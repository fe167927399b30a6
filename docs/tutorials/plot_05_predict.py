"""
Predicting scaling
==================

A two-core machine cannot show the speedup of a training step on 64 ranks.
``mgrit-resnet predict`` (and :func:`mgrit_resnet.studies.perfmodel.predict`) predicts
it instead: it measures, on one rank, what every kind of step costs (forward
and adjoint, fine and coarse), then runs the solver's own code for ``P``
simulated ranks, charging those costs to a virtual clock per rank and
``alpha + beta * bytes`` per message (:doc:`../performance`). This tutorial
predicts one one-shot training step (forward 2 / adjoint 1 iterations) of a
dense network with 512 residual layers, then checks the prediction at two
ranks against the virtual clock of a real two-rank run.
"""

import os
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt

import mgrit_resnet as mr
from mgrit_resnet.studies import perfmodel

ROOT = Path(mr.__file__).resolve().parents[1]
overrides = {"network.depth": 512, "network.width": 16, "mgrit.levels": 4, "mgrit.coarsening": 4, "mgrit.relax": "F"}
cfg = mr.load_config(ROOT / "examples" / "peaks.toml", overrides=overrides)
net, t = cfg.network, cfg.train
print(f"one-shot {t.fwd_iters}/{t.bwd_iters}, N = {net.depth}, width {net.width}, batch {t.batch_size}")

# %%
# Calibrate on this rank and predict up to 256 ranks, with a cluster-like
# network: 2 microseconds per message, 10 GB/s.

ranks = [1, 2, 4, 8, 16, 32, 64, 128, 256]
calibration, rows = perfmodel.predict(cfg, ranks, network=(2e-6, 1e-10))
costs = calibration.costs
print(f"step costs [us]: forward {[round(c * 1e6, 1) for c in costs.forward]}, adjoint {[round(c * 1e6, 1) for c in costs.adjoint]}")
print(f"serial step (autograd) {calibration.serial_time * 1e3:.1f} ms, one-shot step on one rank {calibration.one_rank_time * 1e3:.1f} ms")
print(perfmodel.format_table(rows))

# %%
# On one rank the one-shot step costs more than a serial step (MGRIT does
# more layer steps than one forward and one backward sweep); from a few ranks
# on, the work divides and the step gets faster than serial. The speedup levels
# off where the coarsest level's sequential solve and the chains of messages
# across ranks on the coarse levels dominate.

fig, ax = plt.subplots(figsize=(6.5, 4))
shown = [r for r in rows if r.time is not None]
ax.loglog([r.ranks for r in shown], [r.speedup for r in shown], "o-", label="predicted speedup")
ax.loglog(ranks, ranks, "--", color="gray", label="ideal")
ax.set_xscale("log", base=2)
ax.set(xlabel="ranks P", ylabel="speedup over serial", title="one-shot training step, N = 512")
ax.grid(True, which="both", alpha=0.3)
ax.legend()
plt.show()

# %%
# A check of the model: the MGRIT solve of a small heat problem, predicted for
# two ranks and run on two ranks with the virtual clock (``solve
# --virtual-clock``), which advances each rank's clock by the CPU time of its
# own work and the same ``alpha + beta * bytes`` per message. The two agree to
# within the noise of CPU timing on a shared machine (``benchmarks/validate_model.py``
# makes this comparison at 1 to 8 ranks, with measured wall times too).

heat = mr.load_config(ROOT / "examples" / "heat1d.toml", overrides={"problem.n_steps": 2048, "problem.nx": 128})
_, (one, two) = perfmodel.predict(heat, [1, 2], of="solve", network=(2e-6, 1e-10))
mpiexec = Path(sys.executable).parent / "mpiexec"
env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
command = [str(mpiexec), "-n", "2", sys.executable, "-m", "mgrit_resnet", "solve", str(ROOT / "examples" / "heat1d.toml")]
command += ["--set", "problem.n_steps=2048", "--set", "problem.nx=128", "--virtual-clock", "2e-6,1e-10"]
proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=True)
print(proc.stdout.splitlines()[-1])
print(f"model: {one.time:.4f} s on one rank, {two.time:.4f} s on two")
