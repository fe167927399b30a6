"""Gradient of one global batch at this rank count with ``train.data_parallel = argv[2]``.

Rank 0 writes argv[1]: the whole-network gradient, the loss, and whether the
replicated parameters' gradients are identical on every rank.
"""

import sys

import torch
from mpi4py import MPI

import mgrit_resnet as mr
from mgrit_resnet.training.loop import prepare
from mgrit_resnet.training.whole import batch_gradient

comm = MPI.COMM_WORLD
mr.comm.install_abort_on_error(comm)
overrides = {"train.data_parallel": int(sys.argv[2]), "train.strategy": sys.argv[3], "mgrit.tol": 1e-13}
cfg = mr.load_config("examples/tiny_train.toml", overrides)
groups, dataset, model = prepare(cfg, comm)
params = [p for _, p in model.named_parameters()]
index = dataset.batches(0, 40, 0)[0]
loss, right = batch_gradient(groups, model, params, dataset.train_x, dataset.train_y, index, key=0)
grads = model.module.full_grad_dict() if model.parallel else {k: p.grad for k, p in model.named_parameters()}
replicated = {k: p.grad.clone() for k, p in model.named_parameters() if not k.startswith("layers.")}
everyone = comm.allgather(replicated)
identical = all(torch.equal(other[k], replicated[k]) for other in everyone for k in replicated)
losses = comm.allgather(loss)
if comm.Get_rank() == 0:
    torch.save({"grads": grads, "loss": loss, "same_loss": len(set(losses)) == 1, "replicated_identical": identical}, sys.argv[1])
