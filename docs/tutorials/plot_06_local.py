"""
Block-wise local training: does TRGL remove the stagnation?
===========================================================

``train.strategy = "local"`` trains the network's residual layers in blocks,
each with its own auxiliary head and no gradient crossing a block boundary;
``"trgl"`` adds a kinetic-energy penalty on every residual displacement
(:doc:`../guide/local`). Trained greedily one block after the other
(``train.local_schedule = "sequential"``), ``local`` tends to *stagnate*: later
blocks add little or even lose accuracy. This tutorial trains both on the
digits data set (20 residual layers in 4 blocks, the same seed and budget) and
plots the validation accuracy of every block's head.
"""

from pathlib import Path

import matplotlib.pyplot as plt

import mgrit_resnet as mr
from mgrit_resnet.training import train

ROOT = Path(mr.__file__).resolve().parents[1]
overrides = {"network.depth": 20, "train.blocks": 4, "train.local_schedule": "sequential"}

# %%
# One run per strategy, on one rank (the result is the same at every rank
# count: a rank holds one or more whole blocks).

runs = {}
for strategy in ("local", "trgl"):
    cfg = mr.load_config(ROOT / "examples" / "digits.toml", overrides={**overrides, "train.strategy": strategy})
    runs[strategy] = train(cfg)
    s = runs[strategy].summary
    heads = " / ".join(f"{a:.3f}" for a in s["head_val_accuracy"])
    print(f"{strategy:>5}: final network {s['val_accuracy']:.4f}; heads of blocks 0-3: {heads}")

# %%
# Left, the heads at the end of training, block by block: with ``local`` the
# deeper heads are no better than the first ones; the kinetic penalty of
# ``trgl`` keeps the early blocks from fitting the data on their own, and the
# accuracy rises with depth. Right, each head while its block trains
# (``local`` dashed, ``trgl`` solid, one colour per block).

fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
for strategy, result in runs.items():
    left.plot(range(4), result.summary["head_val_accuracy"], "o-", label=strategy)
    for k in range(4):  # block k's head while block k trains (its stage of the sequential schedule)
        rows = [r for r in result.metrics if k in r["blocks_trained"]]
        style = "-" if strategy == "trgl" else "--"
        label = f"{strategy}" if k == 0 else None
        right.plot([r["progress"] for r in rows], [r["head_val_accuracy"][k] for r in rows], style, color=colours[k], label=label)
left.set(xlabel="block k", ylabel="validation accuracy of head k", title="heads at the end", xticks=range(4))
right.set(xlabel="share of the training budget", ylabel="validation accuracy", title="head k while block k trains (colour: k)")
for ax in (left, right):
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
