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


def stage_blocks(depths: list[int], blocks: int) -> list[int]:
    """How many of ``blocks`` blocks each stage of ``depths`` layers gets, when no block may hold layers of two stages.

    Every stage gets one block; each further block goes to the stage whose
    blocks are the longest at that point (``ceil(depth / count)``; the earliest
    such stage on a tie), so the longest block is as short as ``blocks``
    allows. Layers count alike in every stage, whatever their width. One
    stage gets all of them. ``ValueError`` unless ``len(depths) <= blocks <= sum(depths)``.
    """
    if not len(depths) <= blocks <= sum(depths):
        raise ValueError(
            f"{blocks} blocks cannot cut stages of {depths} layers without a block that straddles a transition "
            f"or holds no layer: between {len(depths)} and {sum(depths)} blocks can"
        )
    counts = [1] * len(depths)
    for _ in range(blocks - len(depths)):
        largest = [-(-depth // count) if count < depth else 0 for depth, count in zip(depths, counts)]
        counts[largest.index(max(largest))] += 1
    return counts


def block_bounds(depths: list[int], blocks: int) -> list[tuple[int, range]]:
    """``(stage, its layers)`` of every block, in order: each stage cut by :func:`split_evenly` into its :func:`stage_blocks` share.

    A block never straddles a transition: it ends at the end of its stage at
    the latest. With one stage this is ``split_evenly(depth, blocks)``.
    """
    return [(s, layers) for s, (depth, k) in enumerate(zip(depths, stage_blocks(depths, blocks))) for layers in split_evenly(depth, k)]


def stage_layers(cut: list[tuple[int, range]], owned: range, depths: list[int]) -> list[range]:
    """The layers of every stage that the blocks ``owned`` of ``cut`` (:func:`block_bounds`) hold.

    A stage none of them reaches gets an empty range at its start (stages
    before the first owned block: at their end).
    """
    out = []
    first_stage = cut[owned.start][0]
    for s, depth in enumerate(depths):
        mine = [layers for stage, layers in (cut[k] for k in owned) if stage == s]
        if mine:
            out.append(range(mine[0].start, mine[-1].stop))
        else:
            out.append(range(depth, depth) if s < first_stage else range(0, 0))
    return out


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
