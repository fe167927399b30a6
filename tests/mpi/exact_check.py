"""Exact checks of one-shot steps at this rank count; rank 0 writes argv[1] (see ``tests/test_exact_check.py``).

For each case two models are built alike and take the same steps on batch 0
(the warm start's key): a step, a move of the weights along its gradient,
then model A a checked step (``check_next``) and model B the same step
unchecked, then A's gradient again by ``exact_calls``, then both a further
step. Rank 0 writes, per case: the weights of the checked step, the batch,
A's one-shot gradient and exact error, the ``exact_calls`` gradient, and
whether A's and B's gradients were bitwise equal after the check and after the further step.
"""

import json
import sys

import torch
from mpi4py import MPI

import mgrit_resnet as mr
from mgrit_resnet.training.loop import prepare
from mgrit_resnet.training.models import loss_backward

comm = MPI.COMM_WORLD
mr.comm.install_abort_on_error(comm)
cases = json.loads(sys.argv[2])
report = {}
for name, (config, overrides) in cases.items():
    cfg = mr.load_config(config, overrides)
    prepared = [prepare(cfg, comm) for _ in range(2)]
    models, dataset = [p[2] for p in prepared], prepared[0][1]
    index = dataset.batches(0, cfg.train.batch_size, 0)[0]
    x, y = dataset.train_x[index].to(models[0].dtype), dataset.train_y[index]

    def step(model, check=False, x=x, y=y):
        model.check_next(check)
        for _, p in model.named_parameters():
            p.grad = None
        model.loss_backward(x, y, 1.0, key=0)
        return model.module.full_grad_dict()

    for model in models:
        step(model)
        with torch.no_grad():
            for _, p in model.named_parameters():
                p -= 0.05 * p.grad  # the same move on every rank: replicated gradients are identical
    state = models[0].module.full_state_dict()
    checked, unchecked = step(models[0], check=True), step(models[1])
    error = models[0].grad_error
    for _, p in models[0].named_parameters():
        p.grad = None
    with models[0].module.exact_calls():
        loss_backward(models[0].module, x, y)
    exact = models[0].module.full_grad_dict()
    after = [step(m) for m in models]
    same = lambda a, b: all(torch.equal(a[k], b[k]) for k in a)  # noqa: E731
    report[name] = {
        "state": state,
        "x": x,
        "y": y,
        "one_shot": checked,
        "grad_error": error,
        "exact": exact,
        "check_changes_nothing": same(checked, unchecked),
        "exact_calls_change_nothing": same(*after),
        "errors_everywhere": comm.allgather(error),
    }
if comm.Get_rank() == 0:
    torch.save(report, sys.argv[1])
