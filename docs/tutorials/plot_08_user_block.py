"""
Your own residual block
=======================

:class:`~mgrit_resnet.nn.LayerParallel` trains any residual branch you write
as a PyTorch module: give it ``make_block(layer) -> nn.Module`` (the branch
:math:`f_n` of layer :math:`n`, the step :math:`x_{n+1} = x_n + h f_n(x_n)`),
an opening and a closing. Its adjoint steps and parameter gradients come from
autograd on your module; nothing needs a hand-written derivative.

This tutorial takes the block of ``examples/user_block.py`` (two 3x3
convolutions with GroupNorm and a ReLU between them), checks the layer-parallel
network against its serial twin on MNIST (5,000 images) in this process and on
two MPI ranks, and then trains it one-shot on two ranks beside serial training.
The same network runs from the command line with ``[network] kind = "module"``
(``examples/user_block.toml``).
"""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import mgrit_resnet as mr
from mgrit_resnet.training.data import load_dataset

ROOT = Path(mr.__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("user_block", ROOT / "examples" / "user_block.py")
user_block = importlib.util.module_from_spec(spec)
spec.loader.exec_module(user_block)

# %%
# The builder
# -----------
# ``build(options)`` returns the three parts; ``options`` is the config's
# ``[network.options]`` table. ``make_block`` is called once per layer (only
# for the layers a rank holds), each time under a random generator seeded by
# ``(seed, layer)``: the network is the same at every rank count.

make_block, _, _ = user_block.build({"width": 4, "groups": 2})
print(make_block(0))


def parts():
    """The opening and closing, drawn afresh from one seed (each network needs its own)."""
    torch.manual_seed(0)
    _, opening, closing = user_block.build({"width": 4, "groups": 2})
    return opening.double(), closing.double()


def network(parallel: bool, **options):
    opening, closing = parts()
    common = dict(block=lambda layer: make_block(layer).double(), depth=8, t_final=1.0, opening=opening, closing=closing, seed=0)
    if parallel:
        return mr.nn.LayerParallel(**common, input_shape=(1, 28, 28), **options)
    return mr.nn.ODEResNet(**common)


# %%
# The serial twin and the layer-parallel network
# ----------------------------------------------
# Both in float64, on eight MNIST images. The layer-parallel network solves
# forward and adjoint with two-level MGRIT to a tight tolerance; with one
# level it would be bitwise the serial network.

cfg = mr.load_config(ROOT / "examples" / "user_block.toml", {"data.n_train": 100, "data.n_val": 0})
data = load_dataset(cfg.data, {"kind": "conv", "in_channels": 1, "image_size": 28, "n_classes": 10})
x, y = data.train_x[:8].double(), data.train_y[:8]

serial = network(parallel=False)
parallel = network(parallel=True, levels=2, coarsening=2, tol=1e-13, max_iter=50)
for net in (serial, parallel):
    torch.nn.functional.cross_entropy(net(x), y).backward()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max())


grads = parallel.full_grad_dict()
diffs = {name: relative(grads[name], p.grad) for name, p in serial.named_parameters()}
print(f"MGRIT iterations: forward {parallel.stats.forward['iterations']}, adjoint {parallel.stats.adjoint['iterations']}")
print(f"logits: max relative difference {relative(parallel(x), serial(x)):.2e}")
print(f"gradients: max relative difference {max(diffs.values()):.2e} over {len(diffs)} tensors")

# %%
# On two ranks
# ------------
# ``mgrit-resnet verify`` builds both networks from the config and compares
# them; with ``kind = "module"`` it takes its batch from the ``[data]`` set.

env = dict(os.environ, OMP_NUM_THREADS="1")
mpiexec = str(Path(sys.executable).parent / "mpiexec")
command = [str(Path(sys.executable).parent / "mgrit-resnet")]
overrides = ["--set", "network.dtype=float64", "--set", "mgrit.tol=1e-12", "--set", "data.n_train=100", "--set", "data.n_val=0"]
with tempfile.TemporaryDirectory() as tmp:
    report = Path(tmp) / "verify.json"
    subprocess.run(
        [mpiexec, "-n", "2", *command, "verify", "examples/user_block.toml", *overrides, "--json", str(report)],
        cwd=ROOT, env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    print(json.dumps(json.loads(report.read_text()), indent=2))

# %%
# Training it
# -----------
# One-shot on two ranks (two forward and one adjoint MGRIT iteration per step,
# warm-started per batch) against serial autograd, same network, data, seed
# and epochs (three, on 1,000 images): the two training curves.

curves = {}
with tempfile.TemporaryDirectory() as tmp:
    for name, launch, strategy in (("serial", [], "serial"), ("one-shot, 2 ranks", [mpiexec, "-n", "2"], "one_shot")):
        out = Path(tmp) / strategy
        subprocess.run(
            [*launch, *command, "train", "examples/user_block.toml", "--set", f"train.strategy={strategy}", "--set", "train.epochs=3",
             "--out", str(out)],
            cwd=ROOT, env=env, check=True, capture_output=True, text=True,
        )  # fmt: skip
        curves[name] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        summary = json.loads((out / "summary.json").read_text())
        print(f"{name}: validation accuracy {summary['val_accuracy']:.3f}, {summary['wall_time']:.1f} s")

fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.4))
for name, rows in curves.items():
    epochs = [r["epoch"] for r in rows]
    loss_ax.plot(epochs, [r["train_loss"] for r in rows], "o-", label=name)
    acc_ax.plot(epochs, [r["val_accuracy"] for r in rows], "o-", label=name)
for ax in (loss_ax, acc_ax):
    ax.set_xticks(epochs)
loss_ax.set(xlabel="epoch", ylabel="training loss", title="loss")
acc_ax.set(xlabel="epoch", ylabel="validation accuracy", title="accuracy", ylim=(0, 1))
acc_ax.legend()
fig.tight_layout()
plt.show()
