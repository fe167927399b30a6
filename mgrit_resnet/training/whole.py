"""Whole-network training (``serial``, ``exact``, ``one_shot``): one loss at the classifier, one optimiser.

Every epoch visits the batches in a fresh order, one optimiser step each
(``sgd``, ``adam``), or runs ``train.lbfgs_iters`` L-BFGS iterations on the
whole training set (``lbfgs``, :mod:`.tao`). With ``train.data_parallel = D``
every data group takes its share of each batch and the gradients are summed
over the groups before the step, so a step is the whole batch's.

Every epoch's metrics count the layer steps of all data groups
(``layer_steps``, ``total_layer_steps``: :attr:`~.models.TrainModel.layer_steps`).
One-shot steps with ``train.fwd_iters`` or ``train.bwd_iters = "auto"`` take
their counts from an :class:`~.adaptive.IterationController`, which the
checkpoint carries.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import torch

from ..comm.groups import RankGroups
from ..config import AUTO_ITERS
from .adaptive import IterationController, StepObservation
from .data import Dataset, load_dataset
from .models import TrainModel
from .optim import load_portable_optimizer_state, make_optimizer, make_schedule, portable_optimizer_state
from .strategy import EVAL_BATCH, Strategy, sum_over_data_groups
from .tao import TaoLBFGS

_SGD_PLACEHOLDER = SimpleNamespace(optimizer="sgd", lr=1.0, momentum=0.0, schedule="none")


class WholeNetwork(Strategy):
    """``serial``, ``exact`` or ``one_shot`` training of the whole network (:class:`~.models.TrainModel`).

    Parameters
    ----------
    cfg
        A validated config.
    prepared
        ``(groups, dataset, model)``, as :meth:`build` returns them.
    """

    blockwise: ClassVar[bool] = False

    @classmethod
    def build(cls, cfg: Any, comm: Any, seed: int, data: Any = None) -> tuple[RankGroups, Dataset, TrainModel]:
        groups = RankGroups(comm, cfg.train.data_parallel, cfg.train.batch_size)
        dataset = load_dataset(cfg.data, cfg.network, data)
        return groups, dataset, TrainModel(cfg, groups.layer_comm, seed, probe=dataset.train_x[:1])

    @classmethod
    def full_shapes(cls, prepared: tuple[RankGroups, Dataset, TrainModel]) -> dict[str, tuple[int, ...]]:
        return {name: tuple(t.shape) for name, t in prepared[2].full_state_dict().items()}

    def __init__(self, cfg: Any, prepared: tuple[RankGroups, Dataset, TrainModel]) -> None:
        self.cfg, t = cfg, cfg.train
        self.groups, self.dataset, self.model = prepared
        dtype = self.model.dtype
        self.train_x, self.val_x = self.dataset.train_x.to(dtype), self.dataset.val_x.to(dtype)
        self.names = [name for name, _ in self.model.named_parameters()]
        self.params = [p for _, p in self.model.named_parameters()]
        self.tao = TaoLBFGS(self.model.named_parameters(), self.groups.layer_comm) if t.optimizer == "lbfgs" else None
        # lbfgs: an optimiser that holds no state keeps the checkpoint format
        self.optimizer = make_optimizer(t if self.tao is None else _SGD_PLACEHOLDER, self.params)
        self.schedule = make_schedule(t, self.optimizer)
        # Batches keep their samples across epochs (only their order changes), so a
        # one-shot warm start always meets the batch it was made for.
        self.batches = self.dataset.batches(0, t.batch_size, t.seed)
        self.plan = list(range(t.epochs))
        self._sums = (0.0, 0, 0)  # loss x rows, correct, rows of the epoch under way
        self.controller = adaptive_controller(t)
        self._total_steps = 0  # layer steps of every data group since the run began
        self._epoch_start = 0  # this group's layer steps when the epoch under way began

    @property
    def steps(self) -> int:
        return len(self.batches)

    @property
    def bytes_sent(self) -> int:
        """Bytes this rank has sent: the network's MGRIT and weight messages, gradient sums and the loop's own collectives."""
        return self.groups.world.bytes_sent + self.groups.data.bytes_sent + self.model.bytes_sent

    @property
    def owned_layers(self) -> range:
        return self.model.owned_layers

    def restore(self, saved: dict[str, Any]) -> None:
        self.model.load_full_state_dict(saved["model"])
        load_portable_optimizer_state(self.optimizer, self.names, saved["optimizer"])
        self.schedule.load_state_dict(saved["schedule"])
        self.model.load_warm_state_dict(saved.get("warm_start"))
        if self.controller is not None and saved.get("adaptive") is not None:
            self.controller.load_state_dict(saved["adaptive"])
        self._total_steps = int((saved.get("metrics") or [{}])[-1].get("total_layer_steps") or 0)

    def train_epoch(self, row: int) -> Iterator[dict[str, Any]]:
        t, y = self.cfg.train, self.dataset.train_y
        self._epoch_start = self.model.layer_steps
        if self.tao is not None:
            self._sums = _lbfgs_epoch(self.tao, t.lbfgs_iters, self.groups, self.model, self.params, self.train_x, y, self.batches)
            return
        order = np.random.default_rng([t.seed, self.plan[row], 1]).permutation(len(self.batches))
        loss_sum, correct, seen = 0.0, 0, 0
        for b in order:
            index = self.batches[b]
            if self.controller is not None:
                fwd, bwd, check = self.controller.plan()
                self.model.set_iterations(fwd, bwd)
                self.model.check_next(check)
            self.optimizer.zero_grad(set_to_none=False)
            loss, right = batch_gradient(self.groups, self.model, self.params, self.train_x, y, index, key=int(b))
            self.optimizer.step()
            loss_sum += loss * len(index)
            correct += right
            seen += len(index)
            chosen = {} if self.controller is None else self.controller.observe(self._observation())
            yield {"loss": loss, **self.model.solver_stats(), **chosen}
        self._sums = (loss_sum, correct, seen)
        self.schedule.step()

    def end_epoch(self, row: int) -> dict[str, Any]:
        loss_sum, correct, seen = self._sums
        mine = np.array([self.model.layer_steps - self._epoch_start], dtype=np.int64)
        steps = int(self.groups.world.allgather_buffer(mine)[:: self.groups.layer_ranks, 0].sum())  # one rank per data group
        self._total_steps += steps
        metric = {
            "train_loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            "val_accuracy": accuracy(self.model, self.val_x, self.dataset.val_y),
            "lr": self.optimizer.param_groups[0]["lr"],
            "layer_steps": steps,
            "total_layer_steps": self._total_steps,
        }
        if self.controller is not None:
            metric.update(self.controller.end_epoch(metric["train_loss"]))
        return metric

    def _observation(self) -> StepObservation:
        """Collective: the last step's solves as the controller sees them, the same on every rank.

        Gathered in rank order from the first rank of every data group: the
        iterations, each solve's residuals over the whole batch (the root of the
        groups' squares) and the largest of the groups' exact errors.
        """
        table = self.groups.world.allgather_buffer(np.array(self.model.solve_report(), dtype=np.float64))[:: self.groups.layer_ranks]
        fwd, bwd, *residuals, error = table[0]
        if len(table) > 1:
            residuals = [float(np.sqrt(np.sum(table[:, k] ** 2))) for k in range(2, 6)]
            errors = table[:, 6][~np.isnan(table[:, 6])]
            error = float(errors.max()) if len(errors) else float("nan")
        error = None if np.isnan(error) else float(error)
        return StepObservation(int(fwd), int(bwd), *(float(r) for r in residuals), measured=error)

    def solver_stats(self) -> dict[str, Any]:
        return self.model.solver_stats()

    def state(self) -> dict[str, Any] | None:
        # Only rank 0 writes: the model, the warm starts (GiBs for one-shot runs) and the optimiser state are gathered there alone.
        model = self.model.full_state_dict(root_only=True)
        warm = self.model.warm_state_dict(packed=True, root_only=True)
        parts = self.groups.world.gather(portable_optimizer_state(self.optimizer, self.names))
        if self.groups.rank != 0:
            return None
        optimizer = {"state": {}, "param_groups": parts[0]["param_groups"]}
        for part in parts:  # replicated parameters have the same state everywhere; take any
            optimizer["state"].update(part["state"])
        adaptive = None if self.controller is None else self.controller.state_dict()
        return {"model": model, "optimizer": optimizer, "schedule": self.schedule.state_dict(), "warm_start": warm, "adaptive": adaptive}

    def final(self) -> tuple[float | None, float | None, dict[str, Any]]:
        train = accuracy(self.model, self.train_x, self.dataset.train_y)
        return train, accuracy(self.model, self.val_x, self.dataset.val_y), {"layer_steps": self._total_steps}


def adaptive_controller(t: Any) -> IterationController | None:
    """The controller of the ``[train]`` table ``t``'s one-shot counts, if either is ``"auto"`` (``None`` otherwise)."""
    if t.strategy != "one_shot" or AUTO_ITERS not in (t.fwd_iters, t.bwd_iters):
        return None

    def counts(value: Any) -> int | tuple[int, int]:
        return (1, t.auto_max_iters) if value == AUTO_ITERS else value

    return IterationController(t.grad_error_target, t.grad_check_every, counts(t.fwd_iters), counts(t.bwd_iters))


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


def _lbfgs_epoch(
    tao: TaoLBFGS,
    iterations: int,
    groups: RankGroups,
    model: TrainModel,
    params: list[torch.nn.Parameter],
    x: torch.Tensor,
    y: torch.Tensor,
    batches: list[torch.Tensor],
) -> tuple[float, int, int]:
    """Up to ``iterations`` L-BFGS iterations on the mean loss over the whole training set; (loss x rows, correct, rows)."""
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


def accuracy(model: TrainModel, x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Collective: the share of ``(x, y)`` the exact network classifies right (``None`` for no rows)."""
    if len(y) == 0:
        return None
    correct = 0
    for start in range(0, len(y), EVAL_BATCH):
        logits = model.predict(x[start : start + EVAL_BATCH])
        correct += int((logits.argmax(1).cpu() == y[start : start + EVAL_BATCH]).sum())
    return correct / len(y)
