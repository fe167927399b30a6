"""
Training Peaks: serial against one-shot
=======================================

The Peaks problem classifies points of :math:`[-3, 3]^2` into five level
sets of MATLAB's ``peaks`` function. This tutorial trains the same small
ODE network twice with :func:`mgrit_resnet.training.train`: layer-serially
by autograd (``train.strategy = "serial"``) and one-shot layer-parallel
(``"one_shot"``: two forward and one adjoint MGRIT iteration per step,
warm-started per batch; :doc:`../theory/adjoint`). It is kept small enough to
run in seconds; ``examples/peaks.toml`` is the full-size run.
"""

import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import mgrit_resnet as mr
from mgrit_resnet.training import train
from mgrit_resnet.training.data import peaks_grid

settings = {
    "network.depth": 16,
    "network.t_final": 5.0,
    "network.width": 8,
    "mgrit.levels": 3,
    "mgrit.coarsening": 2,
    "mgrit.relax": ["F", "FCF"],
    "mgrit.initial_guess": "initial_value",
    "data.n_train": 1000,
    "data.n_val": 500,
    "train.epochs": 20,
    "train.lr": 0.02,
    "train.batch_size": 50,
    "train.schedule": "cosine",
}
runs = {}
out = Path(tempfile.mkdtemp())
for strategy in ("serial", "one_shot"):
    cfg = mr.load_config(overrides={**settings, "train.strategy": strategy})
    runs[strategy] = train(cfg, out=out / strategy)
    s = runs[strategy].summary
    print(f"{strategy:>8}: train accuracy {s['train_accuracy']:.3f}, validation accuracy {s['val_accuracy']:.3f}, {s['wall_time']:.1f} s")

# %%
# Both start from the same parameters (``train.seed``) and see the same
# batches. The one-shot gradient is inexact, so the two runs part ways, but
# they end at similar accuracies. Validation is always measured with the
# exact network, propagated layer-serially.

fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
for strategy, result in runs.items():
    epochs = [row["epoch"] for row in result.metrics]
    left.plot(epochs, [row["train_loss"] for row in result.metrics], "o-", ms=3, label=strategy)
    right.plot(epochs, [row["val_accuracy"] for row in result.metrics], "o-", ms=3, label=strategy)
left.set_xlabel("epoch")
left.set_ylabel("training loss")
right.set_xlabel("epoch")
right.set_ylabel("validation accuracy")
left.legend()
right.legend()
fig.suptitle("Peaks, 16 layers, 1,000 samples")
plt.show()

# %%
# In one-shot training each step does a fixed number of MGRIT iterations,
# so the solves are not converged. The metrics keep each epoch's last
# forward and adjoint residuals, a measure of how far from the exact states
# the step's gradient was computed.

one_shot = runs["one_shot"].metrics
for row in one_shot[:: max(1, len(one_shot) // 5)]:
    print(f"epoch {row['epoch']:>2}: forward residual {row['fwd_residual']:.2e}, adjoint residual {row['adj_residual']:.2e}")

# %%
# The classes of the one-shot network on a grid of :math:`[-3, 3]^2`, beside
# the true level sets. ``train`` wrote a checkpoint; its ``model`` entry loads
# into the serial twin, whatever strategy and rank count trained it.

net = mr.nn.ODEResNet.from_config(cfg.network)
net.load_state_dict(torch.load(out / "one_shot" / "checkpoint.pt", weights_only=False)["model"])
points, labels, _ = peaks_grid()
with torch.no_grad():
    predicted = net(torch.from_numpy(points).to(torch.float32)).argmax(1).numpy()
side = int(len(points) ** 0.5)
fig, axes = plt.subplots(1, 2, figsize=(8, 3.9))
for ax, classes, title in zip(axes, (labels, predicted), ("true classes", "one-shot network")):
    ax.imshow(classes.reshape(side, side), origin="lower", extent=(-3, 3, -3, 3), cmap="viridis", interpolation="nearest")
    ax.set_title(title)
    ax.set_xlabel("x")
axes[0].set_ylabel("y")
print(f"grid accuracy of the one-shot network: {(predicted == labels).mean():.3f}")
plt.show()
