"""MGRIT hierarchies for a one-shot training step, by predicted time and measured gradient error (the ``tune`` verb).

A hierarchy that makes a step fast at ``P`` ranks may make its gradient
inexact: the performance model (:mod:`.perfmodel`) predicts the first, and
only a measurement gives the second. For every candidate (number of levels x
coarsening factor) this module

* predicts the one-shot step time at ``P`` ranks from a one-rank calibration;
* measures the relative gradient error of the same step against the exact
  gradient, over a few optimisation steps on the config's own data, cycling a
  few batches so that warm starts act as they do in training (the error does
  not depend on the rank count: MGRIT computes the same numbers at any ``P``);

and marks the candidates no other beats in both (the Pareto front).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..hierarchy import Hierarchy


@dataclass
class TuneRow:
    """One candidate hierarchy: its predicted step time at ``ranks`` and its measured gradient error."""

    levels: int
    coarsening: int
    relax: str | list[str]
    ranks: int
    time: float
    serial_time: float
    grad_error: float
    pareto: bool = False

    @property
    def speedup(self) -> float:
        return self.serial_time / self.time

    def describe(self) -> str:
        relax = self.relax if isinstance(self.relax, str) else "/".join(self.relax)
        return f"{self.levels} levels, m = {self.coarsening}, relax {relax}"

    def overrides(self) -> list[str]:
        """The ``--set`` options that select this hierarchy."""
        relax = self.relax if isinstance(self.relax, str) else json.dumps(self.relax)  # a TOML array
        return [f"mgrit.levels={self.levels}", f"mgrit.coarsening={self.coarsening}", f"mgrit.relax={relax}"]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "speedup": self.speedup}


def candidates(depth: int | Sequence[int], levels: Sequence[int], coarsening: Sequence[int], min_coarse: int) -> list[tuple[int, int]]:
    """``(levels, coarsening)`` pairs that give distinct multilevel hierarchies on ``depth`` layers.

    A pair whose coarsest level would fall under ``min_coarse`` points is
    kept only as the hierarchy it really builds (fewer levels), once. For a
    network of stages ``depth`` is every stage's depth: the ``[mgrit]`` options
    apply to every stage, a pair is kept when it gives every stage a coarse
    level, its ``levels`` the most any stage builds, and two pairs are the same
    when they build the same hierarchy on every stage.
    """
    depths = [depth] if isinstance(depth, int) else list(depth)
    seen, out = set(), []
    for m in coarsening:
        for count in levels:
            built = [Hierarchy.build(d + 1, count, m, min_coarse) for d in depths]
            factors = tuple(h.factors for h in built)
            if min(h.n_levels for h in built) < 2 or factors in seen:
                continue
            seen.add(factors)
            out.append((max(h.n_levels for h in built), m))
    return out


def relaxation(pattern: str | Sequence[str], levels: int) -> str | list[str]:
    """``mgrit.relax`` for ``levels`` levels following ``pattern``: one string for all levels, or a list whose
    first entry is the fine level's and last entry every coarser level's (``["F", "FCF"]``: F on the fine level, FCF below)."""
    if isinstance(pattern, str):
        return pattern
    return pattern[0] if levels == 2 else [pattern[0]] + [pattern[-1]] * (levels - 2)


def pareto_front(rows: Sequence[TuneRow]) -> None:
    """Mark every row that no other row beats in both time and gradient error."""
    for row in rows:
        row.pareto = not any(
            other.time <= row.time and other.grad_error <= row.grad_error and (other.time, other.grad_error) != (row.time, row.grad_error)
            for other in rows
        )


def recommend(rows: Sequence[TuneRow], max_error: float) -> TuneRow | None:
    """The fastest row whose gradient error is at most ``max_error``, if any."""
    good = [r for r in rows if r.grad_error <= max_error]
    return min(good, key=lambda r: r.time) if good else None


def gradient_error(cfg: Any, steps: int, batches: int = 4) -> float:
    """Median relative gradient error of one-shot steps of ``cfg`` over the second half of ``steps`` optimiser steps.

    The steps cycle the first ``batches`` batches of the training set, warm-started per batch as in training.
    The error is that of the whole gradient against serial backprop's
    (:func:`~mgrit_resnet.training.models.checked_loss_backward`), the error
    that the auto mode's checks measure.
    """
    from ..nn import parallel_from_config
    from ..training.adaptive import require_fixed_counts
    from ..training.data import load_dataset
    from ..training.models import checked_loss_backward
    from ..training.optim import make_optimizer

    t = cfg.train
    require_fixed_counts(t, "measuring the gradient error of a one-shot step")
    dataset = load_dataset(cfg.data, cfg.network)
    chosen = dataset.batches(0, t.batch_size, t.seed)[:batches]
    par = parallel_from_config(  # a LayerParallel, or a StagedParallel for a network of stages
        cfg.network, cfg.mgrit, seed=t.seed, fwd_iters=t.fwd_iters, bwd_iters=t.bwd_iters, warm_start=t.warm_start
    )
    optimizer = make_optimizer(t, list(par.parameters()))
    x = dataset.train_x.to(par.dtype)
    errors = []
    for step in range(steps):
        b = step % len(chosen)
        optimizer.zero_grad(set_to_none=True)
        errors.append(checked_loss_backward(par, x[chosen[b]], dataset.train_y[chosen[b]], key=b)[2])
        optimizer.step()
    return statistics.median(errors[len(errors) // 2 :])


def candidate_configs(cfg: Any, levels: Sequence[int], coarsening: Sequence[int]) -> dict[tuple[int, int, str], Any]:
    """The config of every candidate hierarchy of ``cfg`` (:func:`candidates`), keyed by ``(levels, coarsening, relax as JSON)``.

    Only ``mgrit.levels``, ``mgrit.coarsening`` and ``mgrit.relax`` (by :func:`relaxation`) differ from ``cfg``.
    For a network of stages (``network.depths``) the candidates are those of every stage.
    """
    from ..config import stage_depths

    configs = {}
    depths = stage_depths(cfg.network)
    for count, m in candidates(depths[0] if len(depths) == 1 else depths, levels, coarsening, cfg.mgrit.min_coarse):
        relax = relaxation(cfg.mgrit.relax, count)
        configs[count, m, json.dumps(relax)] = cfg.with_overrides({"mgrit.levels": count, "mgrit.coarsening": m, "mgrit.relax": relax})
    return configs


def tune(
    cfg: Any,
    ranks: int,
    levels: Sequence[int],
    coarsening: Sequence[int],
    steps: int = 8,
    network: tuple[float, float] | None = None,
    rounds: int = 2,
    progress: Callable[[str], None] | None = None,
) -> list[TuneRow]:
    """Predict and measure every candidate hierarchy of ``cfg`` (one rank); rows sorted by predicted time, Pareto front marked.

    Relaxation follows ``cfg.mgrit.relax`` (see :func:`relaxation`). Every
    candidate is calibrated in each of ``rounds`` rounds, the rounds one after
    the other, and keeps its shortest prediction: a machine whose speed drifts
    then slows every candidate alike rather than the one calibrated at a bad moment.
    ``progress`` is called after each calibration and each error measurement.
    """
    from . import perfmodel

    network = perfmodel.CLUSTER_NETWORK if network is None else network
    configs = candidate_configs(cfg, levels, coarsening)
    times: dict[Any, list[float]] = {key: [] for key in configs}
    serial_times = []
    for _ in range(rounds):
        for key, candidate in configs.items():
            calibration, predicted = perfmodel.predict(candidate, [ranks], of="train", network=network)
            times[key].append(predicted[0].time)
            serial_times.append(calibration.serial_time)
            if progress is not None:
                progress("calibrated")
    serial = statistics.median(serial_times)  # the serial step does not depend on the hierarchy
    rows = []
    for (count, m, relax), candidate in configs.items():
        error = gradient_error(candidate, steps)
        rows.append(TuneRow(count, m, json.loads(relax), ranks, min(times[count, m, relax]), serial, error))
        if progress is not None:
            progress("measured")
    rows.sort(key=lambda r: r.time)
    pareto_front(rows)
    return rows


def format_rows(rows: Sequence[TuneRow], chosen: TuneRow | None) -> str:
    """The table the verb prints: one line per candidate, ``*`` on the Pareto front, ``<`` on the recommendation."""
    lines = [f"{'hierarchy':<32} {'step [ms]':>10} {'speedup':>8} {'grad error':>11}"]
    for r in rows:
        mark = ("*" if r.pareto else " ") + ("<" if r is chosen else " ")
        lines.append(f"{r.describe():<32} {r.time * 1e3:10.3f} {r.speedup:8.2f} {r.grad_error:11.2e} {mark}")
    return "\n".join(lines)
