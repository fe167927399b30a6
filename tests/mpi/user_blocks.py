"""User blocks on the general path vs their serial twin at the rank count this runs with.

Rank 0 writes a JSON report to argv[1]: for every case the largest relative
differences of logits, parameter gradients and input gradient, whether they
are bitwise equal and the solver statistics; a one-shot warm-started case;
the construction checks' messages on every rank.
"""

import json
import sys

import torch
from mpi4py import MPI
from torch import nn

import mgrit_resnet as mr
from mgrit_resnet.nn import LayerParallel, ODEResNet

comm = MPI.COMM_WORLD
mr.comm.install_abort_on_error(comm)
rank = comm.Get_rank()
torch.set_default_dtype(torch.float64)


class Scaled(nn.Module):
    """``tanh(conv(x)) * scale`` with a non-trainable per-channel buffer."""

    def __init__(self, layer):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 4).view(1, 4, 1, 1) * (1 + 0.1 * layer))

    def forward(self, x):
        return torch.tanh(self.conv(x)) * self.scale


BLOCKS = {
    "conv": lambda n: nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 4, 3, padding=1)),
    "bottleneck": lambda n: nn.Sequential(
        nn.Conv2d(4, 2, 1), nn.GroupNorm(1, 2), nn.Tanh(), nn.Conv2d(2, 2, 3, padding=1), nn.GroupNorm(2, 2), nn.Tanh(), nn.Conv2d(2, 4, 1)
    ),
    "mlp": lambda n: nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 4)),
    "buffer": Scaled,
}


def ends(name):
    torch.manual_seed(11)
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 4)), nn.Linear(4, 3)
    return nn.Conv2d(1, 4, 3, padding=1), nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


CASES = {
    "conv_N11_L1": ("conv", 11, dict(levels=1)),
    "conv_N13_L3_m2": ("conv", 13, dict(levels=3, coarsening=2, tol=1e-13)),
    "bottleneck_N7_L2_m2": ("bottleneck", 7, dict(levels=2, coarsening=2, tol=1e-13)),
    "bottleneck_N13_L1": ("bottleneck", 13, dict(levels=1)),
    "mlp_N13_L3_m2_F": ("mlp", 13, dict(levels=3, coarsening=2, cycle="F", tol=1e-13)),
    "mlp_N11_L1": ("mlp", 11, dict(levels=1)),
    "buffer_N11_L2_m3": ("buffer", 11, dict(levels=2, coarsening=3, tol=1e-13)),
    "buffer_N7_L1": ("buffer", 7, dict(levels=1)),
    # Mean coarse blocks (parameters and buffers averaged); 13 layers: the adjoint's coarse intervals are not the forward's.
    "bottleneck_N13_L3_m2_mean": ("bottleneck", 13, dict(levels=3, coarsening=2, tol=1e-13, coarse_weights="mean")),
    "buffer_N11_L2_m3_mean": ("buffer", 11, dict(levels=2, coarsening=3, tol=1e-13, coarse_weights="mean")),
}


def batch(seed=1, size=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((size, 1, 4, 4), generator=g), torch.randint(0, 3, (size,), generator=g)


def rel(a, b):
    a, b = a.detach(), b.detach()
    scale = float(b.abs().max())
    return float((a - b).abs().max()) / (scale if scale > 0 else 1.0)


def network(name, depth, comm=None, **options):
    opening, closing = ends(name)
    kw = dict(block=BLOCKS[name], depth=depth, t_final=1.5, opening=opening, closing=closing, seed=5)
    return ODEResNet(**kw) if comm is None else LayerParallel(**kw, comm=comm, **options)


def compare(name, depth, options):
    x, y = batch()
    net = network(name, depth)
    xs = x.clone().requires_grad_()
    out_s = net(xs)
    torch.nn.functional.cross_entropy(out_s, y).backward()
    par = network(name, depth, comm, **options)
    xp = x.clone().requires_grad_()
    out_p = par(xp)
    torch.nn.functional.cross_entropy(out_p, y).backward()
    grads, params = par.full_grad_dict(), par.full_state_dict()
    serial = {k: p.grad for k, p in net.named_parameters()}
    return {
        "output": rel(out_p, out_s),
        "grad": max(rel(grads[k], serial[k]) for k in serial),
        "input_grad": rel(xp.grad, xs.grad),
        "bitwise": bool(
            torch.equal(out_p, out_s) and all(torch.equal(grads[k], serial[k]) for k in serial) and torch.equal(xp.grad, xs.grad)
        ),
        "same_keys": list(grads) == list(serial) and list(params) == list(net.state_dict()),
        "same_init": all(torch.equal(params[k], v) for k, v in net.state_dict().items()),
        "fwd_converged": par.stats.forward["converged"],
        "adj_converged": par.stats.adjoint["converged"],
        "fwd_iterations": par.stats.forward["iterations"],
        "adj_iterations": par.stats.adjoint["iterations"],
        "predict": rel(par.predict(x), out_s),
    }


report = {"ranks": comm.Get_size(), "cases": {name: compare(*case) for name, case in CASES.items()}}

# One-shot, warm-started: two steps on the same batch key.
x, y = batch(seed=2)
par = network("conv", 13, comm, levels=3, coarsening=2, fwd_iters=2, bwd_iters=1, warm_start=True, track_grad_error=True)
optimizer = torch.optim.SGD(par.parameters(), lr=0.05)
errors = []
for _ in range(2):
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(par(x, key=0), y).backward()
    optimizer.step()
    errors.append(par.stats.grad_error)
report["one_shot"] = {"errors": errors, "warm_keys": list(par.warm_state_dict())}

# One coarse pass and one fine sweep: the error is the coarse steps' own, first block against the mean block.
coarse = {}
for weights in ("first", "mean"):
    par = network(
        "conv", 13, comm, levels=2, coarsening=4, relax="F", skip_first_down=True, fwd_iters=1, bwd_iters=1,
        track_grad_error=True, coarse_weights=weights,
    )  # fmt: skip
    torch.nn.functional.cross_entropy(par(x), y).backward()
    coarse[weights] = par.stats.grad_error
report["coarse_weights"] = coarse

# The same pass warm-started: each call on the batch takes the last one's coarse right-hand side (a parareal iteration).
par = network(
    "conv", 13, comm, levels=2, coarsening=4, relax="F", skip_first_down=True, fwd_iters=1, bwd_iters=1,
    track_grad_error=True, coarse_weights="mean", warm_start=True,
)  # fmt: skip
lagged = []
for _ in range(3):
    torch.nn.functional.cross_entropy(par(x, key=0), y).backward()
    lagged.append(par.stats.grad_error)
report["lagged_pass"] = lagged


# Construction checks: a bad block on the last rank's last layer is an error on every rank.
def bad_block(kind, depth=11):
    def make(n):
        if n < depth - 1:
            return BLOCKS["conv"](n)
        if kind == "batchnorm":
            return nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
        if kind == "raises":
            raise RuntimeError("no block here")
        if kind == "reshapes":
            return nn.Conv2d(4, 8, 3, padding=1)
        return "not a module"

    return make


messages = {}
for kind in ("batchnorm", "raises", "not_module", "reshapes"):
    opening, closing = ends("conv")
    try:
        par = LayerParallel(
            block=bad_block(kind), depth=11, t_final=1.0, opening=opening, closing=closing, comm=comm, levels=2, input_shape=(1, 4, 4)
        )
        messages[kind] = None
    except (ValueError, TypeError) as error:
        messages[kind] = f"{type(error).__name__}: {error}"
report["errors"] = comm.allgather(messages)

if rank == 0:
    with open(sys.argv[1], "w") as f:
        json.dump(report, f, indent=1)
