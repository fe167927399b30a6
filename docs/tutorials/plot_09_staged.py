"""
A network of stages
===================

Real residual networks are stages of different width and resolution joined by
transitions (a strided convolution, a channel change), not one ODE of constant
width. :class:`~mgrit_resnet.nn.StagedParallel` trains such a network
layer-parallel: each stage is one MGRIT solve over *all* ranks (every rank
holds its share of every stage's layers), and the transitions, the opening and
the closing are replicated and run between two solves, so no coarse grid can
skip a transition (:ref:`staged-networks`).

This tutorial builds a small three-stage convolutional network on MNIST
(5,000 images) from a config: 4, 8 and 16 channels at 28x28, 14x14 and 7x7,
four layers per stage. It checks the network on two ranks against its serial
twin :class:`~mgrit_resnet.nn.StagedResNet`, then trains it briefly, serial and
one-shot, on 1,000 images. The full-size run is ``examples/staged_mnist.toml``
(8, 16 and 32 channels, eight layers per stage, 4,000 images, ten epochs)::

    mgrit-resnet train examples/staged_mnist.toml --set train.strategy=serial --out runs/staged_serial
    mpiexec -n 2 mgrit-resnet train examples/staged_mnist.toml --out runs/staged_one_shot
    mgrit-resnet predict examples/staged_mnist.toml   # the predicted step time at 1 ... 1024 ranks
"""

from pathlib import Path

import matplotlib.pyplot as plt
import torch

import mgrit_resnet as mr
from mgrit_resnet.comm.threads import ThreadWorld
from mgrit_resnet.nn import parallel_from_config, serial_from_config
from mgrit_resnet.training.data import load_dataset

ROOT = Path(mr.__file__).resolve().parents[1]

# %%
# The network from the config
# ---------------------------
# ``network.depths`` and ``network.widths`` (one entry per stage) make a
# network of built-in stages: a 3x3 convolution opens, a strided 3x3
# convolution (halving the resolution) joins two stages, and global average
# pooling with a linear classifier closes. ``serial_from_config`` and
# ``parallel_from_config`` build the serial and the layer-parallel network of
# any ``[network]``, of one stage or of several. (tanh learns faster than ReLU
# in the few steps below.)

overrides = {
    "network.depths": [4, 4, 4],
    "network.widths": [4, 8, 16],
    "network.activation": "tanh",
    "mgrit.coarsening": 2,
    "data.n_train": 1000,
    "data.n_val": 500,
    "train.lr": 1e-2,
    "train.batch_size": 20,
}
cfg = mr.load_config(ROOT / "examples" / "staged_mnist.toml", overrides=overrides)
data = load_dataset(cfg.data, cfg.network)

net = serial_from_config(cfg.network, seed=0)
with torch.no_grad():
    state = net.opening(data.train_x[:1].float())
    for s, stage in enumerate(net.stages):
        print(f"stage {s}: {net.depths[s]} layers on states of shape {tuple(state.shape[1:])}")
        state = stage(state)
        if s < len(net.transitions):
            state = net.transitions[s](state)

# %%
# Two ranks against the serial twin
# ---------------------------------
# :class:`~mgrit_resnet.comm.threads.ThreadWorld` runs the ranks as threads of
# this process: every thread runs the same code as a rank under ``mpiexec``,
# with the same messages (``mpiexec -n 2 mgrit-resnet verify
# examples/staged_mnist.toml --set network.dtype=float64`` makes this check
# with MPI). In float64, with the forward and adjoint solves (two levels,
# coarsening 2, F-relaxation) iterated to ``1e-13``, the logits, the gradient of the input and the gradient of every
# parameter (layers of every stage, the opening, the transitions, the
# classifier) equal those of autograd through the serial twin.

exact = cfg.with_overrides({"network.dtype": "float64", "mgrit.tol": 1e-13, "mgrit.max_iter": 50})
x, y = data.train_x[:8], data.train_y[:8]
serial = serial_from_config(exact.network, seed=0)
x_serial = x.clone().requires_grad_()
logits_serial = serial(x_serial)
torch.nn.functional.cross_entropy(logits_serial, y).backward()


def rank(backend):
    par = parallel_from_config(exact.network, exact.mgrit, comm=backend, seed=0)
    x_par = x.clone().requires_grad_()
    logits = par(x_par)
    torch.nn.functional.cross_entropy(logits, y).backward()
    return logits.detach(), x_par.grad, par.full_grad_dict(), par.stats


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max())


for r, (logits, input_grad, grads, stats) in enumerate(ThreadWorld(2).run(rank)):
    worst = max(relative(grads[name], p.grad) for name, p in serial.named_parameters())
    differences = (relative(logits, logits_serial), relative(input_grad, x_serial.grad), worst)
    print(
        f"rank {r}: {len(grads)} parameter tensors; max relative difference: logits {differences[0]:.1e}, "
        f"input gradient {differences[1]:.1e}, parameter gradients {differences[2]:.1e}; "
        f"MGRIT iterations (the most of any stage): forward {stats.forward['iterations']}, adjoint {stats.adjoint['iterations']}"
    )
    assert max(differences) < 1e-10

# %%
# Training it, serial and one-shot
# --------------------------------
# The same loop for both networks, with the same initial parameters and the
# same batches: autograd through the serial twin, and one-shot on two ranks
# (two forward and one adjoint MGRIT iteration per stage and step,
# warm-started per batch). Validation accuracy is that of the exact network
# (``par.predict``: layer-serial propagation, pipelined over the ranks).


def train(model, parallel: bool, epochs: int = 2) -> tuple[list[float], float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    losses = []
    for epoch in range(epochs):
        for b, batch in enumerate(data.batches(epoch, cfg.train.batch_size, cfg.train.seed)):
            optimizer.zero_grad(set_to_none=True)
            xb, yb = data.train_x[batch].float(), data.train_y[batch]
            loss = torch.nn.functional.cross_entropy(model(xb, key=b) if parallel else model(xb), yb)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    with torch.no_grad():
        logits = model.predict(data.val_x.float()) if parallel else model(data.val_x.float())
    return losses, float((logits.argmax(1) == data.val_y).float().mean())


def one_shot(backend):
    par = parallel_from_config(cfg.network, cfg.mgrit, comm=backend, seed=0, fwd_iters=2, bwd_iters=1, warm_start=True)
    return train(par, parallel=True)


curves = {"serial": train(serial_from_config(cfg.network, seed=0), parallel=False)}
rank_results = ThreadWorld(2).run(one_shot)
assert rank_results[0] == rank_results[1]  # the loss and the accuracy are the same on every rank
curves["one-shot, 2 ranks"] = rank_results[0]
for name, (losses, accuracy) in curves.items():
    print(f"{name}: {len(losses)} steps, last loss {losses[-1]:.3f}, validation accuracy {accuracy:.3f}")

fig, ax = plt.subplots(figsize=(6.5, 3.6))
window = 10
for name, (losses, _) in curves.items():
    smooth = [sum(losses[max(0, k - window + 1) : k + 1]) / len(losses[max(0, k - window + 1) : k + 1]) for k in range(len(losses))]
    (line,) = ax.plot(smooth, label=f"{name} ({window}-step mean)")
    ax.plot(losses, color=line.get_color(), alpha=0.25, lw=0.8)
ax.set(xlabel="optimisation step", ylabel="training loss", title="three stages, 4 / 8 / 16 channels, 4 layers each")
ax.grid(True, alpha=0.3)
ax.legend()
fig.tight_layout()
plt.show()

# %%
# The one-shot curve follows the serial one: with two forward and one adjoint
# iteration per step, warm-started, its gradients are close to the exact ones
# (``track_grad_error`` measures how close; ``mgrit-resnet tune`` weighs that
# error against the step time for a network of stages as for one stage).
