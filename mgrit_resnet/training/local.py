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
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import comm as comm_module
from ..config import TORCH_OPTIMIZERS
from ..nn.layers import NetworkSpec, resolve_device
from . import checkpoint
from .blocks import block_taus, build_blocks, kinetic_weight, split_evenly
from .data import load_dataset
from .loop import EVAL_BATCH, RankGroups, TrainResult, start_output, sum_over_data_groups
from .optim import load_portable_optimizer_state, make_optimizer, make_schedule, portable_optimizer_state

_TRAIN, _EVAL = 0, 1


def check_local(cfg: Any, size: int) -> int:
    """The number of blocks ``K`` for ``size`` layer-ranks (ranks per data group), after checking the ``[train]`` keys of local training."""
    t, depth = cfg.train, cfg.network.depth
    if t.optimizer not in TORCH_OPTIMIZERS:
        raise ValueError(
            f"train.strategy = {t.strategy!r} gives every block its own optimiser: "
            f"train.optimizer must be 'sgd' or 'adam'; got {t.optimizer!r}"
        )
    blocks = t.blocks or size
    if blocks < size:
        ranks = "ranks" if t.data_parallel == 1 else "ranks per data group"
        raise ValueError(f"train.blocks ({blocks}) must be at least the number of {ranks} ({size}): every rank holds whole blocks")
    if blocks > depth:
        raise ValueError(f"train.blocks ({blocks}) must be at most network.depth ({depth}): every block holds a residual layer")
    block_taus(t.tau, blocks)
    if t.local_schedule == "multilap" and t.laps > t.epochs:
        raise ValueError(
            f"train.laps ({t.laps}) must be at most train.epochs ({t.epochs}): every lap trains every block at least one epoch"
        )
    return blocks


def stages(schedule: str, blocks: int, epochs: int, laps: int) -> list[tuple[tuple[int, ...], int]]:
    """``(blocks that train, epochs)`` in order: the whole schedule."""
    if schedule == "parallel":
        return [(tuple(range(blocks)), epochs)]
    if schedule == "sequential":
        return [((k,), epochs) for k in range(blocks)]
    return [((k,), len(share)) for share in split_evenly(epochs, laps) for k in range(blocks)]


class _Pipe:
    """Block outputs to the next rank, the previous rank's from it: one :class:`~mgrit_resnet.comm.Channel` per message shape."""

    def __init__(self, backend: Any, template: torch.Tensor) -> None:
        self.backend, self.template = backend, template
        self.left = backend.rank - 1 if backend.rank > 0 else None
        self.right = backend.rank + 1 if backend.rank < backend.size - 1 else None
        self._channels: dict[tuple[int, int, bool], comm_module.Channel] = {}

    def _channel(self, purpose: int, rows: int, sending: bool) -> comm_module.Channel:
        key = (purpose, rows, sending)
        if key not in self._channels:
            shape = (rows, *self.template.shape[1:])
            template = self.template.new_empty(shape)
            left, right = (None, self.right) if sending else (self.left, None)
            self._channels[key] = comm_module.Channel(self.backend, left, right, 16 + 2 * rows + purpose, template)
        return self._channels[key]

    def recv(self, purpose: int, rows: int) -> torch.Tensor:
        channel = self._channel(purpose, rows, False)
        channel.post_recv()
        return channel.wait_recv().clone()  # the buffer is reused; autograd keeps the input

    def send(self, purpose: int, state: torch.Tensor) -> None:
        self._channel(purpose, state.shape[0], True).send(state)

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()


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
        self.spec = NetworkSpec.from_config(cfg.network)
        self.bounds = split_evenly(self.spec.depth, self.n_blocks)
        self.owned = split_evenly(self.n_blocks, self.layer_backend.size)
        self.mine = self.owned[self.layer_backend.rank]
        device = resolve_device(self.spec, comm_module.local_rank(self.backend))
        self.blocks = build_blocks(self.spec, t.seed if seed is None else seed, self.bounds, self.mine, device, t.head_hidden)
        taus = block_taus(t.tau, self.n_blocks) if t.strategy == "trgl" else [float("inf")] * self.n_blocks
        self.taus = taus
        self.weights = {b.index: kinetic_weight(taus[b.index]) for b in self.blocks}
        self.optimizers = {b.index: make_optimizer(t, list(b.parameters())) for b in self.blocks}
        self.schedules = {k: make_schedule(t, opt) for k, opt in self.optimizers.items()}
        width_shape = (self.spec.width,) if self.spec.kind == "dense" else (self.spec.width, self.spec.image_size, self.spec.image_size)
        self.pipe = _Pipe(self.layer_backend, torch.empty((1, *width_shape), dtype=self.spec.torch_dtype, device=device))

    @property
    def owned_layers(self) -> range:
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

    def full_state(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Collective: the network (keys of ``ODEResNet.state_dict()``) and the auxiliary heads, on every rank."""
        network, heads = {}, {}
        for part_network, part_heads in self.layer_backend.allgather(
            (
                {k: v for b in self.blocks for k, v in b.network_state().items()},
                {k: v for b in self.blocks for k, v in b.head_state().items()},
            )
        ):
            network.update(part_network)
            heads.update(part_heads)
        return network, heads


def prepare(cfg: Any, comm: Any, seed: int | None = None, resume_from: str | Path | None = None) -> tuple[LocalTrainer, Any]:
    """Check the config against the ranks, build this rank's blocks and load the data (raises ValueError on bad input).

    ``resume_from`` names a checkpoint to check, too: one this schedule can continue from.
    """
    trainer = LocalTrainer(cfg, comm, seed)
    if resume_from is not None:
        _resumable(resume_from, epoch_plan(cfg, trainer.n_blocks), mmap=True)
    return trainer, load_dataset(cfg.data, cfg.network)


def epoch_plan(cfg: Any, blocks: int) -> list[tuple[int, tuple[int, ...]]]:
    """``(stage, blocks that train)`` for every epoch of every stage of the schedule, in order (one metrics row each)."""
    t = cfg.train
    return [
        (stage, training)
        for stage, (training, epochs) in enumerate(stages(t.local_schedule, blocks, t.epochs, t.laps))
        for _ in range(epochs)
    ]


def train(
    cfg: Any,
    comm: Any = None,
    out: str | Path | None = None,
    resume: bool = False,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    prepared: tuple | None = None,
) -> TrainResult:
    """Train ``cfg.network`` block-wise; collective over ``comm``. Arguments as :func:`mgrit_resnet.training.loop.train`.

    A metrics row is written after every epoch of every stage of the schedule
    (``K x train.epochs`` rows for ``sequential`` and ``multilap``).
    """
    trainer, dataset = prepared if prepared is not None else prepare(cfg, comm)
    t, backend, n_blocks = cfg.train, trainer.backend, trainer.n_blocks
    dtype = trainer.spec.torch_dtype
    train_x, val_x = dataset.train_x.to(dtype), dataset.val_x.to(dtype)
    out = None if out is None else Path(out)
    plan = epoch_plan(cfg, n_blocks)
    metrics: list[dict[str, Any]] = []
    elapsed = 0.0
    if resume:
        if out is None:
            raise ValueError("--resume needs --out DIR (the folder holding checkpoint.pt)")
        metrics, elapsed = _restore(out / "checkpoint.pt", trainer, plan)
    if out is not None and backend.rank == 0:
        start_output(out, cfg, metrics)
    batches = dataset.batches(0, t.batch_size, t.seed)
    started = time.perf_counter() - elapsed
    epochs_done = [0] * n_blocks  # blocks that train together have trained equally long; this orders their batches
    block_epochs = 0
    for _, training in plan[: len(metrics)]:
        block_epochs += len(training)
        for k in training:
            epochs_done[k] += 1
    for stage, training in plan[len(metrics) :]:
        epoch_start, bytes_before = time.perf_counter(), trainer.bytes_sent
        order = np.random.default_rng([t.seed, epochs_done[training[0]], 1]).permutation(len(batches))
        stats = np.zeros((n_blocks, 4))
        for step, b in enumerate(order):
            trainer.step(train_x[batches[b]], dataset.train_y[batches[b]], training, stats)
            if on_step is not None:
                info = {"epoch": len(metrics) + 1, "epochs": len(plan), "step": step + 1, "steps": len(batches)}
                on_step({**info, "loss": _last_loss(stats)})
        lr = backend.allgather(trainer.end_epoch(training))
        for k in training:
            epochs_done[k] += 1
        stats = np.sum(backend.allgather(stats), axis=0)
        block_epochs += len(training)
        heads = trainer.accuracies(val_x, dataset.val_y)
        lr = [v for v in lr if v is not None][-1]
        row = _row(len(metrics) + 1, stage, training, stats, heads, lr, block_epochs / (n_blocks * t.epochs))
        row["epoch_time"] = max(backend.allgather(time.perf_counter() - epoch_start))
        row["bytes_sent"] = backend.allgather(trainer.bytes_sent - bytes_before)
        metrics.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if out is not None:
            if backend.rank == 0:
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
            _save(out, trainer, metrics, time.perf_counter() - started)  # nothing finished is lost
    summary = _summary(cfg, trainer, dataset, train_x, val_x, metrics, time.perf_counter() - started)
    trainer.pipe.close()
    if out is not None:
        _save(out, trainer, metrics, summary["wall_time"])
        if backend.rank == 0:
            (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return TrainResult(summary, metrics)


def _save(out: Path, trainer: LocalTrainer, metrics: list[dict[str, Any]], wall_time: float) -> None:
    """Collective: the network, the heads and every block's optimiser and schedule, written atomically by rank 0 to ``out/checkpoint.pt``.

    Everything is keyed by block and parameter name, so it loads at any rank count.
    """
    network, heads = trainer.full_state()
    optimizers, schedules = {}, {}
    for part in trainer.layer_backend.allgather(trainer.optimizer_states()):
        optimizers.update(part[0])
        schedules.update(part[1])
    if trainer.backend.rank == 0:
        state = {
            "strategy": trainer.cfg.train.strategy,
            "model": network,
            "heads": heads,
            "optimizers": optimizers,
            "schedules": schedules,
            "metrics": metrics,
            "epoch": len(metrics),
            "wall_time": wall_time,
        }
        checkpoint.save_atomically(state, out / "checkpoint.pt")


def _resumable(path: Path, plan: list[tuple[int, tuple[int, ...]]], mmap: bool = False) -> dict[str, Any]:
    """The checkpoint at ``path``, checked to be one that ``plan`` continues."""
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


def _restore(path: Path, trainer: LocalTrainer, plan: list[tuple[int, tuple[int, ...]]]) -> tuple[list[dict[str, Any]], float]:
    """Load this rank's blocks, optimisers and schedules from ``path``; the metrics so far and the wall time spent."""
    saved = _resumable(path, plan)
    trainer.load_states(saved["model"] | saved["heads"], saved["optimizers"], saved["schedules"])
    return saved["metrics"], saved["wall_time"]


def _last_loss(stats: np.ndarray) -> float:
    """The running loss of the deepest block that trained on this rank (the progress bar's figure)."""
    trained = np.nonzero(stats[:, 3])[0]
    return float(stats[trained[-1], 0] / stats[trained[-1], 3]) if len(trained) else float("nan")


def _row(
    epoch: int, stage: int, training: tuple[int, ...], stats: np.ndarray, heads: list[float] | None, lr: float, progress: float
) -> dict:
    k = max(training)
    rows = np.where(stats[:, 3] > 0, stats[:, 3], np.nan)
    per_block = lambda column: [None if np.isnan(v) else float(v) for v in stats[:, column] / rows]  # noqa: E731
    return {
        "epoch": epoch,
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


def _summary(cfg, trainer, dataset, train_x, val_x, metrics, elapsed) -> dict[str, Any]:
    backend, t = trainer.backend, cfg.train
    train_heads = trainer.accuracies(train_x, dataset.train_y)
    val_heads = trainer.accuracies(val_x, dataset.val_y)
    best = None if val_heads is None else int(np.argmax(val_heads))
    return {
        "train_accuracy": train_heads[-1],
        "val_accuracy": None if val_heads is None else val_heads[-1],
        "final_loss": metrics[-1]["train_loss"] if metrics else None,
        "epochs": t.epochs,
        "wall_time": max(backend.allgather(elapsed)),
        "ranks": backend.size,
        "data_parallel": t.data_parallel,
        "strategy": t.strategy,
        "owned_layers": backend.allgather([trainer.owned_layers.start, trainer.owned_layers.stop]),
        "local_schedule": t.local_schedule,
        "blocks": [[r.start, r.stop] for r in trainer.bounds],
        "owned_blocks": [[r.start, r.stop] for r in trainer.owned],
        "tau": None if t.strategy == "local" else trainer.taus,
        "head_train_accuracy": train_heads,
        "head_val_accuracy": val_heads,
        "best_head": best,
        "best_head_val_accuracy": None if best is None else val_heads[best],
        "bytes_sent": backend.allgather(trainer.bytes_sent),
    }
