"""Block-wise local training (``local``, ``trgl``) with the ``parallel``, ``sequential`` and ``multilap`` schedules.

Each of the ``K = train.blocks`` blocks (:mod:`.blocks`) learns from its own
head's cross-entropy, with its own optimiser; its input is the previous
block's output, detached, so no gradient crosses a block boundary. ``trgl``
adds ``1 / (2 tau_k)`` times the block's kinetic energy. The ranks hold
contiguous runs of whole blocks and pass block outputs forward with buffer
sends; nothing travels backwards.

Budget: every block makes ``train.epochs`` epochs of optimiser steps (one per
batch), whatever the schedule, as the whole network does under ``serial``.

* ``parallel``: all blocks step on every batch. Block ``k`` consumes block
  ``k - 1``'s output of the same batch computed before block ``k - 1``'s update.
* ``sequential``: block ``k`` trains for all its epochs after block ``k - 1``
  finished; the earlier blocks, frozen, only compute its inputs.
* ``multilap``: ``sequential`` repeated ``train.laps`` times, each lap with a
  share of the epochs.

The arithmetic of every block does not depend on where it runs, so the
results are the same at every rank count.

A network of stages (``network.depths``) is cut so that no block straddles a
transition (:func:`.plan.block_bounds`); the first block of every later stage
starts with the transition into it (:mod:`.blocks`). The ranks still hold
contiguous runs of whole blocks, so a rank may hold layers of several stages;
what it passes on is the state of the stage its last block ends in.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from .. import comm as comm_module
from ..comm.groups import RankGroups
from ..nn.layers import resolve_device
from ..nn.spec import NetworkSpec
from . import checkpoint
from .blocks import StagedPieces, build_blocks
from .checks import check_local
from .data import Dataset, load_dataset
from .optim import load_portable_optimizer_state, make_optimizer, make_schedule, portable_optimizer_state
from .plan import block_bounds, block_taus, epoch_plan, kinetic_weight, split_evenly, stage_layers
from .strategy import EVAL_BATCH, Strategy, sum_over_data_groups

_TRAIN, _EVAL = 0, 1


class LocalTrainer:
    """This rank's blocks, their optimisers and schedules, and the pipe to its neighbours.

    With ``train.data_parallel = D`` the ranks form ``D`` groups, each holding
    all blocks and taking a share of every batch; each block's gradients are
    summed over the groups before its step, so a step is the whole batch's.

    Parameters
    ----------
    cfg
        A validated config with ``train.strategy`` ``local`` or ``trgl``.
    comm
        An mpi4py communicator, or ``None`` for one rank.
    seed
        The network seed (default ``train.seed``).
    """

    def __init__(self, cfg: Any, comm: Any, seed: int | None = None) -> None:
        self.cfg, t = cfg, cfg.train
        self.groups = RankGroups(comm, t.data_parallel, t.batch_size)
        self.backend = self.groups.world
        # The blocks' pipe and the gathers of whole-network state stay within a data group.
        self.layer_backend = self.backend if t.data_parallel == 1 else comm_module.backend_for(self.groups.layer_comm)
        self.n_blocks = check_local(cfg, self.layer_backend.size)
        seed = t.seed if seed is None else seed
        network: NetworkSpec | StagedPieces
        if cfg.network.depths:  # a network of stages: no NetworkSpec, the stages' own specs
            self.spec = None
            network = self.staged = StagedPieces(cfg.network, seed, comm_module.local_rank(self.backend))
            self.depths, device, self.dtype, shapes = network.depths, network.device, network.dtype, network.state_shapes
        else:
            self.staged = None
            network = self.spec = NetworkSpec.from_config(cfg.network)
            self.depths, self.dtype = [self.spec.depth], self.spec.torch_dtype
            device = resolve_device(self.spec, comm_module.local_rank(self.backend))
            shapes = [(self.spec.width,) if self.spec.kind == "dense" else (self.spec.width, self.spec.image_size, self.spec.image_size)]
        self.cut = block_bounds(self.depths, self.n_blocks)  # (stage, layers) of every block
        self.bounds = [layers for _, layers in self.cut]
        self.owned = split_evenly(self.n_blocks, self.layer_backend.size)
        self.mine = self.owned[self.layer_backend.rank]
        self.blocks = build_blocks(network, seed, self.cut, self.mine, device, t.head_hidden)
        taus = block_taus(t.tau, self.n_blocks) if t.strategy == "trgl" else [float("inf")] * self.n_blocks
        self.taus = taus
        self.weights = {b.index: kinetic_weight(taus[b.index]) for b in self.blocks}
        self.optimizers = {b.index: make_optimizer(t, list(b.parameters())) for b in self.blocks}
        self.schedules = {k: make_schedule(t, opt) for k, opt in self.optimizers.items()}

        def template(block: int) -> torch.Tensor:  # one row of block ``block``'s output: a state of its stage
            return torch.empty((1, *shapes[self.cut[block][0]]), dtype=self.dtype, device=device)

        self.pipe = comm_module.Pipe(self.layer_backend, template(max(self.mine.start - 1, 0)), template(self.mine.stop - 1))

    @property
    def owned_layers(self) -> range | list[range]:
        """The residual layers of this rank's blocks; of a network of stages, those of every stage (empty where none)."""
        if self.staged is not None:
            return stage_layers(self.cut, self.mine, self.depths)
        return range(self.bounds[self.mine.start].start, self.bounds[self.mine.stop - 1].stop)

    @property
    def bytes_sent(self) -> int:
        """Bytes this rank has sent: block outputs, gradient sums and the loop's collectives."""
        backends = {id(b): b for b in (self.backend, self.layer_backend, self.groups.data)}
        return sum(b.bytes_sent for b in backends.values())

    def step(self, x: torch.Tensor, y: torch.Tensor, training: tuple[int, ...], stats: np.ndarray) -> None:
        """One optimiser step of every block in ``training`` on the batch ``(x, y)``; sums go to ``stats[k]``.

        ``stats[k]`` collects (cross-entropy x rows, correct, kinetic energy x rows, rows).
        """
        last = max(training)
        if self.mine.start > last:
            return
        weight = 1.0
        if self.groups.data_parallel > 1:
            share = self.groups.share(np.arange(len(y)))
            weight = len(share) / len(y)  # the groups' losses add up to the batch mean
            x, y = x[share], y[share]
        state = x if self.mine.start == 0 else self.pipe.recv(_TRAIN, len(y))
        for block in self.blocks:
            if block.index > last:
                break
            if block.index in training:
                state = self._update(block, state, y, weight, stats)
            else:
                with torch.no_grad():
                    state = block(state)[0]
        if self.mine.stop - 1 < last:
            self.pipe.send(_TRAIN, state)

    def _update(self, block: Any, state: torch.Tensor, y: torch.Tensor, share: float, stats: np.ndarray) -> torch.Tensor:
        optimizer, weight = self.optimizers[block.index], self.weights[block.index]
        optimizer.zero_grad()
        out, logits, kinetic = block(state)
        y = y.to(logits.device)
        cross_entropy = F.cross_entropy(logits, y)
        loss = cross_entropy + weight * kinetic if weight else cross_entropy
        if share == 1:
            loss.backward()
        else:
            (share * loss).backward()
            sum_over_data_groups(self.groups, list(block.parameters()), 0.0, 0)
        optimizer.step()
        n = len(y)
        stats[block.index] += (
            float(cross_entropy.detach()) * n,
            int((logits.detach().argmax(1) == y).sum()),
            float(kinetic.detach()) * n,
            n,
        )
        return out.detach()

    @torch.no_grad()
    def accuracies(self, x: torch.Tensor, y: torch.Tensor) -> list[float] | None:
        """Collective: the accuracy of every head on ``(x, y)``, the same list on every rank."""
        if len(y) == 0:
            return None
        correct = np.zeros(self.n_blocks)
        mine_x, mine_y = x, y
        if self.groups.data_parallel > 1:  # each data group evaluates its part
            share = self.groups.share(np.arange(len(y)))
            mine_x, mine_y = x[share], y[share]
        for start in range(0, len(mine_y), EVAL_BATCH):
            rows = mine_y[start : start + EVAL_BATCH]
            state = mine_x[start : start + EVAL_BATCH] if self.mine.start == 0 else self.pipe.recv(_EVAL, len(rows))
            for block in self.blocks:
                state, logits, _ = block(state)
                correct[block.index] += int((logits.argmax(1).cpu() == rows).sum())
            if self.pipe.right is not None:
                self.pipe.send(_EVAL, state)
        return [float(v) for v in np.sum(self.backend.allgather(correct), axis=0) / len(y)]

    def end_epoch(self, training: tuple[int, ...]) -> float | None:
        """Step the schedules of the blocks that trained; the learning rate of the last of them (``None`` elsewhere)."""
        lr = None
        for k in training:
            if k in self.schedules:
                self.schedules[k].step()
                lr = self.optimizers[k].param_groups[0]["lr"]
        return lr

    def optimizer_states(self) -> tuple[dict[int, Any], dict[int, Any]]:
        """This rank's optimiser states (parameters by name) and schedule states, keyed by block."""
        optimizers = {b.index: portable_optimizer_state(self.optimizers[b.index], list(b.portable_parameters())) for b in self.blocks}
        return optimizers, {k: schedule.state_dict() for k, schedule in self.schedules.items()}

    def load_states(self, parameters: dict[str, torch.Tensor], optimizers: dict[int, Any], schedules: dict[int, Any]) -> None:
        """Take this rank's blocks, optimisers and schedules from what :meth:`full_state` and :meth:`optimizer_states` gave."""
        for block in self.blocks:
            block.load_portable(parameters)
            load_portable_optimizer_state(self.optimizers[block.index], list(block.portable_parameters()), optimizers[block.index])
            self.schedules[block.index].load_state_dict(schedules[block.index])

    def full_state(self, root_only: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
        """Collective: the network and the auxiliary heads, on every rank (``root_only``: on rank 0, ``None`` elsewhere).

        The network is keyed and ordered as ``ODEResNet.state_dict()``, or for a
        network of stages as ``StagedResNet.state_dict()`` (the transitions after
        the stages, though each block holds the transition it starts with).
        """
        mine = (
            {k: v for b in self.blocks for k, v in b.network_state().items()},
            {k: v for b in self.blocks for k, v in b.head_state().items()},
        )
        parts = self.layer_backend.gather(mine) if root_only else self.layer_backend.allgather(mine)
        if parts is None:
            return None
        network, heads = {}, {}
        for part_network, part_heads in parts:
            network.update(part_network)
            heads.update(part_heads)
        if self.staged is not None:
            network = dict(sorted(network.items(), key=lambda item: _staged_order(item[0])))
        return network, heads


class BlockWise(Strategy):
    """``local`` or ``trgl`` training, block by block (:class:`LocalTrainer`), under ``train.local_schedule``.

    A metrics row is written after every epoch of every stage of the schedule
    (``K x train.epochs`` rows for ``sequential`` and ``multilap``).

    Parameters
    ----------
    cfg
        A validated config with ``train.strategy`` ``local`` or ``trgl``.
    prepared
        ``(trainer, dataset)``, as :meth:`build` returns them.
    """

    blockwise: ClassVar[bool] = True

    @classmethod
    def build(cls, cfg: Any, comm: Any, seed: int, data: Any = None) -> tuple[LocalTrainer, Dataset]:
        return LocalTrainer(cfg, comm, seed), load_dataset(cfg.data, cfg.network, data)

    @classmethod
    def resumable(cls, cfg: Any, layer_ranks: int, path: str | Path, mmap: bool = False) -> dict[str, Any]:
        """The checkpoint at ``path``, checked to be one that this config's schedule continues."""
        plan = epoch_plan(cfg, check_local(cfg, layer_ranks))
        saved = checkpoint.load(path, local=True, mmap=mmap)
        if "optimizers" not in saved:
            raise ValueError(f"--resume: {str(path)!r} holds no optimiser states (an older version wrote it); train again without --resume")
        done = [(row["stage"], tuple(row["blocks_trained"])) for row in saved["metrics"]]
        if done != plan[: len(done)]:
            raise ValueError(
                f"--resume: {str(path)!r} follows another schedule than this config: train.local_schedule, train.epochs, "
                "train.laps and train.blocks must be those of the interrupted run (train.blocks = 0 means one block per rank: "
                "set it to resume at another rank count)"
            )
        return saved

    @classmethod
    def full_shapes(cls, prepared: tuple[LocalTrainer, Dataset]) -> dict[str, tuple[int, ...]]:
        network, heads = prepared[0].full_state()
        return {name: tuple(t.shape) for name, t in (network | heads).items()}

    def __init__(self, cfg: Any, prepared: tuple[LocalTrainer, Dataset]) -> None:
        self.cfg, t = cfg, cfg.train
        self.trainer, self.dataset = prepared
        self.groups = self.trainer.groups
        dtype = self.trainer.dtype
        self.train_x, self.val_x = self.dataset.train_x.to(dtype), self.dataset.val_x.to(dtype)
        self.batches = self.dataset.batches(0, t.batch_size, t.seed)
        self.plan = epoch_plan(cfg, self.trainer.n_blocks)
        self._stats = np.zeros((self.trainer.n_blocks, 4))

    @property
    def steps(self) -> int:
        return len(self.batches)

    @property
    def bytes_sent(self) -> int:
        return self.trainer.bytes_sent

    @property
    def owned_layers(self) -> range | list[range]:
        return self.trainer.owned_layers

    def restore(self, saved: dict[str, Any]) -> None:
        self.trainer.load_states(saved["model"] | saved["heads"], saved["optimizers"], saved["schedules"])

    def train_epoch(self, row: int) -> Iterator[dict[str, Any]]:
        t, (_, training) = self.cfg.train, self.plan[row]
        # Blocks that train together have trained equally long; that count orders their batches.
        done = sum(training[0] in trained for _, trained in self.plan[:row])
        order = np.random.default_rng([t.seed, done, 1]).permutation(len(self.batches))
        self._stats = np.zeros((self.trainer.n_blocks, 4))
        for b in order:
            self.trainer.step(self.train_x[self.batches[b]], self.dataset.train_y[self.batches[b]], training, self._stats)
            yield {"loss": _last_loss(self._stats)}

    def end_epoch(self, row: int) -> dict[str, Any]:
        backend, (stage, training) = self.groups.world, self.plan[row]
        lr = backend.allgather(self.trainer.end_epoch(training))
        stats = np.sum(backend.allgather(self._stats), axis=0)
        heads = self.trainer.accuracies(self.val_x, self.dataset.val_y)
        lr = [v for v in lr if v is not None][-1]
        block_epochs = sum(len(trained) for _, trained in self.plan[: row + 1])
        return _row(stage, training, stats, heads, lr, block_epochs / (self.trainer.n_blocks * self.cfg.train.epochs))

    def state(self) -> dict[str, Any] | None:
        """The network, the heads and every block's optimiser and schedule, keyed by block and parameter name.

        The keys do not depend on where a block runs, so any rank count loads them.
        """
        whole = self.trainer.full_state(root_only=True)  # gathered on rank 0 alone, which writes the checkpoint
        parts = self.trainer.layer_backend.gather(self.trainer.optimizer_states())
        if self.groups.rank != 0:
            return None
        network, heads = whole
        optimizers, schedules = {}, {}
        for part in parts:
            optimizers.update(part[0])
            schedules.update(part[1])
        return {"model": network, "heads": heads, "optimizers": optimizers, "schedules": schedules}

    def final(self) -> tuple[float | None, float | None, dict[str, Any]]:
        t, trainer = self.cfg.train, self.trainer
        train_heads = trainer.accuracies(self.train_x, self.dataset.train_y)
        val_heads = trainer.accuracies(self.val_x, self.dataset.val_y)
        best = None if val_heads is None else int(np.argmax(val_heads))
        extra = {
            "local_schedule": t.local_schedule,
            # a network of stages: [stage, start, stop], the layers counted within the stage
            "blocks": [[r.start, r.stop] if trainer.staged is None else [s, r.start, r.stop] for s, r in trainer.cut],
            "owned_blocks": [[r.start, r.stop] for r in trainer.owned],
            "tau": None if t.strategy == "local" else trainer.taus,
            "head_train_accuracy": train_heads,
            "head_val_accuracy": val_heads,
            "best_head": best,
            "best_head_val_accuracy": None if best is None else val_heads[best],
            "bytes_sent": self.groups.world.allgather(trainer.bytes_sent),
        }
        return None if train_heads is None else train_heads[-1], None if val_heads is None else val_heads[-1], extra

    def close(self) -> None:
        self.trainer.pipe.close()


def prepare(cfg: Any, comm: Any, seed: int | None = None, resume_from: str | Path | None = None) -> tuple[LocalTrainer, Dataset]:
    """Check the config against the ranks, build this rank's blocks and load the data: :meth:`BlockWise.prepare`."""
    return BlockWise.prepare(cfg, comm, seed, resume_from)


def _staged_order(key: str) -> tuple[int, int, int]:
    """Where ``key`` comes in ``StagedResNet.state_dict()``: the opening, the stages' layers, the transitions, the closing
    (the order within one module is kept by the stable sort)."""
    part, rest = key.split(".", 1)
    if part == "stages":
        stage, _, layer, _ = rest.split(".", 3)
        return 1, int(stage), int(layer)
    if part == "transitions":
        return 2, int(rest.split(".", 1)[0]), 0
    return (0, 0, 0) if part == "opening" else (3, 0, 0)


def _last_loss(stats: np.ndarray) -> float:
    """The running loss of the deepest block that trained on this rank (the progress bar's figure)."""
    trained = np.nonzero(stats[:, 3])[0]
    return float(stats[trained[-1], 0] / stats[trained[-1], 3]) if len(trained) else float("nan")


def _row(stage: int, training: tuple[int, ...], stats: np.ndarray, heads: list[float] | None, lr: float, progress: float) -> dict:
    """The metrics of an epoch of the blocks ``training`` (after ``epoch``), from every block's summed ``stats``."""
    k = max(training)
    rows = np.where(stats[:, 3] > 0, stats[:, 3], np.nan)
    per_block = lambda column: [None if np.isnan(v) else float(v) for v in stats[:, column] / rows]  # noqa: E731
    return {
        "stage": stage,
        "blocks_trained": list(training),
        "progress": progress,
        "train_loss": float(stats[k, 0] / stats[k, 3]),
        "train_accuracy": float(stats[k, 1] / stats[k, 3]),
        "val_accuracy": None if heads is None else heads[-1],
        "head_val_accuracy": heads,
        "block_train_loss": per_block(0),
        "block_train_accuracy": per_block(1),
        "kinetic": per_block(2),
        "lr": lr,
    }
