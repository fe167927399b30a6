"""Which rank holds which layers and states, and the fetch of the layers a rank's coarse steps borrow."""

from __future__ import annotations

import bisect
import math
from typing import Any

import torch

WEIGHT_TAG = 999  # one tag for all weight messages: MPI keeps their order per sender

Weights = dict[int, tuple[torch.Tensor, torch.Tensor]]


def layer_partition(depth: int, size: int) -> tuple[list[int], list[int], list[int]]:
    """Block bounds of the forward grid, the adjoint grid and the layers over ``size`` ranks.

    Point n of the forward grid is x_n; rank p owns points ``[a_p, a_{p+1})``
    and the layers that step into them, ``[a_p - 1, a_{p+1} - 1)``. The adjoint
    grid runs backwards (point t is lambda_{N-t}) over the ranks in reverse
    order, split so that every adjoint step uses a layer (and stored state) of
    the same rank.
    """
    points = depth + 1
    fwd = [p * points // size for p in range(size + 1)]
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


def fetch_foreign_weights(
    backend: Any, plan: list[list[int]], layer_bounds: list[int], own: Weights, device: torch.device
) -> tuple[Weights, int]:
    """Collective: ``own`` with the layers of other ranks this rank's coarse steps use (``plan[rank]``), and the bytes sent.

    Every rank sends each of its layers that another rank's plan names as one
    flat host buffer (weight, then bias) and receives the ones its own plan names.
    """
    weights = dict(own)
    me = backend.rank
    if backend.size == 1 or not any(plan):
        return weights, 0
    mine = range(layer_bounds[me], layer_bounds[me + 1])
    before = backend.bytes_sent
    requests, incoming = [], []
    for rank, layers in enumerate(plan):
        for n in layers:
            if rank != me and n in mine:
                flat = torch.cat([t.reshape(-1) for t in own[n]]).cpu()
                requests.append((backend.isend(flat, rank, WEIGHT_TAG), flat))
    weight, bias = own[mine.start]
    w_shape, w_size = weight.shape, math.prod(weight.shape)
    for n in plan[me]:
        buffer = torch.empty(w_size + bias.numel(), dtype=weight.dtype)
        incoming.append((n, buffer, backend.irecv(buffer, owner_of_layer(n, layer_bounds), WEIGHT_TAG)))
    for n, buffer, request in incoming:
        request.Wait()
        buffer = buffer.to(device)
        weights[n] = (buffer[:w_size].view(w_shape), buffer[w_size:])
    for request, _ in requests:
        request.Wait()
    return weights, backend.bytes_sent - before
