"""The training loop, run identically on every rank (SPMD)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from ..comm.groups import RankGroups
from ..config import toml_value
from . import checkpoint
from .data import load_dataset
from .models import TrainModel
from .optim import load_portable_optimizer_state, make_optimizer, make_schedule, portable_optimizer_state
from .tao import TaoLBFGS, check_available

EVAL_BATCH = 500
_SGD_PLACEHOLDER = SimpleNamespace(optimizer="sgd", lr=1.0, momentum=0.0, schedule="none")


@dataclass
class TrainResult:
    """What a training run produced (the same on every rank)."""

    summary: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)


def prepare(cfg: Any, comm: Any, seed: int | None = None, resume_from: str | Path | None = None) -> tuple:
    """Check the config against the ranks, load the data and build the model (raises ValueError on bad input).

    ``resume_from`` names a checkpoint to check, too: one the run can continue from.
    """
    if is_local(cfg):
        from . import local

        return local.prepare(cfg, comm, seed, resume_from)
    if resume_from is not None:
        checkpoint.load(resume_from, local=False, mmap=True)
    groups = RankGroups(comm, cfg.train.data_parallel, cfg.train.batch_size)
    if cfg.train.optimizer == "lbfgs":
        if cfg.train.strategy == "one_shot":
            raise ValueError("train.optimizer = 'lbfgs' needs exact gradients: train.strategy = 'exact' or 'serial'; got 'one_shot'")
        if cfg.train.data_parallel > 1:
            raise ValueError(f"train.optimizer = 'lbfgs' runs with train.data_parallel = 1; got {cfg.train.data_parallel}")
        check_available()
    dataset = load_dataset(cfg.data, cfg.network)
    model = TrainModel(cfg, groups.layer_comm, cfg.train.seed if seed is None else seed)
    return groups, dataset, model


def train(
    cfg: Any,
    comm: Any = None,
    out: str | Path | None = None,
    resume: bool = False,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    prepared: tuple | None = None,
) -> TrainResult:
    """Train ``cfg.network`` on ``cfg.data`` with ``cfg.train``; collective over ``comm``.

    Parameters
    ----------
    cfg
        A validated :class:`~mgrit_resnet.Config`.
    comm
        An mpi4py communicator, or ``None`` for one rank.
    out
        Output folder: ``metrics.jsonl``, ``summary.json``, ``config.toml`` and
        ``checkpoint.pt`` (rewritten atomically after every epoch), written by rank 0.
    resume
        Continue from ``out/checkpoint.pt`` exactly where it stopped (any rank count).
    on_step
        Called on every rank after every optimisation step with a dict of
        ``epoch``, ``step``, ``steps``, ``loss`` and the solver statistics.
    on_epoch
        Called on every rank with each epoch's metrics row.
    prepared
        The result of :func:`prepare`, when the caller checked the input already.
    """
    if is_local(cfg):
        from . import local

        return local.train(cfg, comm, out, resume, on_step=on_step, on_epoch=on_epoch, prepared=prepared)
    groups, dataset, model = prepared if prepared is not None else prepare(cfg, comm)
    t = cfg.train
    dtype = model.module.spec.torch_dtype
    train_x, val_x = dataset.train_x.to(dtype), dataset.val_x.to(dtype)
    names = [name for name, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    tao = TaoLBFGS(model.named_parameters(), groups.layer_comm) if t.optimizer == "lbfgs" else None
    optimizer = make_optimizer(t if tao is None else _SGD_PLACEHOLDER, params)  # lbfgs: holds no state, keeps the checkpoint format
    schedule = make_schedule(t, optimizer)
    out = None if out is None else Path(out)
    metrics: list[dict[str, Any]] = []
    start_epoch, elapsed = 0, 0.0
    if resume:
        saved = checkpoint.load(out / "checkpoint.pt", local=False)
        model.load_full_state_dict(saved["model"])
        load_portable_optimizer_state(optimizer, names, saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        model.load_warm_state_dict(saved.get("warm_start"))
        metrics, start_epoch, elapsed = saved["metrics"], saved["epoch"], saved["wall_time"]
    if out is not None and groups.rank == 0:
        start_output(out, cfg, metrics)

    # Batches keep their samples across epochs (only their order changes), so a
    # one-shot warm start always meets the batch it was made for.
    batches = dataset.batches(0, t.batch_size, t.seed)
    started = time.perf_counter() - elapsed
    for epoch in range(start_epoch, t.epochs):
        epoch_start = time.perf_counter()
        order = np.random.default_rng([t.seed, epoch, 1]).permutation(len(batches))
        loss_sum, correct, seen, bytes_before = 0.0, 0, 0, _bytes_sent(groups, model)
        if tao is not None:
            loss_sum, correct, seen = _lbfgs_epoch(tao, t.lbfgs_iters, groups, model, params, train_x, dataset.train_y, batches)
        else:
            for step, b in enumerate(order):
                index = batches[b]
                optimizer.zero_grad(set_to_none=False)
                loss, right = batch_gradient(groups, model, params, train_x, dataset.train_y, index, key=int(b))
                optimizer.step()
                loss_sum += loss * len(index)
                correct += right
                seen += len(index)
                if on_step is not None:
                    on_step({"epoch": epoch + 1, "step": step + 1, "steps": len(batches), "loss": loss, **model.solver_stats()})
            schedule.step()
        row = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            "val_accuracy": _accuracy(model, val_x, dataset.val_y),
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_time": time.perf_counter() - epoch_start,
            "bytes_sent": _bytes_sent(groups, model) - bytes_before,
            **model.solver_stats(),
        }
        row["epoch_time"] = max(groups.world.allgather(row["epoch_time"]))
        row["bytes_sent"] = groups.world.allgather(row["bytes_sent"])
        metrics.append(row)
        if on_epoch is not None:
            on_epoch(row)
        _save(out, groups, model, optimizer, names, schedule, metrics, epoch + 1, time.perf_counter() - started, t.strategy)

    summary = {
        "train_accuracy": _accuracy(model, train_x, dataset.train_y),
        "val_accuracy": _accuracy(model, val_x, dataset.val_y),
        "final_loss": metrics[-1]["train_loss"] if metrics else None,
        "epochs": t.epochs,
        "wall_time": max(groups.world.allgather(time.perf_counter() - started)),
        "ranks": groups.size,
        "data_parallel": groups.data_parallel,
        "strategy": t.strategy,
        "owned_layers": groups.world.allgather([model.owned_layers.start, model.owned_layers.stop]),
    }
    if out is not None and groups.rank == 0:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return TrainResult(summary, metrics)


def is_local(cfg: Any) -> bool:
    """Whether ``cfg.train.strategy`` is one of the block-wise local strategies (:mod:`.local`)."""
    return cfg.train.strategy in ("local", "trgl")


def batch_gradient(
    groups: RankGroups,
    model: TrainModel,
    params: list[torch.nn.Parameter],
    x: torch.Tensor,
    y: torch.Tensor,
    index: torch.Tensor,
    key: Any,
    total: int | None = None,
) -> tuple[float, int]:
    """Loss and gradient of the batch ``index`` (accumulated into ``.grad``), each data group taking its share.

    The loss is the mean over the batch, or the batch's part of the mean over
    ``total`` samples. Returns it and the number of correct predictions, the same on every rank.
    """
    share = groups.share(index.numpy())
    loss, right = model.loss_backward(x[share], y[share], len(share) / (total or len(index)), key=key)
    return sum_over_data_groups(groups, params, loss, right)


def _lbfgs_epoch(tao, iterations, groups, model, params, x, y, batches) -> tuple[float, int, int]:
    """Up to ``iterations`` L-BFGS iterations on the mean loss over the whole training set."""
    last = {}

    def objective() -> float:
        loss, right = 0.0, 0
        for b, index in enumerate(batches):
            batch_loss, batch_right = batch_gradient(groups, model, params, x, y, index, key=b, total=len(y))
            loss, right = loss + batch_loss, right + batch_right
        last.update(loss=loss, right=right)
        return loss

    tao.run(objective, iterations)
    return last["loss"] * len(y), last["right"], len(y)


def _bytes_sent(groups: RankGroups, model: TrainModel) -> int:
    """Bytes this rank has sent: the network's MGRIT and weight messages, gradient sums and the loop's own collectives."""
    return groups.world.bytes_sent + groups.data.bytes_sent + model.bytes_sent


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


def _accuracy(model: TrainModel, x: torch.Tensor, y: torch.Tensor) -> float | None:
    if len(y) == 0:
        return None
    correct = 0
    for start in range(0, len(y), EVAL_BATCH):
        logits = model.predict(x[start : start + EVAL_BATCH])
        correct += int((logits.argmax(1).cpu() == y[start : start + EVAL_BATCH]).sum())
    return correct / len(y)


def _save(out, groups, model, optimizer, names, schedule, metrics, epoch, wall_time, strategy) -> None:
    if out is None:  # the same on every rank: no checkpoint, so none of the gathers (one-shot warm starts can be GiBs)
        return
    state = model.full_state_dict()  # collective
    warm = model.warm_state_dict()  # collective
    opt_parts = groups.world.allgather(portable_optimizer_state(optimizer, names))
    if groups.rank != 0:
        return
    opt_state = {"state": {}, "param_groups": opt_parts[0]["param_groups"]}
    for part in opt_parts:  # replicated parameters have the same state everywhere; take any
        opt_state["state"].update(part["state"])
    payload = {
        "model": state,
        "optimizer": opt_state,
        "schedule": schedule.state_dict(),
        "warm_start": warm,
        "metrics": metrics,
        "epoch": epoch,
        "wall_time": wall_time,
        "strategy": strategy,
    }
    checkpoint.save_atomically(payload, out / "checkpoint.pt")
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(metrics[-1]) + "\n")


def start_output(out: Path, cfg: Any, metrics: list[dict[str, Any]]) -> None:
    """Create ``out`` with ``config.toml`` and a ``metrics.jsonl`` holding ``metrics`` (those of a resumed run); rank 0 only."""
    out.mkdir(parents=True, exist_ok=True)
    _write_config(cfg, out / "config.toml")
    with open(out / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(m) + "\n" for m in metrics)


def _write_config(cfg: Any, path: Path) -> None:
    lines = []
    for section, values in cfg.as_dict().items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines))
