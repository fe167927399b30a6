"""Staged networks (StagedParallel) vs their serial twin (StagedResNet) at the rank count this runs with.

Rank 0 writes a JSON report to argv[1]: for every case the largest relative
differences of logits, input gradient and parameter gradients (transitions
included), whether they are bitwise equal, the keys and the initial network;
a one-shot warm-started case; a reload of a whole state dict; the bad-input
messages of every rank.
"""

import json
import sys

import torch
from mpi4py import MPI
from torch import nn

import mgrit_resnet as mr
from mgrit_resnet.nn import Stage, StagedParallel, StagedResNet, parallel_from_config, serial_from_config

comm = MPI.COMM_WORLD
mr.comm.install_abort_on_error(comm)
rank, size = comm.Get_rank(), comm.Get_size()
torch.set_default_dtype(torch.float64)


def conv_block(channels):
    return lambda n: nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.Tanh(), nn.Conv2d(channels, channels, 3, padding=1))


def mlp_block(n):
    return nn.Sequential(nn.LayerNorm(6), nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 6))


class Times(nn.Module):
    """``factor * module(x)``: a transition with a large effect."""

    def __init__(self, module, factor=10.0):
        super().__init__()
        self.module, self.factor = module, factor

    def forward(self, x):
        return self.factor * self.module(x)


def halving():
    """3 -> 4 channels, 4x4 -> 2x2, times 10."""
    return Times(nn.Conv2d(3, 4, 3, stride=2, padding=1))


def to_dense():
    return nn.Sequential(nn.Flatten(), nn.Linear(4 * 2 * 2, 6), nn.Tanh())


def ends(closing_in):
    return nn.Conv2d(1, 3, 3, padding=1), nn.Sequential(
        *([nn.AdaptiveAvgPool2d(1), nn.Flatten()] if closing_in == 4 else []), nn.Linear(closing_in, 3)
    )


def parts(name):
    """``(stages, transitions, opening, closing)`` of a named network; the replicated modules are drawn afresh, seeded."""
    torch.manual_seed(11)
    if name == "user":  # your own blocks: conv 3 ch at 4x4, conv 4 ch at 2x2
        stages = [Stage(7, 1.0, block=conv_block(3)), Stage(9, 1.5, block=conv_block(4))]
        opening, closing = ends(4)
        return stages, [halving()], opening, closing
    if name == "mixed":  # your own conv, built-in conv, your own MLP
        stages = [Stage(7, 1.0, block=conv_block(3)), Stage(9, 1.2, kind="conv", width=4), Stage(11, 0.8, block=mlp_block)]
        opening, closing = ends(6)
        return stages, [halving(), to_dense()], opening, closing
    if name == "builtin":  # built-in conv then built-in dense
        stages = [Stage(7, 1.0, kind="conv", width=3), Stage(9, 1.0, kind="conv", width=4), Stage(7, 1.0, kind="dense", width=6)]
        opening, closing = ends(6)
        return stages, [halving(), to_dense()], opening, closing
    raise KeyError(name)


CASES = {
    "user_L1": ("user", dict(levels=1)),
    "user_L2_m2": ("user", dict(levels=2, coarsening=2, tol=1e-13)),
    "mixed_L3_m2": ("mixed", dict(levels=3, coarsening=2, tol=1e-13)),
    "mixed_L2_m4": ("mixed", dict(levels=2, coarsening=4, tol=1e-13)),
    "builtin_L1": ("builtin", dict(levels=1)),
    "builtin_L3_m2_F": ("builtin", dict(levels=3, coarsening=2, cycle="F", tol=1e-13)),
    "config_pool2_L2_m2": ("config", dict(levels=2, coarsening=2, tol=1e-13)),
}
#: Built-in stages from a [network] table: 3 then 4 channels at 4x4 and 2x2, the closing on the final state pooled to 2x2.
CONFIG = dict(kind="conv", in_channels=1, image_size=4, depths=[7, 9], widths=[3, 4], n_classes=3, dtype="float64", head_pool=2)


def batch(seed=1, n=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, 1, 4, 4), generator=g), torch.randint(0, 3, (n,), generator=g)


def rel(a, b):
    a, b = a.detach(), b.detach()
    scale = float(b.abs().max())
    return float((a - b).abs().max()) / (scale if scale > 0 else 1.0)


def network(name, parallel, **options):
    if name == "config":
        return parallel_from_config(CONFIG, options, comm=comm, seed=5) if parallel else serial_from_config(CONFIG, seed=5)
    stages, transitions, opening, closing = parts(name)
    kw = dict(opening=opening, closing=closing, seed=5, input_shape=(1, 4, 4))
    return StagedParallel(stages, transitions, comm=comm, **kw, **options) if parallel else StagedResNet(stages, transitions, **kw)


def compare(name, options):
    x, y = batch()
    net = network(name, False)
    xs = x.clone().requires_grad_()
    out_s = net(xs)
    nn.functional.cross_entropy(out_s, y).backward()
    par = network(name, True, **options)
    xp = x.clone().requires_grad_()
    out_p = par(xp)
    nn.functional.cross_entropy(out_p, y).backward()
    grads, params = par.full_grad_dict(), par.full_state_dict()
    serial = {k: p.grad for k, p in net.named_parameters()}
    stats = par.stats
    return {
        "output": rel(out_p, out_s),
        "grad": max(rel(grads[k], serial[k]) for k in serial),
        "transition_grad": max(rel(grads[k], serial[k]) for k in serial if k.startswith("transitions.")),
        "input_grad": rel(xp.grad, xs.grad),
        "bitwise": bool(
            torch.equal(out_p, out_s) and all(torch.equal(grads[k], serial[k]) for k in serial) and torch.equal(xp.grad, xs.grad)
        ),
        "same_keys": list(grads) == list(serial) and list(params) == list(net.state_dict()),
        "same_init": all(torch.equal(params[k], v) for k, v in net.state_dict().items()),
        "converged": stats.forward["converged"] and stats.adjoint["converged"],
        "stage_count": len(stats.stages),
        "fwd_iterations": stats.forward["iterations"],
        "adj_iterations": stats.adjoint["iterations"],
        "predict": rel(par.predict(x), out_s),
        "owned_layers": comm.allgather([[r.start, r.stop] for r in par.owned_layers]),
        "depths": par.depths,
        "closing_shape": list(params[next(k for k in params if k.startswith("closing.") and k.endswith(".weight"))].shape),
    }


report = {"ranks": size, "cases": {case: compare(name, options) for case, (name, options) in CASES.items()}}

# A whole state dict (the serial twin's, changed) loads at this rank count.
net, par = network("mixed", False), network("mixed", True, levels=2)
with torch.no_grad():
    for p in net.parameters():
        p.mul_(0.5)
par.load_full_state_dict(net.state_dict())
x, _ = batch(seed=3)
on_root = par.full_state_dict(root_only=True)  # what a checkpoint takes: rank 0 alone gathers the network
report["reload"] = {
    "state": all(torch.equal(v, net.state_dict()[k]) for k, v in par.full_state_dict().items()),
    "logits": rel(par(x), net(x)),
    "root_only": comm.allgather(
        on_root is None
        if rank
        else list(on_root) == list(net.state_dict()) and all(torch.equal(v, net.state_dict()[k]) for k, v in on_root.items())
    ),
}

# One-shot, warm-started: two steps on the same batch key.
torch.manual_seed(11)
stages = [Stage(13, 1.0, block=conv_block(3)), Stage(13, 1.0, kind="conv", width=4)]
opening, closing = ends(4)
par = StagedParallel(
    stages, [halving()], opening=opening, closing=closing, seed=5, comm=comm,
    levels=3, coarsening=2, fwd_iters=2, bwd_iters=1, warm_start=True, track_grad_error=True,
)  # fmt: skip
x, y = batch(seed=2)
optimizer = torch.optim.SGD(par.parameters(), lr=0.005)  # a step small beside the transition's factor 10
errors = []
for _ in range(2):
    optimizer.zero_grad()
    nn.functional.cross_entropy(par(x, key=0), y).backward()
    optimizer.step()
    errors.append(par.stats.grad_error)
warm = par.warm_state_dict()
report["one_shot"] = {
    "errors": errors,
    "stage_errors": [s.grad_error for s in par.stats.stages],
    "warm_keys": list(warm),
    "warm_stages": len(warm[0]["stages"]),
    "warm_norm": sum(float(s.norm()) for st in warm[0]["stages"] for s in st["forward"] if s is not None),
}
par.load_warm_state_dict(warm)


# Bad input: every rank raises the same error.
def attempt(make):
    try:
        make()
        return None
    except (ValueError, TypeError) as error:
        return f"{type(error).__name__}: {error}"


def bad_fit(builtin, input_shape=None):
    """A transition to 5 channels before a stage of 4 (your own blocks, or built-in)."""
    torch.manual_seed(11)
    opening, closing = ends(4)
    second = Stage(7, 1.0, kind="conv", width=4) if builtin else Stage(7, 1.0, block=conv_block(4))
    stages = [Stage(7, 1.0, block=conv_block(3)), second]
    return StagedParallel(
        stages, [nn.Conv2d(3, 5, 3, stride=2, padding=1)], opening=opening, closing=closing, comm=comm, input_shape=input_shape
    )


def dense(depth):
    return Stage(depth, 1.0, kind="dense", width=3)


messages = {
    "fit_built": attempt(lambda: bad_fit(False, (1, 4, 4))),
    "fit_call": attempt(lambda: bad_fit(False)(batch()[0])),
    "fit_builtin_built": attempt(lambda: bad_fit(True, (1, 4, 4))),
    "fit_builtin_call": attempt(lambda: bad_fit(True)(batch()[0])),
    "shallow": attempt(lambda: StagedParallel([dense(7), dense(2 * size - 2 if size > 1 else 3)], [nn.Identity()], comm=comm)),
    "lengths": attempt(lambda: StagedParallel([dense(7)] * 3, [nn.Identity()], comm=comm)),
    "not_module": attempt(lambda: StagedParallel([dense(7)] * 2, ["scale"], comm=comm)),
}
report["errors"] = comm.allgather(messages)

if rank == 0:
    with open(sys.argv[1], "w") as f:
        json.dump(report, f, indent=1)
