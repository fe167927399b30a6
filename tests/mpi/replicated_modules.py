"""The replicated modules at the rank count this runs with: what the opening, the closing and the transitions may hold.

Rank 0 writes a JSON report to argv[1]. For a one-stage user network
(``LayerParallel``) and a network of stages (``StagedParallel``) whose opening
holds BatchNorm in training mode and whose closing holds dropout: with every
rank's torch generator seeded alike, whether the logits, the opening's running
buffers and every gradient of the replicated modules are the same on every
rank and bitwise the serial twin's; with generators seeded by rank, whether the
logits differ between ranks. And the message every rank raises for a
transition that holds dropout.
"""

import copy
import json
import sys

import torch
from mpi4py import MPI
from torch import nn

import mgrit_resnet as mr
from mgrit_resnet.nn import LayerParallel, ODEResNet, Stage, StagedParallel, StagedResNet

comm = MPI.COMM_WORLD
mr.comm.install_abort_on_error(comm)
rank, size = comm.Get_rank(), comm.Get_size()
torch.set_default_dtype(torch.float64)


def make_block(n):
    return nn.Sequential(nn.Linear(5, 5), nn.Tanh())


def ends():
    """An opening with batch statistics (training mode) and a closing with dropout, the same on every rank."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5)), nn.Sequential(nn.Dropout(0.5), nn.Linear(5, 3))


def one_stage(opening, closing, comm=None):
    kw = dict(block=make_block, depth=5, t_final=1.0, opening=opening, closing=closing, seed=1)
    return ODEResNet(**kw) if comm is None else LayerParallel(**kw, comm=comm, levels=1)


def staged(opening, closing, comm=None, transition=None):
    torch.manual_seed(4)
    stages = [Stage(5, 1.0, kind="dense", width=5), Stage(5, 1.0, block=make_block)]
    transitions = [nn.Linear(5, 5) if transition is None else transition]
    kw = dict(opening=opening, closing=closing, seed=1, input_shape=(4,))
    return StagedResNet(stages, transitions, **kw) if comm is None else StagedParallel(stages, transitions, **kw, comm=comm, levels=1)


x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
y = torch.tensor([0, 1, 2, 0, 1, 2])


def step(net, seed):
    """Seed torch's global generator, one forward and backward: logits, running mean of the opening, replicated gradients."""
    torch.manual_seed(seed)
    logits = net(x)
    nn.functional.cross_entropy(logits, y).backward()
    grads = {f"opening.{k}": p.grad.clone() for k, p in net.opening.named_parameters()}
    grads |= {f"closing.{k}": p.grad.clone() for k, p in net.closing.named_parameters()}
    return logits.detach(), net.opening[1].running_mean.clone(), grads


def same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return torch.equal(a, b)


report = {"size": size}
for name, build in (("one_stage", one_stage), ("staged", staged)):
    opening, closing = ends()
    twin = build(copy.deepcopy(opening), copy.deepcopy(closing))
    par = build(opening, closing, comm)
    mine = step(par, 11)  # the same seed on every rank
    every = comm.allgather(mine)
    serial = step(twin, 11)
    fresh = build(*ends(), comm)
    by_rank = comm.allgather(step(fresh, 100 + rank)[0])  # seeded by rank: each rank draws its own mask
    report[name] = {
        "ranks_agree": all(all(same(a, b) for a, b in zip(every[0], other)) for other in every),
        "serial_twin": all(same(a, b) for a, b in zip(mine, serial)),
        "buffers_moved": not torch.equal(mine[1], torch.zeros(5)),
        "by_rank_differ": size > 1 and not torch.equal(by_rank[0], by_rank[1]),
    }

messages = {}
for kind, module in (("dropout", nn.Sequential(nn.Linear(5, 5), nn.Dropout(0.2))), ("batchnorm", nn.Sequential(nn.BatchNorm1d(5)))):
    try:
        staged(*ends(), comm, transition=module)
        messages[kind] = None
    except ValueError as error:
        messages[kind] = f"{type(error).__name__}: {error}"
report["messages"] = comm.gather(messages)
if rank == 0:
    with open(sys.argv[1], "w") as f:
        json.dump(report, f, indent=2)
