"""The ranks as data groups times layer-ranks."""

from __future__ import annotations

from typing import Any

import numpy as np

from .mpi import backend_for, split


def layer_ranks(size: int, data_parallel: int, batch_size: int) -> int:
    """The ranks per data group when ``size`` ranks form ``data_parallel`` groups sharing batches of ``batch_size``.

    Raises
    ------
    ValueError
        When ``data_parallel`` does not divide ``size``, or a batch has fewer rows than there are groups.
    """
    if size % data_parallel:
        raise ValueError(f"train.data_parallel must divide the number of ranks ({size}); got {data_parallel}")
    if batch_size < data_parallel:
        raise ValueError(f"train.batch_size ({batch_size}) must be at least train.data_parallel ({data_parallel})")
    return size // data_parallel


class RankGroups:
    """The ranks as ``D`` data groups of ``P / D`` layer-ranks; each group takes a share of every batch of ``batch_size``."""

    def __init__(self, comm: Any, data_parallel: int, batch_size: int) -> None:
        size = 1 if comm is None else comm.Get_size()
        rank = 0 if comm is None else comm.Get_rank()
        self.size, self.rank, self.data_parallel = size, rank, data_parallel
        self.layer_ranks = layer_ranks(size, data_parallel, batch_size)
        self.group = rank // self.layer_ranks
        layer_comm = split(comm, self.group, rank) if data_parallel > 1 else comm
        data_comm = split(comm, rank % self.layer_ranks, rank) if data_parallel > 1 else None
        self.layer_comm = layer_comm if self.layer_ranks > 1 else None
        self.world = backend_for(comm)
        self.data = backend_for(data_comm)

    def share(self, rows: Any) -> Any:
        """This group's part of ``rows`` (the groups' parts in order make up ``rows``)."""
        return np.array_split(rows, self.data_parallel)[self.group]
