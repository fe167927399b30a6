"""
Choosing a hierarchy: time against gradient error
=================================================

A deeper MGRIT hierarchy or a larger coarsening factor makes a one-shot step
faster on many ranks, but with a fixed number of iterations it also makes the
gradient less exact. ``mgrit-resnet tune`` (and :func:`mgrit_resnet.studies.tune.tune`)
puts both side by side: for every candidate hierarchy it predicts the step
time at ``P`` ranks (as :doc:`plot_05_predict` does) and measures the relative
gradient error of the same step against the exact gradient over a few
optimiser steps on the config's own data. This tutorial tunes a 128-layer
Peaks network for 32 ranks.
"""

from pathlib import Path

import matplotlib.pyplot as plt

import mgrit_resnet as mr
from mgrit_resnet.studies.tune import recommend, tune

ROOT = Path(mr.__file__).resolve().parents[1]
cfg = mr.load_config(ROOT / "examples" / "peaks.toml", overrides={"network.depth": 128})
t = cfg.train
print(f"one-shot {t.fwd_iters}/{t.bwd_iters}, N = {cfg.network.depth}, relaxation {cfg.mgrit.relax}")

rows = tune(cfg, ranks=32, levels=[2, 3, 4], coarsening=[2, 4], steps=8, rounds=1)
for r in rows:
    flag = "Pareto" if r.pareto else ""
    print(f"{r.describe():<34} {r.time * 1e3:7.2f} ms  speedup {r.speedup:5.2f}  grad error {r.grad_error:.2e}  {flag}")

# %%
# The Pareto front holds the hierarchies that no other beats in both time and
# error. Which one to take depends on how much gradient error training
# tolerates; :func:`~mgrit_resnet.studies.tune.recommend` returns the fastest under a
# bound.

for bound in (0.2, 0.1, 0.05):
    chosen = recommend(rows, bound)
    print(f"error <= {bound}: " + ("none" if chosen is None else f"{chosen.describe()}, {chosen.time * 1e3:.2f} ms"))

fig, ax = plt.subplots(figsize=(6.5, 4))
ax.scatter([r.time * 1e3 for r in rows], [r.grad_error for r in rows])
front = sorted((r for r in rows if r.pareto), key=lambda r: r.time)
ax.plot([r.time * 1e3 for r in front], [r.grad_error for r in front], "--", color="tab:orange", label="Pareto front")
for r in rows:
    ax.annotate(f"{r.levels}L m{r.coarsening}", (r.time * 1e3, r.grad_error), textcoords="offset points", xytext=(4, 4), fontsize=8)
ax.set_yscale("log")
ax.set(xlabel="predicted step at P = 32 [ms]", ylabel="relative gradient error", title="one-shot step, N = 128")
ax.grid(True, which="both", alpha=0.3)
ax.legend()
fig.tight_layout()
plt.show()

# %%
# The errors here are those of warm starts four steps old (four batches
# cycled). In training a batch returns once per epoch, after more optimiser
# steps, so the error there can be larger: check the hierarchy you pick with
# the training itself (``track_grad_error``, or the accuracy it reaches), and
# raise ``train.fwd_iters`` / ``train.bwd_iters`` if no hierarchy is accurate
# enough.
