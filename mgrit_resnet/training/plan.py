"""The block-wise plan as pure functions of integers and the config: blocks over layers and ranks, taus, schedules.

Nothing here builds a network or touches data, so :mod:`.checks` can use it
to check a config before anything is built.
"""

from __future__ import annotations

import math
from typing import Any


def split_evenly(n: int, parts: int) -> list[range]:
    """``n`` items in ``parts`` contiguous ranges; the first ``n % parts`` ranges hold one item more."""
    sizes = [n // parts + (k < n % parts) for k in range(parts)]
    starts = [sum(sizes[:k]) for k in range(parts)]
    return [range(s, s + size) for s, size in zip(starts, sizes)]


def block_taus(tau: float | list[float], blocks: int) -> list[float]:
    """The TRGL step ``tau_k`` of every block: a list is taken as it is; a number ``tau``
    gives ``tau / 2`` to the first ``blocks // 2`` blocks and ``tau`` to the others."""
    if isinstance(tau, list):
        if len(tau) != blocks:
            raise ValueError(f"train.tau as a list needs one value per block ({blocks}); got {len(tau)} values")
        return [float(t) for t in tau]
    return [tau / 2 if k < blocks // 2 else float(tau) for k in range(blocks)]


def kinetic_weight(tau: float) -> float:
    """``1 / (2 tau)``: exactly zero for ``tau = inf``, so that TRGL is then plain local training."""
    return 0.0 if math.isinf(tau) else 1.0 / (2.0 * tau)


def stages(schedule: str, blocks: int, epochs: int, laps: int) -> list[tuple[tuple[int, ...], int]]:
    """``(blocks that train, epochs)`` in order: the whole schedule."""
    if schedule == "parallel":
        return [(tuple(range(blocks)), epochs)]
    if schedule == "sequential":
        return [((k,), epochs) for k in range(blocks)]
    return [((k,), len(share)) for share in split_evenly(epochs, laps) for k in range(blocks)]


def epoch_plan(cfg: Any, blocks: int) -> list[tuple[int, tuple[int, ...]]]:
    """``(stage, blocks that train)`` for every epoch of every stage of the schedule, in order (one metrics row each)."""
    t = cfg.train
    return [
        (stage, training)
        for stage, (training, epochs) in enumerate(stages(t.local_schedule, blocks, t.epochs, t.laps))
        for _ in range(epochs)
    ]
