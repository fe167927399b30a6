"""What the epoch loop needs from a training strategy, and the pieces the strategies share.

A strategy (:mod:`.whole`: ``serial``, ``exact``, ``one_shot``; :mod:`.local`:
``local``, ``trgl``) is built from what its :meth:`Strategy.prepare` made
(the checked config's network, data and rank groups) and then driven by
:func:`mgrit_resnet.training.loop.train`, row by row of its epoch plan:
train an epoch, report its metrics, give its state to the checkpoint. The
loop owns everything else: resume, the output folder, the summary.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..comm.groups import RankGroups
from . import checkpoint, resume
from .checks import check
from .data import Dataset

EVAL_BATCH = 500  # rows per evaluation pass: bounds the memory of evaluating a whole data set


class Strategy(ABC):
    """One way to train the network; the same object on every rank (SPMD), every call collective unless said otherwise.

    Parameters
    ----------
    cfg
        A validated config whose ``train.strategy`` this class implements.
    prepared
        What :meth:`prepare` returned.

    Attributes
    ----------
    blockwise
        Whether the checkpoints are block-wise ones (:func:`.checkpoint.load`'s ``local``).
    groups
        The ranks as data groups times layer-ranks.
    dataset
        The training and validation data (:class:`~.data.Dataset`).
    plan
        One entry per metrics row, in order: the epochs (whole network), or
        every stage's epochs (block-wise).
    """

    blockwise: ClassVar[bool]
    groups: RankGroups
    dataset: Dataset
    plan: list[Any]

    @classmethod
    def prepare(cls, cfg: Any, comm: Any, seed: int | None = None, resume_from: str | Path | None = None, data: Any = None) -> tuple:
        """:func:`~.checks.check` the config for this job's ranks, then build this rank's network and load the data.

        Parameters
        ----------
        cfg
            A validated config.
        comm
            An mpi4py communicator, or ``None`` for one rank.
        seed
            The network seed (default ``train.seed``).
        resume_from
            A checkpoint to check, too: one this run can continue from.
        data
            Data given from Python in place of the ``[data]`` set (see :func:`~.data.load_dataset`).

        Raises
        ------
        ValueError
            On anything :func:`~.checks.check` refuses, or a checkpoint this run cannot continue: one whose
            config differs in a key that may not change on resume (:func:`.resume.check_config`) or whose
            tensors do not fit the model built (:func:`.resume.check_shapes`).
        """
        size = 1 if comm is None else comm.Get_size()
        check(cfg, size, data_given=data is not None)
        saved = None
        if resume_from is not None:
            saved = cls.resumable(cfg, size // cfg.train.data_parallel, resume_from, mmap=True)
            resume.check_config(cfg, saved, resume_from, cls.blockwise)
        prepared = cls.build(cfg, comm, cfg.train.seed if seed is None else seed, data)
        if saved is not None:
            resume.check_shapes(saved, cls.full_shapes(prepared), resume_from)
        return prepared

    @classmethod
    @abstractmethod
    def full_shapes(cls, prepared: tuple) -> dict[str, tuple[int, ...]]:
        """Collective: name -> shape of every tensor of the whole model that :meth:`build` made (as a checkpoint holds them)."""

    @classmethod
    @abstractmethod
    def build(cls, cfg: Any, comm: Any, seed: int, data: Any = None) -> tuple:
        """This rank's network, the data (``data``, when given from Python) and the rank groups of a checked config
        (what the constructor takes)."""

    @classmethod
    def resumable(cls, cfg: Any, layer_ranks: int, path: str | Path, mmap: bool = False) -> dict[str, Any]:
        """The checkpoint at ``path``, checked to be one that this config continues on ``layer_ranks`` ranks per data group."""
        return checkpoint.load(path, local=cls.blockwise, mmap=mmap)

    @abstractmethod
    def restore(self, saved: dict[str, Any]) -> None:
        """Take this rank's parameters, optimiser and schedule states from a checkpoint :meth:`resumable` returned."""

    @abstractmethod
    def train_epoch(self, row: int) -> Iterator[dict[str, Any]]:
        """Train the epoch of ``plan[row]``; yield after every optimiser step its ``loss`` (and solver statistics)."""

    @abstractmethod
    def end_epoch(self, row: int) -> dict[str, Any]:
        """The metrics of the epoch just trained, in the order of ``metrics.jsonl`` (after ``epoch``, before ``epoch_time``)."""

    def solver_stats(self) -> dict[str, Any]:
        """The metrics after ``bytes_sent``: the last step's solver statistics (none by default); not collective."""
        return {}

    @property
    @abstractmethod
    def steps(self) -> int:
        """Optimiser steps per epoch."""

    @property
    @abstractmethod
    def bytes_sent(self) -> int:
        """Bytes this rank has sent so far; not collective."""

    @property
    @abstractmethod
    def owned_layers(self) -> range:
        """The residual layers this rank holds; not collective."""

    @abstractmethod
    def state(self) -> dict[str, Any] | None:
        """This strategy's part of the checkpoint (keys of the checkpoint format) on rank 0, ``None`` elsewhere."""

    @abstractmethod
    def final(self) -> tuple[float | None, float | None, dict[str, Any]]:
        """The trained network's training and validation accuracy, and this strategy's own summary keys."""

    def close(self) -> None:  # noqa: B027  (optional: most strategies hold nothing open)
        """Release what the strategy holds open (message channels); called once after the summary."""


def sum_over_data_groups(groups: RankGroups, params: list[torch.nn.Parameter], loss: float, right: int) -> tuple[float, int]:
    """Each group's loss carries the weight of its share, so summing gives the whole batch's mean and gradient."""
    if groups.data_parallel == 1:
        return loss, right
    flat = torch.cat([p.grad.reshape(-1) for p in params] + [torch.tensor([loss, float(right)], dtype=params[0].dtype)]).cpu()
    groups.data.allreduce_buffer(flat)
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    return float(flat[-2]), int(round(float(flat[-1])))
