"""Which rank holds which layers and states, and the fetch of the layers a rank's coarse steps borrow."""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Callable
from typing import Any

import torch

WEIGHT_TAG = 999  # one tag for all weight messages: MPI keeps their order per sender

Weights = dict[int, tuple[torch.Tensor, torch.Tensor]]


def layer_partition(depth: int, size: int) -> tuple[list[int], list[int], list[int]]:
    """Block bounds of the forward grid, the adjoint grid and the layers over ``size`` ranks.

    Point n of the forward grid is x_n; rank p owns points ``[a_p, a_{p+1})``
    and the layers that step into them, ``[a_p - 1, a_{p+1} - 1)``. The layers
    are split evenly (rank 0 also holds point 0, which no layer steps into):
    the layers set each rank's share of the sweeps and of the parameter
    gradients. The adjoint grid runs backwards (point t is lambda_{N-t}) over
    the ranks in reverse order, split so that every adjoint step uses a layer
    (and stored state) of the same rank.
    """
    points = depth + 1
    fwd = [0] + [p * depth // size + 1 for p in range(1, size)] + [points]
    layers = [0] + [a - 1 for a in fwd[1:]]
    adj = [0] + [depth + 2 - fwd[size - q] for q in range(1, size)] + [points]
    return fwd, adj, layers


def owner_of_layer(layer: int, layer_bounds: list[int]) -> int:
    """The rank whose block ``[layer_bounds[p], layer_bounds[p + 1])`` holds ``layer``."""
    return bisect.bisect_right(layer_bounds, layer) - 1


def foreign_layers(hierarchy: Any, layer_bounds: list[int]) -> list[list[int]]:
    """For every rank, the layers of other ranks its coarse forward steps use.

    The coarse step into point ``c`` of a level with stride ``s`` is layer
    ``c - s``; only a rank's first coarse point on a level can reach back
    past its own layers.
    """
    needs = []
    for rank in range(len(layer_bounds) - 1):
        block, lo = hierarchy.fine_block(rank), layer_bounds[rank]
        wanted = set()
        for level in range(1, hierarchy.n_levels):
            s = hierarchy.stride(level)
            first = -(-block.start // s) * s
            if first < block.stop and first >= s and first - s < lo:
                wanted.add(first - s)
        needs.append(sorted(wanted))
    return needs


def exchange_foreign(
    backend: Any,
    plan: list[list[int]],
    layer_bounds: list[int],
    outgoing: Callable[[int], torch.Tensor],
    incoming: Callable[[int], torch.Tensor],
    arrived: Callable[[int, torch.Tensor], None],
) -> int:
    """Collective: every rank sends the layers of its own that other ranks' plans name, and receives those its plan names.

    Each layer travels as one flat host buffer: ``outgoing(n)`` makes it on the
    owner, ``incoming(n)`` is the empty buffer it arrives in and ``arrived(n, buffer)``
    takes it. Returns the bytes this rank sent.
    """
    me = backend.rank
    if backend.size == 1 or not any(plan):
        return 0
    mine = range(layer_bounds[me], layer_bounds[me + 1])
    before = backend.bytes_sent
    sends = []
    for rank, layers in enumerate(plan):
        for n in layers:
            if rank != me and n in mine:
                flat = outgoing(n)
                sends.append((backend.isend(flat, rank, WEIGHT_TAG), flat))  # the buffer lives until its send is done
    receives = []
    for n in plan[me]:
        buffer = incoming(n)
        receives.append((n, buffer, backend.irecv(buffer, owner_of_layer(n, layer_bounds), WEIGHT_TAG)))
    for n, buffer, request in receives:
        request.Wait()
        arrived(n, buffer)
    for request, _ in sends:
        request.Wait()
    return backend.bytes_sent - before


def fetch_foreign_weights(
    backend: Any, plan: list[list[int]], layer_bounds: list[int], own: Weights, device: torch.device
) -> tuple[Weights, int]:
    """Collective: ``own`` with the layers of other ranks this rank's coarse steps use (``plan[rank]``), and the bytes sent.

    Each layer travels as one flat buffer, weight then bias (:func:`exchange_foreign`).
    """
    weights = dict(own)
    weight, bias = own[layer_bounds[backend.rank]]  # every rank holds a layer, and all have one shape
    w_shape, w_size = weight.shape, math.prod(weight.shape)

    def arrived(n: int, buffer: torch.Tensor) -> None:
        buffer = buffer.to(device)
        weights[n] = (buffer[:w_size].view(w_shape), buffer[w_size:])

    sent = exchange_foreign(
        backend,
        plan,
        layer_bounds,
        lambda n: torch.cat([t.reshape(-1) for t in own[n]]).cpu(),
        lambda n: torch.empty(w_size + bias.numel(), dtype=weight.dtype),
        arrived,
    )
    return weights, sent


def interval_means(backend: Any, rows: torch.Tensor, first: int, intervals: list[tuple[int, int]]) -> dict[tuple[int, int], torch.Tensor]:
    """Collective: ``(start, stop) ->`` the mean of the flat vectors of layers ``start ... stop - 1``, on every rank.

    ``rows`` holds this rank's layers as one flat host vector each, stacked
    (row ``i`` is layer ``first + i``: a contiguous run). Each rank sums its
    share of every interval in float64, in one product with the 0/1 matrix of
    which layer falls in which interval; one buffer allreduce adds the ranks'
    sums. The means come back in ``rows``' dtype.
    """
    sums = _membership(tuple(intervals), first, rows.shape[0]) @ rows.to(torch.float64)
    backend.allreduce_buffer(sums)
    return {(start, stop): (sums[i] / (stop - start)).to(rows.dtype) for i, (start, stop) in enumerate(intervals)}


@functools.lru_cache(maxsize=64)
def _membership(intervals: tuple[tuple[int, int], ...], first: int, n: int) -> torch.Tensor:
    """The 0/1 matrix whose entry ``(i, j)`` says whether layer ``first + j`` lies in ``intervals[i]`` (float64)."""
    member = torch.zeros((len(intervals), n), dtype=torch.float64)
    for i, (start, stop) in enumerate(intervals):
        member[i, max(start - first, 0) : max(min(stop - first, n), 0)] = 1.0
    return member
