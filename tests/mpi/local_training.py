"""Block-wise local training of the tiny config under every schedule at this rank count.

Rank 0 writes argv[1]: per schedule, the metrics without timings and the final network and heads.
"""

import sys

import torch
from mpi4py import MPI

import mgrit_resnet as mr
from mgrit_resnet.training import local, train

TIMES = ("epoch_time", "bytes_sent")
comm = MPI.COMM_WORLD
mr.comm.install_abort_on_error(comm)
out = {}
for schedule in ("parallel", "sequential", "multilap"):
    overrides = {"train.strategy": "trgl", "train.blocks": 4, "train.local_schedule": schedule, "train.epochs": 2, "train.tau": 0.05}
    cfg = mr.load_config("examples/tiny_train.toml", overrides)
    prepared = local.prepare(cfg, comm)
    result = train(cfg, comm, prepared=prepared)
    network, heads = prepared[0].full_state()
    on_root = prepared[0].full_state(root_only=True)  # what a checkpoint takes
    same = (
        on_root is None
        if comm.Get_rank()
        else all(
            list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want) for got, want in zip(on_root, (network, heads))
        )
    )
    metrics = [{k: v for k, v in r.items() if k not in TIMES} for r in result.metrics]
    out[schedule] = {"metrics": metrics, "summary": result.summary, "network": network, "heads": heads, "root_only": comm.allgather(same)}
# Two data groups, each holding all blocks on half the ranks and taking half of every batch.
if comm.Get_size() % 2 == 0:
    overrides = {"train.strategy": "trgl", "train.blocks": 4, "train.local_schedule": "multilap", "train.epochs": 2, "train.tau": 0.05}
    cfg = mr.load_config("examples/tiny_train.toml", {**overrides, "train.data_parallel": 2})
    prepared = local.prepare(cfg, comm)
    result = train(cfg, comm, prepared=prepared)
    network, heads = prepared[0].full_state()
    metrics = [{k: v for k, v in r.items() if k not in TIMES} for r in result.metrics]
    out["data_parallel"] = {"metrics": metrics, "summary": result.summary, "network": network, "heads": heads}
if comm.Get_rank() == 0:
    torch.save(out, sys.argv[1])
